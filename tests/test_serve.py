"""`arlm serve`: the OpenAI-style API over a real HTTP connection (uvicorn in a thread, httpx)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
import uvicorn
from tiny_run import cli, train_tiny_run

from arlm.generation import AutoregressiveWrapper
from arlm.generation.sampling import SamplingConfig, stream_text
from arlm.run import load_run
from arlm.serve import create_app, run_template
from arlm.serve.template import FILENAME

TEMPLATE = {"user": "Q: {content}\n", "assistant": "A: {content}\n", "generation_prompt": "A:", "stop": ["\nQ:"]}


class Server:
    """uvicorn serving ``app`` on a free loopback port in a background thread."""

    def __init__(self, app):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.app = app
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="error"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.time() + 30
        while not self.server.started:
            assert time.time() < deadline, "the server did not start"
            time.sleep(0.01)
        self.url = f"http://127.0.0.1:{self.port}"

    def close(self):
        self.server.should_exit = True
        self.thread.join(timeout=10)


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_corpus):
    out = train_tiny_run(tmp_path_factory.mktemp("serve") / "run", tiny_corpus, "--model.max_seq_len", "64")
    (out / FILENAME).write_text(json.dumps(TEMPLATE))
    return out


@pytest.fixture(scope="module")
def loaded(run):
    return load_run(run)


@pytest.fixture(scope="module")
def server(run, loaded):
    s = Server(create_app(loaded.model, loaded.tokenizer, name="tiny", chat_template=run_template(run),
                          max_rows=8, max_waiting=16, max_body=4096))
    yield s
    s.close()


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server.url, timeout=60) as c:
        yield c


def complete(client, **body):
    r = client.post("/v1/completions", json=body)
    assert r.status_code == 200, r.text
    return r.json()


def library_text(loaded, prompt: str, **cfg) -> str:
    wrapper = AutoregressiveWrapper(loaded.model)
    return "".join(stream_text(wrapper, loaded.tokenizer, loaded.tokenizer.encode(prompt), SamplingConfig(**cfg)))


# ---------------------------------------------------------------- completions


def test_models_and_health(client):
    assert [m["id"] for m in client.get("/v1/models").json()["data"]] == ["tiny"]
    h = client.get("/health").json()
    assert h["status"] == "ok" and "steps" in h["stats"]


def test_completion_equals_the_library_and_counts_tokens(client, loaded):
    out = complete(client, prompt="The model", max_tokens=12, temperature=0)
    (choice,) = out["choices"]
    assert out["object"] == "text_completion" and out["model"] == "tiny"
    assert choice["text"] == library_text(loaded, "The model", max_new_tokens=12, temperature=0)
    assert choice["finish_reason"] == "length"
    assert out["usage"] == dict(prompt_tokens=9, completion_tokens=12, total_tokens=21)


def test_seed_reproduces_and_n_gives_distinct_choices(client):
    body = dict(prompt="The", max_tokens=16, temperature=1.0, seed=11, n=3)
    a, b = complete(client, **body), complete(client, **body)
    texts = [c["text"] for c in a["choices"]]
    assert texts == [c["text"] for c in b["choices"]]
    assert [c["index"] for c in a["choices"]] == [0, 1, 2]
    assert len(set(texts)) == 3  # each choice has its own random stream
    c = complete(client, **dict(body, seed=12))
    assert [x["text"] for x in c["choices"]] != texts


def test_prompt_list_with_n(client, loaded):
    out = complete(client, prompt=["The", "A model"], max_tokens=6, temperature=0, n=2)
    texts = [c["text"] for c in out["choices"]]
    assert len(texts) == 4 and texts[0] == texts[1] and texts[2] == texts[3]
    assert texts[2] == library_text(loaded, "A model", max_new_tokens=6, temperature=0)


def test_stop_string_cuts_the_text(client):
    full = complete(client, prompt="The", max_tokens=30, temperature=0)["choices"][0]["text"]
    stop = full[6:8]
    cut = complete(client, prompt="The", max_tokens=30, temperature=0, stop=[stop, "zzz"])["choices"][0]
    assert cut["text"] == full[: full.index(stop)] and cut["finish_reason"] == "stop"


def test_streaming_sends_pieces_then_done(client):
    body = dict(prompt="The", max_tokens=20, temperature=0)
    whole = complete(client, **body)["choices"][0]["text"]
    with client.stream("POST", "/v1/completions", json=dict(body, stream=True)) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = [line[len("data: "):] for line in r.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert len(chunks) > 2  # streamed piece by piece, not in one go
    assert "".join(c["choices"][0]["text"] for c in chunks) == whole
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks[:-1])


# ---------------------------------------------------------------- chat


def test_chat_uses_the_template_and_its_stop(client, loaded):
    messages = [{"role": "user", "content": "Hello"}]
    out = client.post("/v1/chat/completions", json=dict(messages=messages, max_tokens=20, temperature=0)).json()
    reply = out["choices"][0]["message"]
    assert out["object"] == "chat.completion" and reply["role"] == "assistant"
    expected = library_text(loaded, "Q: Hello\nA:", max_new_tokens=20, temperature=0, stop=("\nQ:",))
    assert reply["content"] == expected
    with client.stream("POST", "/v1/chat/completions",
                       json=dict(messages=messages, max_tokens=20, temperature=0, stream=True)) as r:
        events = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
    chunks = [json.loads(e) for e in events[:-1]]
    assert events[-1] == "[DONE]" and chunks[0]["choices"][0]["delta"] == {"role": "assistant"}
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == expected


def test_chat_without_a_template_is_a_clear_400(loaded):
    s = Server(create_app(loaded.model, loaded.tokenizer, name="plain"))
    try:
        r = httpx.post(s.url + "/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}]})
        assert r.status_code == 400 and "chat template" in r.json()["error"]["message"]
    finally:
        s.close()


# ---------------------------------------------------------------- bad requests


@pytest.mark.parametrize("body, status, param", [
    (dict(prompt="a", temperature=-1), 400, "temperature"),
    (dict(prompt="a", temperature=float("nan")), 400, "temperature"),
    (dict(prompt="a", top_p=1.5), 400, "top_p"),
    (dict(prompt="a", top_k=0), 400, "top_k"),
    (dict(prompt="a", min_p=2), 400, "min_p"),
    (dict(prompt="a", max_tokens=0), 400, "max_tokens"),
    (dict(prompt="a", max_tokens=64), 400, "max_tokens"),  # 1 + 64 > the 64-token context
    (dict(prompt="x" * 70), 400, "prompt"),
    (dict(prompt=""), 400, "prompt"),
    (dict(prompt=[300]), 400, "prompt"),
    (dict(prompt="a", n=0), 400, "n"),
    (dict(prompt="a", n=1000), 400, "n"),
    (dict(prompt="a", seed=2 ** 63), 400, "seed"),
    (dict(prompt="a", stop=[""]), 400, "stop"),
    (dict(prompt="a", logprobs=2), 400, "logprobs"),
    (dict(prompt="a", stream="yes"), 400, "stream"),
    (dict(max_tokens=3), 400, "prompt"),
    (dict(prompt="a", model="gpt-4"), 404, "model"),
])
def test_bad_requests_get_openai_errors(client, body, status, param):
    r = client.post("/v1/completions", content=json.dumps(body))
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["param"] == param and err["message"]


def test_bad_bodies_and_paths(client):
    for r, status in ((client.post("/v1/completions", content=b"{not json"), 400),
                      (client.post("/v1/completions", content=b"[1, 2]"), 400),
                      (client.post("/v1/completions", json={"prompt": "a" * 5000}), 413),
                      (client.get("/v1/nothing"), 404),
                      (client.get("/v1/completions"), 405)):
        assert r.status_code == status, r.text
        assert set(r.json()["error"]) == {"message", "type", "param", "code"}


def test_full_server_answers_429(run):
    model = load_run(run).model
    entered, release, forward = threading.Event(), threading.Event(), model.forward

    def held_forward(*args, **kwargs):  # the engine stays inside its first step until released
        entered.set()
        assert release.wait(30)
        return forward(*args, **kwargs)

    model.forward = held_forward
    s = Server(create_app(model, load_run(run).tokenizer, name="busy", max_rows=1, max_waiting=1))
    try:
        with httpx.Client(base_url=s.url, timeout=60) as c:
            first = []
            t = threading.Thread(target=lambda: first.append(c.post("/v1/completions", json=dict(prompt="a"))))
            t.start()
            assert entered.wait(30)  # one row running
            c2 = httpx.Client(base_url=s.url, timeout=60)
            second = []
            t2 = threading.Thread(target=lambda: second.append(c2.post("/v1/completions", json=dict(prompt="b"))))
            t2.start()
            deadline = time.time() + 30
            while len(s.app.state.engine.waiting) < 1:  # one row waiting: the engine is full
                assert time.time() < deadline
                time.sleep(0.01)
            r = c.post("/v1/completions", json=dict(prompt="c", max_tokens=2))
            assert r.status_code == 429 and r.json()["error"]["code"] == "rate_limit_exceeded", r.text
            assert r.json()["error"]["type"] == "rate_limit_error"
            release.set()
            t.join(30)
            t2.join(30)
            c2.close()
            assert first[0].status_code == 200 and second[0].status_code == 200
            assert c.post("/v1/completions", json=dict(prompt="c", max_tokens=2)).status_code == 200  # free again
    finally:
        release.set()
        s.close()


def test_a_failing_step_is_a_500_and_the_server_goes_on(run):
    r = load_run(run)
    forward, calls = r.model.forward, []

    def failing_once(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("simulated device failure")
        return forward(*args, **kwargs)

    r.model.forward = failing_once
    s = Server(create_app(r.model, r.tokenizer, name="flaky"))
    try:
        bad = httpx.post(s.url + "/v1/completions", json=dict(prompt="a", max_tokens=3), timeout=60)
        assert bad.status_code == 500 and "simulated device failure" in bad.json()["error"]["message"]
        assert bad.json()["error"]["type"] == "server_error"
        ok = httpx.post(s.url + "/v1/completions", json=dict(prompt="a", max_tokens=3), timeout=60)
        assert ok.status_code == 200 and ok.json()["usage"]["completion_tokens"] == 3
    finally:
        s.close()


# ---------------------------------------------------------------- batching


def test_concurrent_requests_share_decode_steps(server, loaded):
    stats = server.app.state.engine.stats
    before = dict(stats)
    prompts = [f"The {w}" for w in ("model", "data", "run", "step", "loss", "token", "value", "train")]

    async def fire():
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as c:
            rs = await asyncio.gather(*(c.post("/v1/completions", json=dict(prompt=p, max_tokens=16, temperature=0))
                                        for p in prompts))
        return [r.json()["choices"][0]["text"] for r in rs]

    texts = asyncio.run(fire())
    steps = stats["steps"] - before["steps"]
    assert stats["tokens"] - before["tokens"] == 8 * 16
    assert steps < 8 * 16 // 2, steps  # one at a time would take 128 model steps
    assert stats["max_rows_in_step"] >= 4
    # sharing steps does not change what each request gets
    assert texts == [library_text(loaded, p, max_new_tokens=16, temperature=0) for p in prompts]


def test_arlm_serve_process_answers_and_stops_on_ctrl_c(run):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1] / "src"))
    p = subprocess.Popen([sys.executable, "-m", "arlm", "serve", str(run), "--port", str(port)], env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 60
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                assert p.poll() is None and time.time() < deadline, p.stderr.read() if p.poll() is not None else ""
                time.sleep(0.1)
        r = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", timeout=60,
                       json=dict(messages=[{"role": "user", "content": "hi"}], max_tokens=5))
        assert r.status_code == 200 and r.json()["model"] == "run"  # the run folder's name; its template
    finally:
        p.send_signal(signal.SIGINT)
        _, err = p.communicate(timeout=30)
    assert "Traceback" not in err and "127.0.0.1" in err, err


def test_serve_cli_refuses_bad_flags(tmp_path, run):
    rc, _, err = cli("serve", tmp_path / "missing")
    assert rc == 2 and "missing" in err
    rc, _, err = cli("serve", run, "--port", "70000")
    assert rc == 2 and "--port" in err
