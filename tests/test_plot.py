"""arlm plot: curves read from metrics.jsonl, the image written, clear errors for what is not a run."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from conftest import write_corpus
from matplotlib.image import imread

from arlm.cli.main import main as cli_main
from arlm.config import RunConfig
from arlm.plot import draw, ema, plot_runs, read_curves
from arlm.run import RunError
from arlm.training import train
from arlm.training.metrics import read_metrics


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("plot")
    cfg = RunConfig.from_dict({
        "model": dict(max_seq_len=16, dim=32, depth=1, heads=2),
        "data": dict(path=str(write_corpus(root / "corpus.txt"))),
        "train": dict(batch_size=4, max_steps=12, warmup_steps=2, eval_every=4, eval_batches=2, ckpt_every=0,
                      sample_tokens=4, keep_last=2, progress=False),
    })
    train(cfg, root / "run", log=lambda m: None)
    return root / "run"


def fake_run(path, n_steps, val_every=0, null_at=()):
    """A folder with a hand-written metrics.jsonl (all that plot reads)."""
    path.mkdir(parents=True)
    lines = []
    for s in range(1, n_steps + 1):
        lines.append({"step": s, "loss": None if s in null_at else 5.0 / s, "lr": 1e-3, "grad_norm": 1.0,
                      "tokens_per_sec": 1000.0 + s, "elapsed_s": s, "mfu": None, "tokens": 64 * s,
                      "skipped": s in null_at})
        if val_every and s % val_every == 0:
            lines.append({"step": s, "val_loss": 4.0 / s, "val_bpb": 6.0 / s, "val_ppl": 1.0, "elapsed_s": s})
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    return path


def test_curves_are_the_metrics_of_the_run(trained):
    c = read_curves(trained)
    records = read_metrics(trained / "metrics.jsonl")
    steps = [r for r in records if "loss" in r]
    vals = [r for r in records if "val_loss" in r]
    assert c.label == "run"
    assert c.step.tolist() == [r["step"] for r in steps] == list(range(1, 13))
    assert c.loss.tolist() == [r["loss"] for r in steps]
    assert c.tokens.tolist() == [r["tokens"] for r in steps]
    assert c.val_step.tolist() == [4, 8, 12] and c.val_bpb.tolist() == [r["val_bpb"] for r in vals]
    assert c.val_x("tokens").tolist() == [steps[3]["tokens"], steps[7]["tokens"], steps[11]["tokens"]]


def test_ema_is_debiased_and_skips_nulls():
    assert ema(np.full(5, 3.0), 0.9) == pytest.approx(np.full(5, 3.0))  # no pull towards 0 at the start
    out = ema(np.array([1.0, math.nan, 3.0]), 0.5)
    assert out[0] == 1.0 and math.isnan(out[1]) and out[2] == pytest.approx((0.25 * 1 + 0.5 * 3) / 0.75)
    assert ema(np.array([1.0, 5.0]), 0.0).tolist() == [1.0, 5.0]


def test_plot_writes_an_image_of_several_runs(trained, tmp_path, capsys):
    other = fake_run(tmp_path / "other", 12, val_every=6, null_at={3})
    out = tmp_path / "figs" / "curves.png"
    assert cli_main(["plot", str(trained), str(other), "--out", str(out)]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    img = imread(out)
    assert img.shape[:2] == (960, 1440)
    by_tokens = tmp_path / "tokens.png"
    assert cli_main(["plot", str(trained), str(other), "--out", str(by_tokens), "--x", "tokens"]) == 0
    assert imread(by_tokens).shape == img.shape and not np.array_equal(imread(by_tokens), img)
    one_run = tmp_path / "one.png"
    plot_runs([trained], one_run)
    assert not np.array_equal(imread(one_run), img)  # the second run's curves are drawn


def test_each_run_is_drawn_in_its_own_colour_against_step_or_tokens(trained, tmp_path):
    from matplotlib.figure import Figure

    runs = [read_curves(trained), read_curves(fake_run(tmp_path / "other", 12, val_every=6, null_at={3}))]
    for x in ("step", "tokens"):
        fig = Figure()
        draw(fig, runs, x=x, smoothing=0.5)
        loss, val, bpb, tps = fig.axes
        assert [t.get_text() for t in loss.get_legend().get_texts()] == ["run", "other"]
        for i, c in enumerate(runs):
            raw, smooth = loss.get_lines()[2 * i: 2 * i + 2]
            assert raw.get_color() == smooth.get_color() == f"C{i}" and raw.get_alpha() < 1
            np.testing.assert_array_equal(raw.get_xdata(), c.x(x))
            np.testing.assert_array_equal(raw.get_ydata(), c.loss)
            np.testing.assert_array_equal(smooth.get_ydata(), ema(c.loss, 0.5))
            np.testing.assert_array_equal(tps.get_lines()[2 * i].get_ydata(), c.tokens_per_sec)
            np.testing.assert_array_equal(val.get_lines()[i].get_xdata(), c.val_x(x))
            np.testing.assert_array_equal(val.get_lines()[i].get_ydata(), c.val_loss)
            np.testing.assert_array_equal(bpb.get_lines()[i].get_ydata(), c.val_bpb)
        assert bpb.get_xlabel() == ("step" if x == "step" else "tokens seen") and loss.get_title()


def test_a_run_without_validation_still_plots(tmp_path):
    run = fake_run(tmp_path / "noval", 5)
    assert read_curves(run).val_step.size == 0
    out = plot_runs([run], tmp_path / "noval.svg")
    assert out.read_text().lstrip().startswith("<?xml") and "no values logged" in out.read_text()


def test_runs_with_the_same_folder_name_are_told_apart(tmp_path):
    a, b = fake_run(tmp_path / "a" / "run", 3), fake_run(tmp_path / "b" / "run", 3)
    svg = plot_runs([a, b], tmp_path / "two.svg").read_text()
    assert str(a) in svg and str(b) in svg


def not_a_run(tmp_path, kind):
    if kind == "missing":
        return tmp_path / "missing"
    path = tmp_path / kind
    path.mkdir()
    if kind == "no steps yet":
        (path / "metrics.jsonl").write_text(json.dumps({"step": 0, "val_loss": 5.0, "val_bpb": 7.0}) + "\n")
    return path


@pytest.mark.parametrize("kind, says", [
    ("missing", "is not a folder"), ("empty", "no metrics.jsonl"), ("no steps yet", "no training step yet"),
])
def test_a_path_that_is_not_a_run_is_a_clear_error(tmp_path, capsys, kind, says):
    path = not_a_run(tmp_path, kind)
    with pytest.raises(RunError, match=says):
        read_curves(path)
    assert cli_main(["plot", str(path), "--out", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("arlm: error: ") and says in err
    assert not (tmp_path / "x.png").exists()


def test_bad_options_are_refused(trained, tmp_path, capsys):
    assert cli_main(["plot", str(trained), "--out", str(tmp_path / "x.txt")]) == 2
    assert "image format" in capsys.readouterr().err
    assert cli_main(["plot", str(trained), "--out", str(tmp_path / "x.png"), "--smooth", "1"]) == 2
    assert "--smooth" in capsys.readouterr().err
    assert cli_main(["plot", str(trained), "--out", str(tmp_path / "x.png"), "--x", "time"]) == 2
    assert cli_main(["plot", str(trained)]) == 2  # --out is required
