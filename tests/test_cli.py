"""The arlm command line: train -> generate -> eval on the tiny preset, help, and clear errors."""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
import yaml

from arlm.generation.sampling import StopStrings, compose_filters
from arlm.cli.main import main
from arlm.config import PRESETS, RunConfig, preset
from arlm.rundir import latest_checkpoint
from conftest import LIVE_INIT

REPO = Path(__file__).resolve().parents[1]
VERBS = ("train", "generate", "eval", "presets", "config")


def cli(*argv) -> tuple[int, str, str]:
    """Run ``arlm argv`` in this process; returns (exit status, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = main([str(a) for a in argv])
        except SystemExit as e:  # argparse's --help / --version
            rc = e.code if isinstance(e.code, int) else 0
    return rc, out.getvalue(), err.getvalue()


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO / "src") + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("ARLM_DEBUG", None)
    return env


def train_tiny(corpus: Path, out: Path, *extra) -> tuple[int, str, str]:
    return cli("train", "--preset", "tiny", "--data", corpus, "--out", out, "--no-progress", *extra)


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_corpus) -> Path:
    """A finished tiny run (20 steps) with two dotted overrides (blocks live from the start:
    conftest.LIVE_INIT)."""
    out = tmp_path_factory.mktemp("runs") / "tiny"
    rc, stdout, stderr = train_tiny(tiny_corpus, out, "--train.lr", "0.002", "--model.ff_mult", "2",
                                    "--model.init", LIVE_INIT)
    assert rc == 0, stderr
    assert "run directory" in stdout and str(out) in stdout
    return out


# ---------------------------------------------------------------------------------------------
# train


def test_train_writes_a_self_describing_run_dir(run):
    for name in ("config.yaml", "metrics.jsonl", "tokenizer.json"):
        assert (run / name).is_file(), name
    final = run / "checkpoints" / "step-20"
    assert (final / "COMMIT").is_file()
    assert (final / "model.safetensors").is_file()
    lines = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    train_lines = [l for l in lines if "loss" in l]
    val_lines = [l for l in lines if "val_loss" in l]
    assert [l["step"] for l in train_lines] == list(range(1, 21))
    for l in train_lines:
        assert {"step", "loss", "lr", "tokens_per_sec"} <= set(l)
    assert val_lines and all({"step", "val_loss", "val_bpb"} <= set(l) for l in val_lines)
    assert all(math.isfinite(l["val_loss"]) and l["val_bpb"] > 0 for l in val_lines)


def test_dotted_overrides_reach_the_run_config(run):
    cfg = RunConfig.from_yaml(run / "config.yaml")
    assert cfg.train.lr == 0.002 and cfg.model.ff_mult == 2.0
    assert cfg.model.dim == preset("tiny").model.dim  # untouched keys keep the preset's values


def test_resume_auto_extends_a_finished_run(tmp_path, tiny_corpus):
    out = tmp_path / "r"
    assert train_tiny(tiny_corpus, out, "--max-steps", "6")[0] == 0
    # no --preset: the run's own config is the base layer; only max_steps changes
    rc, stdout, stderr = cli("train", "--out", out, "--resume", "auto", "--max-steps", "12", "--no-progress")
    assert rc == 0, stderr
    assert RunConfig.from_yaml(out / "config.yaml").train.max_steps == 12
    assert (out / "checkpoints" / "step-12" / "COMMIT").is_file()
    steps = [json.loads(l)["step"] for l in (out / "metrics.jsonl").read_text().splitlines()
             if "loss" in json.loads(l)]
    assert steps == list(range(1, 13))  # continued at 7, no step trained twice


def _wait_for_steps(metrics: Path, n: int, timeout: float = 120.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline and not (metrics.is_file() and metrics.read_text().count("\n") >= n):
        time.sleep(0.05)


def _assert_committed_after(out: Path, n: int) -> None:
    latest = latest_checkpoint(out)  # e.g. RUN/checkpoints/step-7
    assert latest is not None and int(latest.name.rsplit("-", 1)[-1]) >= n


LONG_RUN = ("--max-steps", "100000", "--train.eval_every", "0", "--train.ckpt_every", "0")


def test_ctrl_c_checkpoints_and_exits_130(tmp_path, tiny_corpus):
    out = tmp_path / "r"
    # the trainer handles SIGINT itself; send it once a few steps have been logged
    sender = threading.Thread(target=lambda: (_wait_for_steps(out / "metrics.jsonl", 3),
                                              os.kill(os.getpid(), signal.SIGINT)), daemon=True)
    sender.start()
    rc, stdout, stderr = train_tiny(tiny_corpus, out, *LONG_RUN)
    sender.join()
    assert rc == 130, stderr
    _assert_committed_after(out, 3)
    assert "--resume auto" in stderr


def test_sigterm_checkpoints_and_exits_143_in_a_real_process(tmp_path, tiny_corpus):
    """Also the `python -m arlm` entry point, and the exit status a shell or scheduler sees."""
    out = tmp_path / "r"
    proc = subprocess.Popen(
        [sys.executable, "-m", "arlm", "train", "--preset", "tiny", "--data", str(tiny_corpus), "--out", str(out),
         "--no-progress", *LONG_RUN], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
    _wait_for_steps(out / "metrics.jsonl", 3)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 143, stderr
    assert "Traceback" not in stderr
    _assert_committed_after(out, 3)


# ---------------------------------------------------------------------------------------------
# generate


def test_generate_prints_prompt_then_new_text_and_is_seeded(run):
    rc, a, err = cli("generate", run, "--prompt", "The model", "--max-new-tokens", "40", "--seed", "3")
    assert rc == 0, err
    assert a.startswith("The model") and len(a.rstrip("\n")) > len("The model")
    rc, b, _ = cli("generate", run, "--prompt", "The model", "--max-new-tokens", "40", "--seed", "3")
    assert a == b
    rc, c, _ = cli("generate", run, "--prompt", "The model", "--max-new-tokens", "40", "--seed", "3",
                   "--top-k", "5", "--top-p", "0.9", "--min-p", "0.05", "--num-samples", "2")
    assert rc == 0 and c.count("The model") == 2


def test_generate_decoding_modes_through_the_cli(run):
    greedy = ("generate", run, "--prompt", "The", "--max-new-tokens", "24", "--temperature", "0")
    rc, plain, err = cli(*greedy)
    assert rc == 0, err
    # the run drafting for itself: speculative greedy output equals greedy, every draft accepted
    rc, spec, err = cli(*greedy, "--draft", run, "--num-draft-tokens", "3")
    assert rc == 0, err
    assert spec == plain and "100.0% of draft tokens accepted" in err
    # one beam is greedy decoding
    rc, beam, err = cli(*greedy, "--beams", "1")
    assert rc == 0 and beam == plain and "beam 1" in err
    rc, beams, err = cli(*greedy, "--beams", "3", "--num-samples", "2")
    assert rc == 0 and beams.count("The") >= 2 and "beam 2" in err
    # contrastive decoding against itself with beta 0 is the expert's greedy output
    rc, con, err = cli(*greedy, "--amateur", run, "--contrastive-beta", "0")
    assert rc == 0 and con == plain, err
    rc, pen, err = cli(*greedy, "--repetition-penalty", "3.0", "--presence-penalty", "0.5")
    assert rc == 0 and pen.startswith("The") and pen != plain
    rc, _, err = cli(*greedy, "--draft", run, "--amateur", run)
    assert rc == 2 and "not both" in err


def test_generate_stops_before_a_stop_string(run):
    args = ("generate", run, "--prompt", "The", "--max-new-tokens", "60", "--temperature", "0")
    rc, full, _ = cli(*args)
    new = full[len("The"):].rstrip("\n")
    assert rc == 0 and len(new) >= 10
    stop = new[5:7]  # two characters that greedy decoding is known to produce
    rc, cut, _ = cli(*args, "--stop", stop)
    assert rc == 0
    assert cut.rstrip("\n") == "The" + new[: new.index(stop)]


def test_generate_prompt_longer_than_context(run):
    prompt = "x" * 40  # the tiny preset's context is 32 byte tokens
    rc, _, err = cli("generate", run, "--prompt", prompt, "--max-new-tokens", "4")
    assert rc == 2 and "40" in err and "32" in err and "--truncate" in err
    rc, out, err = cli("generate", run, "--prompt", prompt, "--max-new-tokens", "4", "--truncate", "--seed", "0")
    assert rc == 0 and out.startswith(prompt), err


def test_stop_strings_hold_back_a_possible_start():
    s = StopStrings(["END"])
    assert s.feed("abcE") == ("abc", False)  # "E" may begin END
    assert s.feed("N") == ("", False)
    assert s.feed("Dxyz") == ("", True)
    s = StopStrings(["aab"])
    assert s.feed("aa") == ("", False)
    assert s.feed("a") == ("a", False)
    assert s.feed("bc") == ("", True)
    assert StopStrings(["zz"]).feed("az", final=True) == ("az", False)


def test_filters_compose_in_order():
    logits = torch.tensor([[4.0, 3.0, 2.9, 0.0, -1.0]])
    kept = torch.isfinite(compose_filters(top_k=3, top_p=0.5)(logits))
    assert kept.tolist() == [[True, False, False, False, False]]
    kept = torch.isfinite(compose_filters(top_k=4, min_p=0.3)(logits))
    assert kept.tolist() == [[True, True, True, False, False]]
    # top-k first: top-p then sees only the 2 survivors and keeps 1 (the other order would keep 2)
    ramp = torch.tensor([[1.0, 0.9, 0.8, 0.7, 0.6]])
    assert torch.isfinite(compose_filters(top_k=2, top_p=0.5)(ramp)).sum() == 1
    assert compose_filters() is None


# ---------------------------------------------------------------------------------------------
# eval


def test_eval_prints_consistent_loss_bpb_and_perplexity(run):
    rc, out, err = cli("eval", run)
    assert rc == 0, err
    number = r"([-+0-9.eE]+|nan|inf)"
    loss = float(re.search(r"validation loss:\s*" + number, out).group(1))
    bpb = float(re.search(r"bits per byte:\s*" + number, out).group(1))
    ppl = float(re.search(r"perplexity:\s*" + number, out).group(1))
    assert all(math.isfinite(v) and v > 0 for v in (loss, bpb, ppl))
    assert ppl == pytest.approx(math.exp(loss), rel=1e-4)
    assert bpb == pytest.approx(loss / math.log(2), rel=1e-4)  # byte tokenizer: one token = one byte
    rc, js, _ = cli("eval", run, "--json")
    m = json.loads(js)
    assert m["loss"] == pytest.approx(loss, abs=1e-6) and m["step"] == 20
    # the same windows in uneven batches: a mean over tokens, not over batches
    rc, js, _ = cli("eval", run, "--json", "--batch-size", "7")
    assert json.loads(js)["loss"] == pytest.approx(m["loss"], rel=1e-5)


def test_eval_on_another_corpus(run, tmp_path, tiny_corpus_text):
    other = tmp_path / "other.txt"
    other.write_text(tiny_corpus_text[:3000])
    rc, out, err = cli("eval", run, "--data", other, "--max-batches", "2")
    assert rc == 0, err
    assert "bits per byte" in out and str(other) in out


# ---------------------------------------------------------------------------------------------
# help, presets, config


@pytest.mark.parametrize("verb", VERBS)
def test_help_for_each_verb(verb):
    rc, out, _ = cli(verb, "--help")
    assert rc == 0 and f"arlm {verb}" in out


def test_presets_lists_every_preset():
    rc, out, _ = cli("presets")
    assert rc == 0
    names = [line.split()[0] for line in out.splitlines()[1:]]
    assert names == list(PRESETS)


def test_config_layers_preset_file_short_flags_then_dotted(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("model:\n  dim: 48\ntrain:\n  max_steps: 7\n  lr: 0.005\n")
    rc, out, err = cli("config", "--preset", "tiny", "--config", f)
    cfg = RunConfig.from_dict(yaml.safe_load(out))
    assert rc == 0, err
    assert (cfg.model.dim, cfg.train.max_steps, cfg.train.lr) == (48, 7, 0.005)
    assert cfg.model.heads == preset("tiny").model.heads  # keys the file does not name keep the preset's
    rc, out, _ = cli("config", "--preset", "tiny", "--config", f, "--max-steps", "9")
    assert RunConfig.from_dict(yaml.safe_load(out)).train.max_steps == 9
    rc, out, _ = cli("config", "--preset", "tiny", "--config", f, "--max-steps", "9", "--train.max_steps", "11",
                     "--train.compile", "true", "--model.dim_head", "null")
    cfg = RunConfig.from_dict(yaml.safe_load(out))
    assert (cfg.train.max_steps, cfg.train.compile, cfg.model.dim_head) == (11, True, None)


def test_config_files_are_the_presets():
    files = {p.stem: p for p in (REPO / "configs").glob("*.yaml")}
    assert set(files) == set(PRESETS)
    for name, path in files.items():
        assert RunConfig.from_yaml(path) == preset(name), name


# ---------------------------------------------------------------------------------------------
# clear errors: exit 2, a message naming the problem, no traceback


def _empty_corpus(tmp_path: Path) -> Path:
    (tmp_path / "empty.txt").write_text("")
    return tmp_path / "empty.txt"


BAD_TRAIN = {
    "unknown preset": (["--preset", "tinyy"], "unknown preset 'tinyy'"),
    "unknown key": (["--preset", "tiny", "--model.foo", "3"], "model.foo"),
    "negative lr": (["--preset", "tiny", "--train.lr", "-0.001"], "train.lr"),
    "heads do not divide dim": (["--preset", "tiny", "--model.heads", "3"], "model.heads=3"),
    "bad bool": (["--preset", "tiny", "--train.compile", "maybe"], "train.compile"),
    "missing config file": (["--config", "nope.yaml"], "nope.yaml"),
    "nan time limit": (["--preset", "tiny", "--train.max_minutes", "nan"], "train.max_minutes must be a finite"),
    "overflowing float": (["--preset", "tiny", "--train.lr", "1e999"], "train.lr"),
    "nan model value": (["--preset", "tiny", "--model.rotary_base", "nan"], "model.rotary_base must be a finite"),
    "non-integral int": (["--preset", "tiny", "--train.batch_size", "2.5"], "train.batch_size"),
    "seed past 2**63": (["--preset", "tiny", "--train.seed", str(2**63)], "train.seed"),
    "negative seed": (["--preset", "tiny", "--train.seed", "-1"], "train.seed"),
}


@pytest.mark.parametrize("case", list(BAD_TRAIN))
def test_bad_train_input_exits_2(case, tmp_path, tiny_corpus):
    argv, expected = BAD_TRAIN[case]
    rc, _, err = cli("train", "--data", tiny_corpus, "--out", tmp_path / "r", *argv)
    assert rc == 2 and err.startswith("arlm: error: ") and expected in err, err
    assert "Traceback" not in err
    assert not (tmp_path / "r").exists()  # rejected before any work


def test_empty_corpus_exits_2(tmp_path):
    rc, _, err = train_tiny(_empty_corpus(tmp_path), tmp_path / "r")
    assert rc == 2 and err.startswith("arlm: error: ") and "empty" in err, err
    assert not (tmp_path / "r" / "checkpoints").exists()


@pytest.mark.parametrize("argv, expected", [
    (["--temperature", "-1"], "--temperature"),
    (["--seed", str(2**64)], "--seed"),
    (["--top-p", "1.5"], "--top-p"),
    (["--top-k", "0"], "--top-k"),
    (["--max-new-tokens", "0"], "--max-new-tokens"),
])
def test_bad_sampling_options_exit_2_before_loading(argv, expected, tmp_path):
    # the run folder does not even exist: the options are checked first
    rc, _, err = cli("generate", tmp_path / "missing", "--prompt", "a", *argv)
    assert rc == 2 and err.startswith("arlm: error: ") and expected in err, err


@pytest.mark.parametrize("verb", ["generate", "eval"])
def test_not_a_run_dir_exits_2(verb, tmp_path):
    rc, _, err = cli(verb, tmp_path, *(["--prompt", "a"] if verb == "generate" else []))
    assert rc == 2 and err.startswith("arlm: error: ") and str(tmp_path) in err, err


def test_convert_from_x_transformers_gives_a_run_with_identical_logits(tmp_path, tiny_corpus):
    xt = pytest.importorskip("x_transformers")
    import torch
    import yaml

    from arlm.run import load_run

    kwargs = {"num_tokens": 256, "max_seq_len": 32,
              "attn_layers": {"dim": 32, "depth": 2, "heads": 2, "rotary_pos_emb": True, "ff_glu": True}}
    torch.manual_seed(0)
    ref = xt.TransformerWrapper(num_tokens=256, max_seq_len=32, attn_layers=xt.Decoder(**kwargs["attn_layers"])).eval()
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    torch.save(ref.state_dict(), tmp_path / "xt.pt")
    (tmp_path / "xt.yaml").write_text(yaml.safe_dump(kwargs))
    out = tmp_path / "converted"
    rc, stdout, err = cli("convert", tmp_path / "xt.pt", "--from", "x-transformers", "--config", tmp_path / "xt.yaml",
                          "--out", out, "--data", tiny_corpus)
    assert rc == 0, err
    run = load_run(out)
    x = torch.randint(0, 256, (2, 20), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(run.model(x), ref(x), atol=1e-5, rtol=0)
    rc, text, err = cli("generate", out, "--prompt", "ab", "--max-new-tokens", "8", "--temperature", "0")
    assert rc == 0 and text.startswith("ab"), err
    # the converted run fine-tunes with the usual resume
    rc, _, err = cli("train", "--out", out, "--resume", "auto", "--max-steps", "3", "--no-progress")
    assert rc == 0, err
    assert latest_checkpoint(out).name == "step-3"
    # a mismatched config is a clear error, and nothing is overwritten
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump({**kwargs, "attn_layers": {"dim": 64, "depth": 2}}))
    rc, _, err = cli("convert", tmp_path / "xt.pt", "--from", "x-transformers", "--config", tmp_path / "bad.yaml",
                     "--out", tmp_path / "other")
    assert rc == 2 and "does not match" in err and "Traceback" not in err


# devices this machine lacks: plain "cuda" only where there is no CUDA (elsewhere it is valid)
MISSING_DEVICES = ["bogus", "cuda:99"] + ([] if torch.cuda.is_available() else ["cuda"])


@pytest.mark.parametrize("verb", ["generate", "eval"])
@pytest.mark.parametrize("device", MISSING_DEVICES)
def test_generate_and_eval_refuse_a_device_this_machine_lacks(run, verb, device):
    rc, _, err = cli(verb, run, "--device", device)
    assert rc == 2, err
    assert err.startswith("arlm: error:") and repr(device) in err and "Traceback" not in err
