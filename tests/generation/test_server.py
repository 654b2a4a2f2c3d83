"""The OpenAI-compatible server, exercised over real HTTP on a loopback port."""

from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from refinery.generation import SamplingParams
from refinery.generation.hf import HFGenerator


def post(server, path, body):
    return httpx.post(server.url + path, json=body, timeout=60)


def test_health_and_models(server):
    assert httpx.get(f"http://127.0.0.1:{server.port}/health").json()["status"] == "ok"
    data = httpx.get(server.url + "/models").json()
    assert data["object"] == "list" and data["data"][0]["id"] == "tiny"


def test_completion_matches_local_greedy(server, alphabet_model):
    r = post(server, "/completions", {"model": "tiny", "prompt": ["a b c", "q"], "max_tokens": 8,
                                      "temperature": 0, "logprobs": 1})
    assert r.status_code == 200
    body = r.json()
    local = HFGenerator(alphabet_model).generate(["a b c", "q"], SamplingParams(temperature=0, max_new_tokens=8))
    assert [c["text"] for c in body["choices"]] == [c.text for c in local]
    assert [c["token_ids"] for c in body["choices"]] == [c.token_ids for c in local]
    lp = body["choices"][0]["logprobs"]
    assert len(lp["tokens"]) == len(lp["token_logprobs"]) == 8 and all(v <= 0 for v in lp["token_logprobs"])
    assert body["usage"]["completion_tokens"] == 16 and body["object"] == "text_completion"


def test_chat_with_n_stop_and_logprobs(server):
    r = post(server, "/chat/completions", {"model": "tiny", "messages": [{"role": "user", "content": "a b"}],
                                           "n": 3, "temperature": 1.0, "seed": 4, "max_tokens": 6,
                                           "logprobs": True, "stop": "zz"})
    assert r.status_code == 200, r.text
    choices = r.json()["choices"]
    assert [c["index"] for c in choices] == [0, 1, 2]
    for c in choices:
        assert c["message"]["role"] == "assistant" and isinstance(c["message"]["content"], str)
        assert len(c["logprobs"]["content"]) == len(c["token_ids"])
    r = post(server, "/completions", {"model": "tiny", "prompt": "a b c", "temperature": 0, "stop": [" f"],
                                      "max_tokens": 20})
    choice = r.json()["choices"][0]
    assert choice["text"] == " d e" and choice["finish_reason"] == "stop"


@pytest.mark.parametrize("body,status,param", [
    ({"model": "tiny", "prompt": "a", "max_tokens": 0}, 422, "max_tokens"),
    ({"model": "tiny", "prompt": "a", "temperature": -1}, 422, "temperature"),
    ({"model": "tiny"}, 422, "prompt"),
    ({"model": "other", "prompt": "a"}, 404, "model"),
    ({"model": "tiny", "prompt": "a", "stream": True}, 400, "stream"),
    ({"model": "tiny", "prompt": "a " * 300}, 400, "prompt"),
    ({"model": "tiny", "prompt": []}, 400, "prompt"),
])
def test_bad_requests_get_json_errors(server, body, status, param):
    r = post(server, "/completions", body)
    assert r.status_code == status
    err = r.json()["error"]
    assert err["param"] == param and err["message"]


def test_malformed_json_and_bad_chat(server):
    r = httpx.post(server.url + "/completions", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 422 and "error" in r.json()
    r = post(server, "/chat/completions", {"model": "tiny", "messages": [{"role": "wizard", "content": "x"}]})
    assert r.status_code == 422 and r.json()["error"]["param"].startswith("messages")
    r = post(server, "/chat/completions", {"model": "tiny", "messages": []})
    assert r.status_code == 422


def test_concurrent_clients_share_batches(server):
    before = httpx.get(f"http://127.0.0.1:{server.port}/health").json()
    body = {"model": "tiny", "prompt": "a b c", "max_tokens": 16, "temperature": 0}
    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(lambda _: post(server, "/completions", body), range(32)))
    assert all(r.status_code == 200 for r in results)
    assert len({r.json()["choices"][0]["text"] for r in results}) == 1
    after = httpx.get(f"http://127.0.0.1:{server.port}/health").json()
    rows, batches = after["rows"] - before["rows"], after["batches"] - before["batches"]
    assert rows == 32 and batches < 32  # requests from different clients were decoded together
