"""The openai backend against the real `refinery serve`, and against misbehaving servers."""

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from refinery.generation import GenerationError, SamplingParams
from refinery.generation.hf import HFGenerator
from refinery.generation.openai import OpenAIGenerator
from tests.conftest import Server


def test_concurrent_batch_matches_local(server, alphabet_model):
    prompts = [" ".join("abcdefghijklmnopqrstuvwxyz"[i % 20:i % 20 + 3]) for i in range(40)]
    client = OpenAIGenerator("tiny", base_url=server.url, concurrency=8)
    params = SamplingParams(temperature=0, max_new_tokens=10)
    remote = client.generate(prompts, params)
    local = HFGenerator(alphabet_model).generate(prompts, params)
    assert [c.text for c in remote] == [c.text for c in local]
    assert [c.token_ids for c in remote] == [c.token_ids for c in local]
    assert [c.index for c in remote] == list(range(40))


def test_n_seed_stop_and_logprobs_through_the_client(server):
    client = OpenAIGenerator("tiny", base_url=server.url)
    p = SamplingParams(temperature=1.5, n=3, seed=9, max_new_tokens=8, logprobs=True)
    a = client.generate(["a b", [{"role": "user", "content": "x y"}]], p)
    b = client.generate(["a b", [{"role": "user", "content": "x y"}]], p)
    assert len(a) == 6 and [(c.index, c.sample) for c in a] == [(i, s) for i in range(2) for s in range(3)]
    assert [c.token_ids for c in a] == [c.token_ids for c in b]
    assert all(len(c.logprobs) == len(c.token_ids) for c in a)
    out = client.generate(["a b c"], SamplingParams(temperature=0, stop=[" f"], max_new_tokens=20))[0]
    assert out.text == " d e" and out.finish_reason == "stop"


def test_client_survives_a_server_restart(alphabet_model):
    srv = Server(alphabet_model).start()
    client = OpenAIGenerator("tiny", base_url=srv.url, concurrency=2, backoff=0.25, max_backoff=2, max_retries=10)
    done = []
    restarted = threading.Event()

    def on_result(i, result):
        done.append(result)
        if len(done) == 4 and not restarted.is_set():
            restarted.set()
            srv.kill()  # mid-run

            def restart():
                time.sleep(1.0)
                srv.start(wait=False)

            threading.Thread(target=restart, daemon=True).start()

    try:
        results = client.generate_each([f"a b {c}" for c in "cdefghijklmnopqrstu"],
                                       SamplingParams(temperature=0, max_new_tokens=24), on_result=on_result)
    finally:
        srv.kill()
    assert restarted.is_set() and client.retries > 0
    assert all(not isinstance(r, GenerationError) for r in results), results


class _Fake(BaseHTTPRequestHandler):
    """A misbehaving server: replies from a script of (status, body, headers)."""

    script: list = []
    seen: list = []

    def do_POST(self):  # noqa: N802
        length = int(self.headers.get("content-length", 0))
        type(self).seen.append({"auth": self.headers.get("authorization"), "body": json.loads(self.rfile.read(length))})
        status, body, headers = type(self).script.pop(0) if len(type(self).script) > 1 else type(self).script[0]
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        data = body.encode()
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def fake():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Fake)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    _Fake.seen = []
    yield httpd, f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    httpd.shutdown()


OK = json.dumps({"choices": [{"index": 0, "text": "fine", "finish_reason": "stop"}],
                 "usage": {"prompt_tokens": 2, "completion_tokens": 1}})


def test_malformed_response_is_retried_then_reported(fake):
    _, url = fake
    _Fake.script = [(200, "this is not json", {})]
    client = OpenAIGenerator("m", base_url=url, max_retries=2, backoff=0.01)
    with pytest.raises(GenerationError, match="failed after 3 attempts: malformed response"):
        client.generate(["hi"], SamplingParams(max_new_tokens=4))
    _Fake.script = [(200, json.dumps({"choices": [{"index": 0}]}), {})]  # a choice without text
    with pytest.raises(GenerationError, match="malformed response"):
        client.generate(["hi"], SamplingParams(max_new_tokens=4))
    _Fake.script = [(200, json.dumps({"choices": []}), {})]  # n=1 asked, none given
    with pytest.raises(GenerationError, match="expected 1 choices"):
        client.generate(["hi"], SamplingParams(max_new_tokens=4))


def test_5xx_and_429_are_retried_4xx_are_not(fake):
    _, url = fake
    _Fake.script = [(503, "busy", {}), (429, "slow down", {"retry-after": "0"}), (200, OK, {})]
    client = OpenAIGenerator("m", base_url=url, max_retries=3, backoff=0.01)
    assert client.generate(["hi"], SamplingParams(max_new_tokens=4))[0].text == "fine"
    assert client.retries == 2
    _Fake.script = [(400, json.dumps({"error": {"message": "bad prompt"}}), {}), (200, OK, {})]
    client = OpenAIGenerator("m", base_url=url, max_retries=3, backoff=0.01)
    with pytest.raises(GenerationError, match="HTTP 400.*bad prompt"):
        client.generate(["hi"], SamplingParams(max_new_tokens=4))
    assert client.retries == 0


def test_timeouts_and_unreachable_servers(fake):
    client = OpenAIGenerator("m", base_url="http://127.0.0.1:9/v1", max_retries=1, backoff=0.01, timeout=2)
    with pytest.raises(GenerationError, match="connection error"):
        client.generate(["hi"])


def test_cache_makes_a_rerun_free(fake, tmp_path):
    _, url = fake
    _Fake.script = [(200, OK, {})]
    p = SamplingParams(max_new_tokens=4, seed=1)
    client = OpenAIGenerator("m", base_url=url, cache_dir=tmp_path / "cache")
    first = client.generate(["a", "b"], p)
    calls = len(_Fake.seen)
    again = OpenAIGenerator("m", base_url="http://127.0.0.1:9/v1", cache_dir=tmp_path / "cache", max_retries=0)
    assert [c.text for c in again.generate(["a", "b"], p)] == [c.text for c in first]  # the server is not asked
    assert again.cache.hits == 2 and len(_Fake.seen) == calls
    client.generate(["a"], p.model_copy(update={"temperature": 0.5}))  # other params: another key
    assert len(_Fake.seen) == calls + 1


def test_api_key_is_sent_but_never_shown(fake, monkeypatch):
    _, url = fake
    monkeypatch.setenv("MY_KEY", "sk-secret-123")
    _Fake.script = [(401, json.dumps({"error": {"message": "nope"}}), {})]
    client = OpenAIGenerator("m", base_url=url, api_key_env="MY_KEY", max_retries=0)
    with pytest.raises(GenerationError) as err:
        client.generate(["hi"])
    assert _Fake.seen[-1]["auth"] == "Bearer sk-secret-123"
    assert "sk-secret" not in str(err.value) and "sk-secret" not in repr(client)


def test_payload_shapes(fake):
    _, url = fake
    _Fake.script = [(200, OK, {})]
    client = OpenAIGenerator("m", base_url=url)
    client.generate(["hi"], SamplingParams(max_new_tokens=7, stop=["\n"], seed=3, top_k=5, logprobs=True))
    body = _Fake.seen[-1]["body"]
    assert body == {"model": "m", "temperature": 1.0, "top_p": 1.0, "n": 1, "max_tokens": 7, "top_k": 5,
                    "stop": ["\n"], "seed": 3, "prompt": "hi", "logprobs": 0}


def test_usable_inside_a_running_event_loop(fake):
    import asyncio

    _, url = fake
    _Fake.script = [(200, OK, {})]

    async def inside():
        return OpenAIGenerator("m", base_url=url).generate(["hi"])

    assert asyncio.run(inside())[0].text == "fine"
