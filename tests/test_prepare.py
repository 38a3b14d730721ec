"""arlm prepare: token shards from any source, round trips, determinism, and training from shards."""

import gzip
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import LIVE_INIT, TORCHRUN, write_corpus

from arlm.cli.main import main
from arlm.config import RunConfig
from arlm.data import ChunkSampler, DataError, ShardedTokens, eval_batches, open_prepared, open_training_data, prepare
from arlm.data import preparation
from arlm.data.preparation import SEPARATOR_BYTE, is_val
from arlm.data.shards import SIDECAR, ShardWriter
from arlm.tokenizers import load_tokenizer
from arlm.training import train
from arlm.training.metrics import read_metrics

QUIET = dict(progress=False, log=lambda m: None)
# text beyond ASCII, so a document cut or a split inside a UTF-8 character would show
EXTRA = "naïve café — Ωmega ünïcode 東京\n"


def _source(tmp_path, n_bytes=24_000, seed=0) -> Path:
    path = write_corpus(tmp_path / f"src{seed}.txt", n_bytes, seed)
    path.write_text(path.read_text() + "\n" + EXTRA * 40)
    return path


def _documents(folder: Path) -> list[bytes]:
    """The prepared folder's documents in source order: both splits decoded, cut at the
    separator, and interleaved back by the split rule."""
    meta = json.loads((folder / SIDECAR).read_text())
    tok = load_tokenizer(folder / "tokenizer.json")
    data = open_prepared(folder)
    sep = meta["separator"]["id"]
    per_split = {}
    for split in ("train", "val"):
        ids = np.asarray(getattr(data, split)[:])
        assert ids[-1] == sep  # every document is followed by the separator
        cuts = np.flatnonzero(ids == sep)
        per_split[split] = [tok.token_bytes(d) for d in np.split(ids, cuts + 1)[:-1]]
        per_split[split] = [d[:-1] if tok.kind == "byte" else d[: -len("<|endoftext|>")] for d in per_split[split]]
    docs, f = [], meta["val_fraction"]
    for i in range(meta["documents"]):
        docs.append(per_split["val" if is_val(i, f) else "train"].pop(0))
    assert not per_split["train"] and not per_split["val"]
    return docs


# ---- the format and round trips -----------------------------------------------------------------


@pytest.mark.parametrize("kind", ["byte", "bpe"])
def test_text_round_trip_across_shards(tmp_path, kind):
    src = _source(tmp_path)
    meta = prepare(src, tmp_path / "p", tokenizer=kind, bpe_vocab_size=300, val_fraction=0.2, workers=1,
                   doc_bytes=1000, shard_tokens=2000, **QUIET)
    assert len(meta["splits"]["train"]["shards"]) > 2  # the round trip crosses shard boundaries
    assert meta["dtype"] == "uint16" and meta["tokenizer"]["kind"] == kind
    assert b"".join(_documents(tmp_path / "p")) == src.read_bytes()
    # byte counts are the text's, separators excluded: they are what bits per byte divides by
    splits = meta["splits"]
    assert splits["train"]["bytes"] + splits["val"]["bytes"] == src.stat().st_size
    assert all(s["bytes"] == sum(x["bytes"] for x in s["shards"]) for s in splits.values())
    raw = (tmp_path / "p" / "train-00000.bin").read_bytes()
    first = np.frombuffer(raw, dtype="<u2")
    assert len(raw) == 2 * 2000 and first.max() < meta["tokenizer"]["vocab_size"]
    if kind == "byte":
        assert meta["separator"]["byte"] == SEPARATOR_BYTE == first[np.flatnonzero(first == 255)[0]]
        # a gzipped copy is the same documents, so the same shards
        (tmp_path / "src.txt.gz").write_bytes(gzip.compress(src.read_bytes()))
        prepare(tmp_path / "src.txt.gz", tmp_path / "gz", val_fraction=0.2, workers=1, doc_bytes=1000,
                shard_tokens=2000, **QUIET)
        for shard in splits["train"]["shards"] + splits["val"]["shards"]:
            assert (tmp_path / "gz" / shard["file"]).read_bytes() == (tmp_path / "p" / shard["file"]).read_bytes()


def test_workers_give_byte_identical_shards(tmp_path):
    src = _source(tmp_path, 40_000)
    for w in (1, 2):
        prepare(src, tmp_path / f"w{w}", tokenizer="bpe", bpe_vocab_size=320, workers=w, doc_bytes=700,
                shard_tokens=3000, chunk_bytes=2500, **QUIET)
    files = sorted(p.name for p in (tmp_path / "w1").glob("*.bin"))
    assert len(files) > 4 and files == sorted(p.name for p in (tmp_path / "w2").glob("*.bin"))
    for name in files:
        assert (tmp_path / "w1" / name).read_bytes() == (tmp_path / "w2" / name).read_bytes(), name
    m1, m2 = (json.loads((tmp_path / w / SIDECAR).read_text()) for w in ("w1", "w2"))
    assert m1["splits"] == m2["splits"] and m1["tokenizer"] == m2["tokenizer"]


def test_jsonl_gz_folder_and_parquet_and_saved_dataset_sources(tmp_path):
    texts = [f"document {i}: " + "word " * (i % 7) + EXTRA for i in range(30)]
    records = [json.dumps({"id": i, "text": t}) for i, t in enumerate(texts)]
    (tmp_path / "docs.jsonl").write_text("\n".join(records[:20]) + "\n\n")
    with gzip.open(tmp_path / "more.jsonl.gz", "wt") as f:
        f.write("\n".join(records[20:]))
    folder = tmp_path / "folder"
    folder.mkdir()
    shutil.copy(tmp_path / "docs.jsonl", folder / "a.jsonl")
    shutil.copy(tmp_path / "more.jsonl.gz", folder / "b.jsonl.gz")
    prepare(folder, tmp_path / "j", val_fraction=0.25, workers=1, **QUIET)
    assert _documents(tmp_path / "j") == [t.encode() for t in texts]

    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"body": texts, "n": list(range(30))}), tmp_path / "docs.parquet", row_group_size=7)
    prepare(tmp_path / "docs.parquet", tmp_path / "pq", tokenizer="bpe", bpe_vocab_size=300, val_fraction=0.25,
            text_field="body", workers=2, **QUIET)
    assert _documents(tmp_path / "pq") == [t.encode() for t in texts]
    datasets.Dataset.from_dict({"text": texts}).save_to_disk(str(tmp_path / "saved"))
    prepare(tmp_path / "saved", tmp_path / "hf", val_fraction=0.25, workers=1, **QUIET)
    assert _documents(tmp_path / "hf") == [t.encode() for t in texts]

    with pytest.raises(DataError, match=r"no 'body' field \(it has: id, text\)"):
        prepare(tmp_path / "docs.jsonl", tmp_path / "bad", text_field="body", **QUIET)
    with pytest.raises(DataError, match=r"no column 'text' \(it has: body, n\)"):
        prepare(tmp_path / "docs.parquet", tmp_path / "bad", **QUIET)
    assert not (tmp_path / "bad").exists()


def test_bad_options_and_existing_out_are_refused_before_work(tmp_path):
    src = _source(tmp_path)
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "keep.txt").write_text("mine")
    with pytest.raises(DataError, match="already exists"):
        prepare(src, tmp_path / "taken", **QUIET)
    assert (tmp_path / "taken" / "keep.txt").read_text() == "mine"
    with pytest.raises(DataError, match=r"val_fraction must be in \(0, 1\)"):
        prepare(src, tmp_path / "x", val_fraction=1.0, **QUIET)
    with pytest.raises(DataError, match=r"bpe_vocab_size must be in \[258"):
        prepare(src, tmp_path / "x", tokenizer="bpe", bpe_vocab_size=257, **QUIET)
    with pytest.raises(DataError, match="too few to split"):  # one 64 KiB document cannot be split
        prepare(src, tmp_path / "x", **QUIET)
    with pytest.raises(DataError, match="does not exist"):
        prepare(tmp_path / "nope.txt", tmp_path / "x", **QUIET)
    assert not (tmp_path / "x").exists() and not list(tmp_path.glob(".x.partial-*"))


def test_interrupted_prepare_leaves_no_folder_training_accepts(tmp_path, monkeypatch):
    src = _source(tmp_path)
    calls = []

    def interrupted(self, ids):
        calls.append(1)
        if len(calls) > 3:
            raise KeyboardInterrupt
        return real(self, ids)

    real = ShardWriter.write
    monkeypatch.setattr(ShardWriter, "write", interrupted)
    with pytest.raises(KeyboardInterrupt):
        prepare(src, tmp_path / "p", doc_bytes=500, chunk_bytes=1000, workers=1, **QUIET)
    assert not (tmp_path / "p").exists() and not list(tmp_path.glob(".p.partial-*"))
    # a folder of shards without its sidecar (a prepare killed before the rename) is refused
    monkeypatch.undo()
    prepare(src, tmp_path / "done", doc_bytes=500, workers=1, **QUIET)
    (tmp_path / "done" / SIDECAR).unlink()
    with pytest.raises(DataError, match="did not finish"):
        open_training_data(RunConfig().data.__class__(path=str(tmp_path / "done")), 16)


# ---- the memory-mapped view and the sampler -----------------------------------------------------


def test_sharded_view_slices_and_samples_like_one_array(tmp_path):
    rng = np.random.default_rng(0)
    flat = rng.integers(0, 60000, size=1000).astype("<u2")
    cuts = [0, 7, 7, 300, 301, 640, 1000]  # an empty shard and a one-token shard among them
    paths = []
    for i, (a, b) in enumerate(zip(cuts, cuts[1:])):
        paths.append(tmp_path / f"s{i}.bin")
        paths[-1].write_bytes(flat[a:b].tobytes())
    view = ShardedTokens(paths, np.dtype("<u2"))
    assert len(view) == 1000
    for a, b in [(0, 1000), (5, 9), (6, 302), (299, 641), (640, 1000), (999, 1000), (10, 10)]:
        assert np.array_equal(view[a:b], flat[a:b]), (a, b)
    whole = ChunkSampler(flat, 32, 4, seed=3, world_size=1)
    ranks = [ChunkSampler(view, 32, 2, seed=3, rank=r, world_size=2) for r in range(2)]
    for _ in range(5):  # each rank's share of the batch, as from one in-memory array
        batch = whole.next_batch()
        assert torch_equal(batch, np.concatenate([s.next_batch().numpy() for s in ranks]))
    assert all(torch_equal(a, b) for a, b in zip(eval_batches(view, 32, 4, None), eval_batches(flat, 32, 4, None)))


def torch_equal(a, b) -> bool:
    return np.array_equal(np.asarray(a), np.asarray(b))


# ---- training and evaluation from a prepared folder ----------------------------------------------


def _cfg(data, **train_overrides):
    t = dict(batch_size=4, max_steps=8, lr=3e-3, warmup_steps=2, eval_every=4, eval_batches=2, ckpt_every=0,
             sample_every=0, sample_tokens=4, keep_last=2, progress=False, schedule="constant")
    t.update(train_overrides)
    return RunConfig.from_dict({"model": dict(max_seq_len=16, dim=32, depth=1, heads=2), "data": {"path": str(data)},
                                "train": t})


def _losses(run):
    return [(r["step"], r["loss"]) for r in read_metrics(run / "metrics.jsonl") if "loss" in r]


def test_training_from_shards_resumes_exactly_and_refuses_another_tokenizer(tmp_path):
    data = tmp_path / "p"
    meta = prepare(_source(tmp_path), data, tokenizer="bpe", bpe_vocab_size=300, doc_bytes=1000, shard_tokens=1500,
                   workers=1, **QUIET)
    logs = []
    r = train(_cfg(data), tmp_path / "full", progress=False, log=logs.append)
    assert any("data.tokenizer='byte' -> 'bpe'" in m for m in logs)  # the folder's tokenizer is used and said so
    saved = RunConfig.from_yaml(tmp_path / "full" / "config.yaml")
    assert (saved.data.tokenizer, saved.data.bpe_vocab_size, saved.model.vocab_size) == ("bpe", 300, 300)
    # bits per byte divide by the sidecar's byte count of the validation split
    opened = open_training_data(saved.data, 16)
    assert opened.val_bytes == meta["splits"]["val"]["bytes"] and len(opened.val) == meta["splits"]["val"]["tokens"]
    val = [x for x in read_metrics(tmp_path / "full" / "metrics.jsonl") if "val_loss" in x][-1]
    assert val["val_bpb"] == pytest.approx(r.val_loss / np.log(2) / (opened.val_bytes / len(opened.val)))

    train(_cfg(data, max_steps=4), tmp_path / "split", **QUIET)
    train(_cfg(data, max_steps=8), tmp_path / "split", resume="auto", **QUIET)
    assert _losses(tmp_path / "split") == _losses(tmp_path / "full") and len(_losses(tmp_path / "full")) == 8

    # the folder prepared again from other text, with another BPE of the same size: refused on
    # resume (with the run's config or a new one) and in eval
    assert main(["eval", str(tmp_path / "full"), "--data", str(data), "--max-batches", "1", "--json"]) == 0
    shutil.rmtree(data)
    prepare(_source(tmp_path, seed=5), data, tokenizer="bpe", bpe_vocab_size=300, doc_bytes=1000, workers=1, **QUIET)
    for cfg in (None, _cfg(data, max_steps=10)):
        with pytest.raises(DataError, match="prepared with a different tokenizer"):
            train(cfg, tmp_path / "split", resume="auto", **QUIET)
    assert len(_losses(tmp_path / "split")) == 8  # nothing saved was touched
    assert main(["eval", str(tmp_path / "full"), "--data", str(data)]) == 2
    assert main(["eval", str(tmp_path / "full")]) == 2  # its own validation split is that folder too


def test_ddp_ranks_share_the_batches_from_shards(tmp_path):
    data = tmp_path / "p"
    prepare(_source(tmp_path), data, doc_bytes=1000, shard_tokens=700, workers=1, **QUIET)
    common = ["--preset", "tiny", "--data", str(data), "--no-progress", "--max-steps", "4",
              "--train.eval_every", "0", "--train.sample_every", "0"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for nproc, bs, name in ((None, "4", "one"), (2, "2", "ddp")):
        launcher = [TORCHRUN, "--standalone", f"--nproc_per_node={nproc}"] if nproc else [sys.executable]
        cmd = [*launcher, "-m", "arlm", "train", *common, "--train.batch_size", bs, "--out", str(tmp_path / name)]
        r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    one, two = _losses(tmp_path / "one"), _losses(tmp_path / "ddp")
    assert len(one) == len(two) == 4
    assert max(abs(a[1] - b[1]) for a, b in zip(one, two)) < 1e-4


def test_cli_prepare_then_train_and_errors(tmp_path, capsys):
    src = _source(tmp_path)
    out = tmp_path / "p"
    assert main(["prepare", str(src), "--out", str(out), "--doc-bytes", "2000", "--workers", "1",
                 "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert f"prepared {out}" in text and "val:" in text
    assert main(["prepare", str(src), "--out", str(out), "--no-progress"]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["prepare", str(src), "--out", str(tmp_path / "q"), "--workers", "0"]) == 2
    assert "--workers must be >= 1" in capsys.readouterr().err
    assert preparation.default_workers() >= 1


# ---- document masking ---------------------------------------------------------------------------


@pytest.mark.parametrize("options", [dict(pos_emb="rotary"), dict(pos_emb="absolute"),
                                     dict(pos_emb="none", pos_bias="alibi")])
def test_document_mask_gives_each_document_its_solo_logits(options):
    import torch

    from arlm.config import ModelConfig
    from arlm.data.dataset import document_inputs, document_positions
    from arlm.model import Transformer

    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=50, dim=32, depth=2, heads=2, max_seq_len=32, init=LIVE_INIT,
                                    **options)).eval()
    model.init_weights(torch.Generator().manual_seed(0))
    sep = 49
    a, b, c = torch.randint(0, 49, (1, 7)), torch.randint(0, 49, (1, 9)), torch.randint(0, 49, (1, 4))
    s = torch.tensor([[sep]])
    window = torch.cat((a, s, b, s, c), dim=1)  # three packed documents, each ended by the separator
    doc, pos = document_positions(window, sep)
    assert doc.tolist() == [[0] * 8 + [1] * 10 + [2] * 4]
    assert pos.tolist() == [list(range(8)) + list(range(10)) + list(range(4))]
    with torch.no_grad():
        packed = model(window, **document_inputs(window, sep))  # what training and evaluation pass
        alone = [model(torch.cat((a, s), 1)), model(torch.cat((b, s), 1)), model(c)]
        plain = model(window)
    torch.testing.assert_close(packed, torch.cat(alone, dim=1), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(plain[:, 8:18], alone[1], atol=1e-3)  # without the mask they differ
    with pytest.raises(ValueError, match="doc_ids"):
        model(window, input_pos=0, cache=model.new_cache(1, 32), doc_ids=doc)


def test_document_mask_trains_from_a_prepared_folder_only(tmp_path):
    src = _source(tmp_path)
    raw = _cfg(src, max_steps=2)
    raw.data.document_mask = True
    with pytest.raises(DataError, match="document_mask needs a prepared folder"):
        train(raw, tmp_path / "raw", **QUIET)
    assert not (tmp_path / "raw").exists()
    data = tmp_path / "p"
    prepare(src, data, doc_bytes=40, workers=1, **QUIET)  # documents of a line or two: many separators per window
    masked = _cfg(data, max_steps=3, eval_every=0)
    masked.data.document_mask = True
    train(masked, tmp_path / "masked", **QUIET)
    train(_cfg(data, max_steps=3, eval_every=0), tmp_path / "plain", **QUIET)
    m, p = _losses(tmp_path / "masked"), _losses(tmp_path / "plain")
    assert m[0][1] != p[0][1]  # the same batches, seen through the document mask
    assert main(["eval", str(tmp_path / "masked"), "--max-batches", "1"]) == 0
