"""`arlm chat`: a stdin loop that streams replies, keeps the conversation in the context, and
ends cleanly on end of input or Ctrl-C (run as a real process with piped stdin)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from tiny_run import train_tiny_run

from arlm.generation import AutoregressiveWrapper
from arlm.generation.sampling import SamplingConfig, stream_text
from arlm.run import load_run
from arlm.serve.template import DEFAULT, FILENAME, ChatTemplate, fit_messages

REPO = Path(__file__).resolve().parents[1]
TEMPLATE = {"system": "S: {content}\n", "user": "Q: {content}\n", "assistant": "A: {content}\n",
            "generation_prompt": "A:", "stop": ["\n"]}


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_corpus):
    out = train_tiny_run(tmp_path_factory.mktemp("chat") / "run", tiny_corpus, "--model.max_seq_len", "64")
    (out / FILENAME).write_text(json.dumps(TEMPLATE))
    return out


def chat_process(run, *args) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
    env.pop("ARLM_DEBUG", None)
    return subprocess.Popen([sys.executable, "-m", "arlm", "chat", str(run), *args], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def test_piped_conversation_streams_replies_the_library_would_give(run):
    p = chat_process(run, "--temperature", "0", "--max-new-tokens", "12")
    out, err = p.communicate("hello\n\nhow are you\n", timeout=120)  # the blank line is skipped
    assert p.returncode == 0 and "Traceback" not in err, err
    replies = out.split("\n")[:2]
    assert out.endswith("\n") and len(out.split("\n")) == 3
    # the same turns through the library: the second prompt holds the first exchange
    r = load_run(run)
    wrapper, tpl = AutoregressiveWrapper(r.model), ChatTemplate.from_dict(TEMPLATE)
    cfg = SamplingConfig(max_new_tokens=12, temperature=0, stop=("\n",))
    history = []
    for text, reply in zip(("hello", "how are you"), replies):
        history.append({"role": "user", "content": text})
        ids = r.tokenizer.encode(tpl.render(history))
        assert reply == "".join(stream_text(wrapper, r.tokenizer, ids, cfg))
        history.append({"role": "assistant", "content": reply.strip()})


def test_long_conversation_drops_oldest_turns(run):
    lines = "".join(f"turn number {i} with some words\n" for i in range(6))
    p = chat_process(run, "--temperature", "0", "--max-new-tokens", "8", "--system", "be brief")
    out, err = p.communicate(lines, timeout=120)
    assert p.returncode == 0 and "Traceback" not in err, err
    assert len(out.split("\n")) == 7 and "oldest message" in err


def test_ctrl_c_at_the_prompt_ends_cleanly(run):
    p = chat_process(run, "--temperature", "0", "--max-new-tokens", "6")
    p.stdin.write("hello\n")
    p.stdin.flush()
    assert p.stdout.readline().endswith("\n")  # the first reply came back: the loop waits for input
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 0 and "Traceback" not in err, err


def test_run_without_a_template_uses_the_plain_transcript(tmp_path, tiny_corpus):
    run = train_tiny_run(tmp_path / "plain", tiny_corpus)
    p = chat_process(run, "--temperature", "0", "--max-new-tokens", "4")
    out, err = p.communicate("hi\n", timeout=120)
    assert p.returncode == 0 and "plain 'User:/Assistant:'" in err, err
    p = chat_process(run, "--temperature", "-1")
    _, err = p.communicate("", timeout=120)
    assert p.returncode == 2 and "--temperature" in err


def test_fit_messages_keeps_the_system_message_and_the_last_turn():
    encode = lambda s: list(s.encode())  # noqa: E731  (one token per byte)
    msgs = [{"role": "system", "content": "sys"}] + [
        {"role": "user" if i % 2 == 0 else "assistant", "content": f"message {i}"} for i in range(6)]
    kept, ids = fit_messages(DEFAULT, encode, msgs, 60)
    assert len(ids) <= 60 and kept[0]["content"] == "sys" and kept[-1] == msgs[-1]
    assert kept[1:] == msgs[len(msgs) - len(kept) + 1:]  # the newest turns, in order
    full, _ = fit_messages(DEFAULT, encode, msgs, 10_000)
    assert full == msgs
    with pytest.raises(ValueError, match="last message"):
        fit_messages(DEFAULT, encode, [{"role": "user", "content": "x" * 100}], 50)


@pytest.mark.parametrize("data, fragment", [
    ({"user": "U: {content}"}, "missing 'assistant'"),
    ({"user": "U:", "assistant": "A: {content}"}, "{content}"),
    ({"user": "U: {content}", "assistant": "A: {content}", "tools": "x"}, "unknown key"),
    ({"user": "U: {content}", "assistant": "A: {content}", "stop": [""]}, "stop"),
    ([], "JSON object"),
])
def test_bad_templates_are_refused(data, fragment):
    with pytest.raises(ValueError, match=fragment.replace("{", r"\{").replace("}", r"\}")):
        ChatTemplate.from_dict(data)


def test_template_keeps_braces_in_messages_as_written():
    tpl = ChatTemplate.from_dict(TEMPLATE)
    assert tpl.render([{"role": "user", "content": "{x} {content}"}]) == "Q: {x} {content}\nA:"
