"""Corpora, splits, the training sampler and eval windows."""

import gzip

import numpy as np
import pytest
import torch

from arlm.data import (
    ChunkSampler,
    DataError,
    default_corpus,
    eval_batches,
    load_corpus,
    split_tokens,
)
from arlm.data import corpus as corpus_module
from arlm.tokenizers import BPETokenizer, ByteTokenizer

# ---- corpora --------------------------------------------------------------------------------


def test_default_corpus_is_large_and_deterministic():
    data = load_corpus(None)
    assert 200_000 <= len(data) <= 2_000_000
    assert data == load_corpus("default") == load_corpus("builtin") == default_corpus()
    assert b"# ---- argparse.py ----" in data


def test_default_corpus_falls_back_to_any_stdlib_sources(monkeypatch):
    monkeypatch.setattr(corpus_module, "DEFAULT_MODULES", ("no_such_module.py",))
    assert len(default_corpus()) >= 200_000


def test_default_corpus_without_sources_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setattr(corpus_module, "stdlib_dir", lambda: tmp_path)
    with pytest.raises(DataError, match=str(tmp_path)):
        default_corpus()


def test_load_file_and_gzip(tmp_path):
    (tmp_path / "a.txt").write_bytes(b"plain \xff bytes")
    (tmp_path / "b.txt.gz").write_bytes(gzip.compress(b"zipped text"))
    assert load_corpus(str(tmp_path / "a.txt")) == b"plain \xff bytes"
    assert load_corpus(tmp_path / "b.txt.gz") == b"zipped text"


def test_load_directory_takes_text_files_in_order(tmp_path):
    files = {
        "b.md": b"B",
        "a.txt": b"A",
        "sub/c.py": b"C",
        "sub/d.txt.gz": gzip.compress(b"D"),
        "image.png": b"\x89PNG",
        ".hidden.txt": b"hidden",
        ".git/e.txt": b"git",
        "notes.TXT": b"N",
    }
    for name, data in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(data)
    assert load_corpus(tmp_path) == b"A\nB\nN\nC\nD"


def test_missing_empty_and_broken_corpora_name_the_path(tmp_path):
    with pytest.raises(DataError, match="nowhere.txt"):
        load_corpus(tmp_path / "nowhere.txt")
    (tmp_path / "empty.txt").write_bytes(b"")
    with pytest.raises(DataError, match="empty.txt.*empty"):
        load_corpus(tmp_path / "empty.txt")
    (tmp_path / "bad.txt.gz").write_bytes(b"not gzip")
    with pytest.raises(DataError, match="bad.txt.gz"):
        load_corpus(tmp_path / "bad.txt.gz")
    (tmp_path / "only_binary").mkdir()
    (tmp_path / "only_binary" / "x.bin").write_bytes(b"\x00")
    with pytest.raises(DataError, match="only_binary.*empty"):
        load_corpus(tmp_path / "only_binary")
    with pytest.raises(DataError, match="/dev/null is not a regular file or folder"):
        load_corpus("/dev/null")  # exists, so "does not exist" would mislead


# ---- splits ---------------------------------------------------------------------------------

TEXT = ("Some words repeat, some words differ: ünïcode too. " * 200).encode()


@pytest.mark.parametrize("tok", [ByteTokenizer(), BPETokenizer.train(TEXT, 300)], ids=str)
def test_split_is_deterministic_and_covers_every_token(tok):
    splits = split_tokens(TEXT, tok, val_fraction=0.1, min_len=9)
    again = split_tokens(TEXT, tok, val_fraction=0.1, min_len=9)
    everything = tok.encode_bytes(TEXT)
    assert np.array_equal(np.concatenate([splits.train, splits.val]), everything)
    assert np.array_equal(splits.val, again.val)
    assert len(splits.train) == int(len(everything) * 0.9)
    assert splits.train_bytes + splits.val_bytes == len(TEXT)
    assert splits.val_bytes == len(tok.token_bytes(splits.val))
    assert splits.val_bytes_per_token == pytest.approx(splits.val_bytes / len(splits.val))


def test_split_byte_counts_are_the_original_bytes_when_bpe_replaces_some():
    """Text that is not UTF-8: BPE reads each bad sequence as U+FFFD (3 bytes), but the splits
    count the corpus's own bytes, and the validation bytes are exactly the corpus's tail."""
    bad = b"".join(b"line %d caf\xe9 \xff\xfe end\n" % i if i % 3 else b"clean line %d\n" % i for i in range(400))
    tok = BPETokenizer.train(bad, 300)
    splits = split_tokens(bad, tok, val_fraction=0.1, min_len=9)
    spans = tok.replaced_spans(bad)
    assert splits.replaced_bytes == sum(e - s for s, e in spans) == 3 * 266  # \xe9, \xff, \xfe on 266 lines
    assert splits.train_bytes + splits.val_bytes == len(bad)
    tail = bad[len(bad) - splits.val_bytes:]
    assert tail.decode("utf-8", "replace").encode() == tok.token_bytes(splits.val)
    assert splits.val_bytes < len(tok.token_bytes(splits.val))  # each replaced byte grew to 3
    assert split_tokens(TEXT, tok, val_fraction=0.1, min_len=9).replaced_bytes == 0


def test_split_byte_counts_are_exact_for_bytes():
    splits = split_tokens(b"0123456789", ByteTokenizer(), val_fraction=0.3, min_len=2)
    assert (splits.train_bytes, splits.val_bytes) == (7, 3)
    assert splits.val_bytes_per_token == 1.0


def test_too_small_corpus_error_gives_the_numbers():
    with pytest.raises(DataError) as err:
        split_tokens(b"x" * 100, ByteTokenizer(), val_fraction=0.1, min_len=65)
    message = str(err.value)
    for expected in ["100 tokens", "90 train", "10 validation", "65", "650", "data.seq_len"]:
        assert expected in message


# ---- training sampler -----------------------------------------------------------------------

TOKENS = np.arange(1000, dtype=np.uint16)


def _take(sampler, n):
    return [sampler.next_batch() for _ in range(n)]


def test_sampler_batches_are_real_windows():
    batch = ChunkSampler(TOKENS, seq_len=16, batch_size=4, seed=0).next_batch()
    assert batch.shape == (4, 17) and batch.dtype == torch.int64
    assert torch.equal(batch - batch[:, :1], torch.arange(17).expand(4, 17))


def test_sampler_reaches_both_ends_and_never_past_them():
    tokens = np.arange(10, dtype=np.uint16)
    first = torch.cat(_take(ChunkSampler(tokens, seq_len=8, batch_size=8, seed=1), 20))[:, 0]
    assert set(first.tolist()) == {0, 1}  # the only starts whose window fits
    only = ChunkSampler(tokens[:9], seq_len=8, batch_size=2, seed=1).next_batch()
    assert torch.equal(only, torch.arange(9).expand(2, 9))


def test_sampler_is_deterministic_per_seed():
    a = torch.stack(_take(ChunkSampler(TOKENS, 8, 4, seed=3), 3))
    b = torch.stack(_take(ChunkSampler(TOKENS, 8, 4, seed=3), 3))
    c = torch.stack(_take(ChunkSampler(TOKENS, 8, 4, seed=4), 3))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert not torch.equal(a[0], a[1])  # batches differ from step to step


def test_sampler_resume_equals_uninterrupted():
    whole = _take(ChunkSampler(TOKENS, 8, 4, seed=5), 6)
    first = ChunkSampler(TOKENS, 8, 4, seed=5)
    _take(first, 5)
    state = first.state_dict()
    assert state == {"seed": 5, "batches": 5}
    resumed = ChunkSampler(TOKENS, 8, 4, seed=999)
    resumed.load_state_dict(state)
    assert torch.equal(next(iter(resumed)), whole[5])


def test_sampler_ranks_split_the_single_process_batch():
    single = _take(ChunkSampler(TOKENS, 8, 6, seed=7), 3)
    rank0 = _take(ChunkSampler(TOKENS, 8, 3, seed=7, rank=0, world_size=2), 3)
    rank1 = _take(ChunkSampler(TOKENS, 8, 3, seed=7, rank=1, world_size=2), 3)
    for s, r0, r1 in zip(single, rank0, rank1):
        assert not torch.equal(r0, r1)
        assert torch.equal(torch.cat([r0, r1]), s)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(seq_len=0), "seq_len"),
        (dict(batch_size=0), "batch_size"),
        (dict(seq_len=1000), "1000 tokens"),
        (dict(rank=2, world_size=2), "rank"),
        (dict(seed=-1), "seed"),
    ],
)
def test_sampler_rejects_bad_arguments(kwargs, match):
    args = dict(tokens=TOKENS, seq_len=8, batch_size=2, seed=0) | kwargs
    with pytest.raises(ValueError, match=match):
        ChunkSampler(**args)


# ---- eval windows ---------------------------------------------------------------------------


def test_eval_batches_tile_the_split():
    tokens = np.arange(100, dtype=np.uint16)
    batches = list(eval_batches(tokens, seq_len=10, batch_size=4, max_batches=None))
    rows = torch.cat(batches)
    assert [len(b) for b in batches] == [4, 4, 1]  # (100 - 1) // 10 = 9 windows
    assert torch.equal(rows[:, 0], torch.arange(0, 90, 10))
    assert torch.equal(rows[1:, 0], rows[:-1, -1])  # neighbours share exactly one token
    assert torch.equal(rows - rows[:, :1], torch.arange(11).expand(9, 11))
    assert rows.dtype == torch.int64


def test_eval_batches_limit_and_minimum():
    tokens = np.arange(100, dtype=np.uint16)
    assert len(list(eval_batches(tokens, 10, 2, max_batches=3))) == 3
    assert torch.cat(list(eval_batches(tokens, 10, 2, max_batches=3)))[-1, 0] == 50
    (only,) = eval_batches(tokens[:11], 10, 8, max_batches=5)
    assert torch.equal(only, torch.arange(11)[None])
    with pytest.raises(ValueError, match="10 tokens"):
        list(eval_batches(tokens[:10], 10, 8, max_batches=5))
