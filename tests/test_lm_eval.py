"""The lm-eval adapter: its log-likelihoods equal the model's own, generation honours `until`,
and `arlm eval --tasks` runs a task defined in a local YAML over a local JSON file, offline."""

from __future__ import annotations

import json
import sys

import pytest
import torch
import torch.nn.functional as F
from conftest import LIVE_INIT, write_corpus
from lm_eval.api.instance import Instance
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

from arlm.cli.main import main as cli_main
from arlm.config import RunConfig
from arlm.evaluation.lm_eval import ArlmLM
from arlm.generation import AutoregressiveWrapper
from arlm.run import load_run
from arlm.training import train

CONTEXT = 16  # model.max_seq_len: small, so long inputs must be cut


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("lmeval")
    cfg = RunConfig.from_dict({
        "model": dict(max_seq_len=CONTEXT, dim=32, depth=2, heads=2, pos_emb="rotary", init=LIVE_INIT),
        "data": dict(path=str(write_corpus(root / "corpus.txt"))),
        "train": dict(batch_size=8, max_steps=120, lr=1e-2, warmup_steps=2, eval_every=0, ckpt_every=0,
                      sample_tokens=4, keep_last=2, progress=False),
    })
    train(cfg, root / "run", log=lambda m: None)
    return root / "run"


@pytest.fixture(scope="module")
def lm(run_dir):
    return ArlmLM(str(run_dir), batch_size=3)


def direct_logprob(model, context: list[int], continuation: list[int]) -> tuple[float, bool]:
    """Sum of log p(continuation | context), one unbatched forward over the last CONTEXT tokens."""
    seq = (context + continuation)[-(CONTEXT + 1):]
    with torch.no_grad():
        logp = F.log_softmax(model(torch.tensor([seq[:-1]])).float(), dim=-1)[0]  # (T, V)
    rows = logp[len(seq) - 1 - len(continuation):]
    target = torch.tensor(continuation)
    return float(rows.gather(-1, target[:, None]).sum()), bool((rows.argmax(-1) == target).all())


def requests(kind, *args_list):
    return [Instance(request_type=kind, doc={}, arguments=args, idx=0) for args in args_list]


def test_loglikelihoods_equal_the_models_own_summed_log_probs(lm):
    pairs = [("the model reads a", " token"), ("where", " when never"), ("", "data run"),
             ("x" * 40 + " the value of the", " step"),  # longer than the context: cut from the left
             ("of", " the"), ("a", "b" * 15)]
    got = lm.loglikelihood(requests("loglikelihood", *pairs), disable_tqdm=True)
    newline = lm.tokenizer.encode("\n")[-1]
    for (ctx, cont), (score, greedy) in zip(pairs, got):
        ctx_ids = lm.tokenizer.encode(ctx) if ctx else [newline]  # an empty context: the prefix token
        want, want_greedy = direct_logprob(lm.model, ctx_ids, lm.tokenizer.encode(cont))
        assert score == pytest.approx(want, abs=1e-4), (ctx, cont)
        assert greedy == want_greedy
    assert len({round(s, 3) for s, _ in got}) == len(pairs)  # the scores differ: nothing was mixed up


def test_greedy_flag_is_true_for_the_models_own_greedy_continuation(lm):
    prompt = lm.tokenizer.encode("the model")
    greedy = AutoregressiveWrapper(lm.model).generate(torch.tensor(prompt), 3, temperature=0.0).tolist()
    ((_, is_greedy),) = lm.loglikelihood(requests("loglikelihood", ("the model", lm.tok_decode(greedy))),
                                         disable_tqdm=True)
    assert is_greedy


def test_rolling_loglikelihood_scores_every_token_once(lm):
    short, long = "the data", "the model reads a token and predicts the next one, step by step, " * 2
    got = lm.loglikelihood_rolling(requests("loglikelihood_rolling", (short,), (long,)), disable_tqdm=True)
    newline = lm.tokenizer.encode("\n")[-1]
    ids = lm.tokenizer.encode(short)
    assert got[0] == pytest.approx(direct_logprob(lm.model, [newline], ids)[0], abs=1e-4)
    ids = lm.tokenizer.encode(long)
    assert len(ids) > 3 * CONTEXT
    windows = [make_disjoint_window(w) for w in get_rolling_token_windows(ids, newline, CONTEXT, 1)]
    assert sum(len(cont) for _, cont in windows) == len(ids)
    assert got[1] == pytest.approx(sum(direct_logprob(lm.model, c, t)[0] for c, t in windows), abs=1e-3)


def test_generate_until_stops_before_the_first_until_string(lm):
    wrapper = AutoregressiveWrapper(lm.model)

    def greedy(text, n):
        return lm.tok_decode(wrapper.generate(torch.tensor(lm.tokenizer.encode(text)), n, temperature=0.0).tolist())

    # prompts of up to CONTEXT // 2 tokens are kept whole when max_gen_toks >= CONTEXT // 2
    prompts = ["a run", "data"]
    texts = [greedy(p, 30) for p in prompts]
    # a stop string that the first greedy text contains after its start, and one it never reaches
    stop = next(texts[0][i:i + 2] for i in range(3, 28) if texts[0].find(texts[0][i:i + 2]) == i)
    cut = texts[0].index(stop)
    long_prompt = "where the value is never the data of the run"
    reqs = requests("generate_until", (prompts[0], {"until": [stop, "@@@"], "max_gen_toks": 30}),
                    (prompts[1], {"until": ["@@@"], "max_gen_toks": 12}),
                    (prompts[1], {"until": "@@@", "max_gen_toks": 30, "do_sample": False}),
                    (long_prompt, {"until": ["@@@"], "max_gen_toks": 4}))
    out = lm.generate_until(reqs, disable_tqdm=True)
    assert 0 < cut and out[0] == texts[0][:cut] and stop not in out[0]
    assert out[1] == texts[1][:12]  # no stop string: max_gen_toks tokens (bytes here)
    assert out[2] == texts[1]
    # a long prompt keeps its last CONTEXT - max_gen_toks tokens (cut from the left)
    assert out[3] == greedy(long_prompt[-(CONTEXT - 4):], 4)


def test_registered_with_lm_eval_under_the_name_arlm(run_dir):
    from lm_eval.api.registry import get_model

    assert get_model("arlm") is ArlmLM
    lm = ArlmLM.create_from_arg_string(f"run={run_dir},batch_size=2", {"device": "cpu"})
    assert lm.batch_size == 2 and lm.max_length == CONTEXT
    with pytest.raises(TypeError, match="nonsense"):
        ArlmLM.create_from_arg_string(f"run={run_dir},nonsense=1")


def test_unsupported_generation_options_are_refused(lm):
    with pytest.raises(ValueError, match="num_beams"):
        lm.generate_until(requests("generate_until", ("a", {"until": ["\n"], "num_beams": 4})), disable_tqdm=True)


# ---- arlm eval --tasks: a task from a local YAML over a local JSON file ---------------------------

DOCS = [
    {"question": "the model reads a", "choices": [" token", " xylophone", " qqq"], "answer": 0},
    {"question": "the loss of the", "choices": [" step", " zzzz"], "answer": 1},
    {"question": "where the value is", "choices": [" never", " always", " kkk"], "answer": 2},
    {"question": "a run", "choices": [" data", " wwww"], "answer": 0},
]


GEN_PROMPTS = ["a run", "the step", "data"]  # short: the whole prompt fits beside max_gen_toks


def write_tasks(folder, gen_targets=("x", "y", "z")):
    """Two tasks over local JSON lines: multiple choice (DOCS) and generate_until (GEN_PROMPTS)."""
    folder.mkdir()
    data, gen = folder / "docs.jsonl", folder / "gen.jsonl"
    data.write_text("".join(json.dumps(d) + "\n" for d in DOCS))
    gen.write_text("".join(json.dumps({"prompt": p, "target": t}) + "\n" for p, t in zip(GEN_PROMPTS, gen_targets)))
    common = "dataset_path: json\ntest_split: test\nmetric_list:\n  - metric: {metric}\n" \
             "    aggregation: mean\n    higher_is_better: true\ndataset_kwargs:\n  data_files:\n    test: {path}\n"
    (folder / "choice.yaml").write_text(
        "task: arlm_local_choice\noutput_type: multiple_choice\n" + common.format(metric="acc", path=data)
        + 'doc_to_text: "{{question}}"\ndoc_to_choice: "{{choices}}"\ndoc_to_target: "{{answer}}"\n')
    (folder / "complete.yaml").write_text(
        "task: arlm_local_complete\noutput_type: generate_until\n" + common.format(metric="exact_match", path=gen)
        + 'doc_to_text: "{{prompt}}"\ndoc_to_target: "{{target}}"\n'
        + 'generation_kwargs:\n  until: ["\\n"]\n  max_gen_toks: 8\n  do_sample: false\n')
    return folder


def test_eval_tasks_runs_local_tasks_and_matches_the_direct_scores(run_dir, tmp_path, capsys):
    run = load_run(run_dir)
    tok, wrapper = run.tokenizer, AutoregressiveWrapper(run.model)
    # the targets of the generation task: the model's own greedy text for two prompts, not for the third
    greedy = [tok.decode(wrapper.generate(torch.tensor(tok.encode(p)), 8, temperature=0.0).tolist()).split("\n")[0]
              for p in GEN_PROMPTS]
    tasks = write_tasks(tmp_path / "tasks", gen_targets=(greedy[0], greedy[1], greedy[2] + "#"))
    rc = cli_main(["eval", str(run_dir), "--tasks", "arlm_local_choice,arlm_local_complete",
                   "--include-path", str(tasks), "--limit", "3", "--json"])
    assert rc == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["results"]
    hits = []
    for d in DOCS[:3]:
        scores = [direct_logprob(run.model, tok.encode(d["question"]), tok.encode(c))[0] for c in d["choices"]]
        hits.append(max(range(len(scores)), key=scores.__getitem__) == d["answer"])
    assert res["arlm_local_choice"]["acc,none"] == pytest.approx(sum(hits) / 3)
    assert res["arlm_local_complete"]["exact_match,none"] == pytest.approx(2 / 3)

    # the table, as lm-eval prints it
    rc = cli_main(["eval", str(run_dir), "--tasks", "arlm_local_choice", "--include-path", str(tasks),
                   "--limit", "2", "--batch-size", "2"])
    text = capsys.readouterr().out
    assert rc == 0 and "|arlm_local_choice|" in text and "acc" in text


@pytest.mark.parametrize("argv, says", [
    # one call for both (looking a name up among lm-eval's own tasks indexes them all: seconds)
    (["--tasks", "no_such_task_xyz,arlm_local_choise"],
     "unknown lm-eval task(s) 'no_such_task_xyz', 'arlm_local_choise' (did you mean arlm_local_choice"),
    (["--tasks", ","], "--tasks needs task names"),
    (["--tasks", "arlm_local_choice", "--max-batches", "3"], "--max-batches scores text"),
    (["--tasks", "arlm_local_choice", "--limit", "0"], "--limit must be > 0"),
    (["--tasks", "arlm_local_choice", "--num-fewshot", "-1"], "--num-fewshot must be >= 0"),
    (["--limit", "5"], "--limit goes with --tasks"),
])
def test_eval_tasks_errors_are_clear(run_dir, tmp_path, capsys, argv, says):
    tasks = write_tasks(tmp_path / "tasks")
    rc = cli_main(["eval", str(run_dir), "--include-path", str(tasks), *argv] if "--tasks" in argv
                  else ["eval", str(run_dir), *argv])
    assert rc == 2
    assert says in capsys.readouterr().err


def test_a_missing_eval_extra_says_how_to_install_it(monkeypatch, run_dir, capsys):
    monkeypatch.delitem(sys.modules, "arlm.evaluation.lm_eval")
    monkeypatch.setitem(sys.modules, "lm_eval.api.model", None)  # as if lm-eval were not installed
    with pytest.raises(ImportError, match=r"pip install 'arlm\[eval\]'"):
        import arlm.evaluation.lm_eval  # noqa: F401
    assert cli_main(["eval", str(run_dir), "--tasks", "anything"]) == 2
    assert "pip install 'arlm[eval]'" in capsys.readouterr().err
