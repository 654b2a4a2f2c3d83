"""`refinery serve --api-key` / REFINERY_API_KEY and the per-request token cap, through the project's own client."""

import os
import subprocess
import sys

import httpx
import pytest

from refinery.generation import GenerationError, SamplingParams
from refinery.generation.openai import OpenAIGenerator
from tests.conftest import Server

KEY = "sk-test-0123456789"


class KeyedServer(Server):
    """`refinery serve` with extra arguments and environment."""

    def __init__(self, model_dir, args=(), env=None):
        super().__init__(model_dir)
        self.args, self.env = list(args), env

    def start(self, wait: bool = True):
        env = {k: v for k, v in os.environ.items() if k != "REFINERY_API_KEY"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "refinery.cli", "serve", str(self.model_dir), "--port", str(self.port),
             "--model-name", self.name, *self.args], env={**env, **(self.env or {})},
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        if wait:
            self.wait()
        return self


@pytest.fixture(scope="module")
def keyed(alphabet_model):
    """The key from the environment, a cap of 64 completion tokens per request."""
    srv = KeyedServer(alphabet_model, ["--max-request-tokens", "64"], {"REFINERY_API_KEY": KEY}).start()
    yield srv
    srv.kill()


def test_requests_without_the_key_get_401(keyed):
    body = {"model": "tiny", "prompt": "a b c", "max_tokens": 4, "temperature": 0}
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY},
                    {"Authorization": f"Basic {KEY}"}, {"Authorization": f"Bearer {KEY}x"}):
        r = httpx.post(keyed.url + "/completions", json=body, headers=headers, timeout=30)
        assert r.status_code == 401, headers
        err = r.json()["error"]
        assert err["code"] == "invalid_api_key" and "Authorization: Bearer" in err["message"]
        assert KEY not in r.text
    assert httpx.get(keyed.url + "/models", timeout=30).status_code == 401
    r = httpx.post(keyed.url + "/completions", content=b"{not json", timeout=30)  # 401 before any parsing
    assert r.status_code == 401
    assert httpx.get(f"http://127.0.0.1:{keyed.port}/health", timeout=30).status_code == 200  # probes stay open
    r = httpx.post(keyed.url + "/completions", json=body, headers={"Authorization": f"Bearer {KEY}"}, timeout=30)
    assert r.status_code == 200 and r.json()["choices"][0]["text"] == " d e f g"


def test_the_client_sends_the_key_from_an_option_or_the_environment(keyed, monkeypatch):
    p = SamplingParams(temperature=0, max_new_tokens=4)
    with pytest.raises(GenerationError, match="HTTP 401.*API key") as err:
        OpenAIGenerator("tiny", base_url=keyed.url, api_key_env="NO_SUCH_VAR", max_retries=0).generate(["a b c"], p)
    assert KEY not in str(err.value)
    with pytest.raises(GenerationError, match="HTTP 401"):  # a wrong explicit key is not replaced by the env
        monkeypatch.setenv("MY_KEY", KEY)
        OpenAIGenerator("tiny", base_url=keyed.url, api_key="nope", api_key_env="MY_KEY", max_retries=0).generate(
            ["a b c"], p)
    by_option = OpenAIGenerator("tiny", base_url=keyed.url, api_key=KEY, api_key_env="NO_SUCH_VAR")
    assert by_option.generate(["a b c"], p)[0].text == " d e f g" and KEY not in repr(by_option)
    by_env = OpenAIGenerator("tiny", base_url=keyed.url, api_key_env="MY_KEY")
    assert by_env.generate([[{"role": "user", "content": "a b"}]], p)[0].token_ids


def test_n_times_max_tokens_is_capped_with_a_clear_400(keyed):
    client = OpenAIGenerator("tiny", base_url=keyed.url, api_key=KEY, max_retries=0)
    assert len(client.generate(["a b"], SamplingParams(n=4, max_new_tokens=16, temperature=0))) == 4  # 64: at the cap
    with pytest.raises(GenerationError, match=r"HTTP 400.*n=4 x max_tokens=17 = 68 .*cap of 64"):
        client.generate(["a b"], SamplingParams(n=4, max_new_tokens=17))
    with pytest.raises(GenerationError, match=r"n=2 x max_tokens=40 = 80 .*cap of 64"):
        client.generate([[{"role": "user", "content": "a"}]], SamplingParams(n=2, max_new_tokens=40))
    r = httpx.post(keyed.url + "/completions", headers={"Authorization": f"Bearer {KEY}"}, timeout=30,
                   json={"model": "tiny", "prompt": ["a", "b", "c"], "n": 2, "max_tokens": 11})
    assert r.status_code == 400 and r.json()["error"]["param"] == "max_tokens"
    assert "3 prompts x n=2 x max_tokens=11 = 66" in r.json()["error"]["message"]
    r = httpx.post(keyed.url + "/chat/completions", headers={"Authorization": f"Bearer {KEY}"}, timeout=30,
                   json={"model": "tiny", "messages": [{"role": "user", "content": "a"}]})  # default 256 tokens
    assert r.status_code == 400 and "max_tokens=256 = 256" in r.json()["error"]["message"]


def test_api_key_flag_and_no_cap(alphabet_model):
    srv = KeyedServer(alphabet_model, ["--api-key", "flag-key", "--max-request-tokens", "0"]).start()
    try:
        assert httpx.get(srv.url + "/models", timeout=30).status_code == 401
        client = OpenAIGenerator("tiny", base_url=srv.url, api_key="flag-key")
        out = client.generate(["a b"], SamplingParams(n=128, max_new_tokens=3, temperature=0))
        assert len(out) == 128  # 384 tokens: fine without a cap
    finally:
        srv.kill()


def test_empty_key_is_refused(alphabet_model):
    proc = subprocess.run([sys.executable, "-m", "refinery.cli", "serve", str(alphabet_model), "--port", "9"],
                          env={**os.environ, "REFINERY_API_KEY": " "}, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "empty" in proc.stderr
