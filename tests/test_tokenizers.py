"""Tokenizers: exact round trips, streaming = whole decoding, save/load, HF compatibility, errors."""

import json

import numpy as np
import pytest
import tokenizers
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from arlm.tokenizers import BPETokenizer, ByteTokenizer, build_tokenizer, load_tokenizer
from arlm.tokenizers.bpe import text_chunks

SAMPLE = (
    "def greet(name):\n    return f'Hello, {name}!'\n\n"
    "Ünïcödé tëxt, 日本語のテキスト, emoji 🙂🚀, and plain English prose.\n"
    "The quick brown fox jumps over the lazy dog. 0123456789 != 42\n"
) * 40
FAST = settings(max_examples=150, deadline=None)


@pytest.fixture(scope="module")
def bpe():
    return BPETokenizer.train(SAMPLE, vocab_size=400)


def _pieces(ids, cuts):
    """``ids`` cut at the given positions."""
    bounds = [0, *sorted(c % (len(ids) + 1) for c in cuts), len(ids)]
    return [ids[a:b] for a, b in zip(bounds, bounds[1:])]


# ---- byte tokenizer -------------------------------------------------------------------------


@FAST
@given(st.binary(max_size=300))
def test_byte_round_trips_any_bytes(data):
    tok = ByteTokenizer()
    ids = tok.encode_bytes(data)
    assert ids.dtype == np.uint16 and ids.tolist() == list(data)
    assert tok.token_bytes(ids) == data
    assert tok.decode(ids) == data.decode("utf-8", errors="replace")


@FAST
@given(st.text(max_size=100))
def test_byte_encode_is_utf8(text):
    tok = ByteTokenizer()
    assert tok.encode(text) == list(text.encode("utf-8"))
    assert tok.decode(tok.encode(text)) == text


def test_decode_accepts_lists_arrays_and_tensors():
    tok = ByteTokenizer()
    ids = list("héllo".encode())
    assert tok.decode(ids) == tok.decode(np.array(ids)) == tok.decode(torch.tensor(ids)) == "héllo"
    assert tok.decode([]) == ""


@pytest.mark.parametrize("bad", [256, -1, 10_000])
def test_out_of_range_id_is_a_clear_error(bad):
    with pytest.raises(ValueError, match=rf"{bad}.*\[0, 256\)"):
        ByteTokenizer().decode([65, bad])


def test_out_of_range_id_bpe(bpe):
    with pytest.raises(ValueError, match=rf"{bpe.vocab_size}.*\[0, {bpe.vocab_size}\)"):
        bpe.decode([0, bpe.vocab_size])


# ---- BPE ------------------------------------------------------------------------------------


def test_bpe_trains_merges_and_compresses(bpe):
    assert bpe.kind == "bpe" and 300 < bpe.vocab_size <= 400
    assert len(bpe.encode(SAMPLE)) < len(SAMPLE.encode()) / 2


@FAST
@given(st.text(max_size=200))
def test_bpe_round_trips_any_text(bpe, text):
    assert bpe.decode(bpe.encode(text)) == text


@FAST
@given(st.binary(max_size=200))
def test_bpe_encode_bytes_replaces_invalid_utf8(bpe, data):
    ids = bpe.encode_bytes(data)
    assert ids.dtype == np.uint16
    assert bpe.decode(ids) == data.decode("utf-8", errors="replace")


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from(list(" \t\n\r\x0b\x1cab1!'é日")), max_size=60),
       st.integers(1, 6))
@example("a \n\nb", 1)  # a whitespace run is one piece up to its last character
@example("!\x1c!", 1)  # Python calls \x1c whitespace, the pre-tokenizer does not
def test_bpe_chunked_encoding_equals_whole(bpe, text, chunk):
    """Cutting a corpus into pieces for speed must not change a single id."""
    chunks = list(text_chunks(text, chunk))
    assert "".join(chunks) == text
    split = bpe.to_hf().pre_tokenizer.pre_tokenize_str
    assert [p for c in chunks for p, _ in split(c)] == [p for p, _ in split(text)]
    assert bpe.encode_bytes(text.encode(), chunk_chars=chunk).tolist() == bpe.encode(text)


def test_bpe_training_is_deterministic_and_handles_any_input():
    a = BPETokenizer.train(SAMPLE, 300).to_hf().to_str()
    b = BPETokenizer.train(SAMPLE.encode() + b"\xff\xfe", 300).to_hf().to_str()
    c = BPETokenizer.train(SAMPLE.splitlines(keepends=True), 300).to_hf().to_str()
    assert a == BPETokenizer.train(SAMPLE, 300).to_hf().to_str()
    assert json.loads(a)["model"]["merges"] and json.loads(b)["model"]["merges"]
    assert json.loads(c)["model"]["merges"]


def test_bpe_small_corpus_keeps_actual_vocab_size():
    tok = BPETokenizer.train("ab", 5000)
    assert 256 <= tok.vocab_size < 5000
    assert tok.decode(tok.encode("zebra 🦓")) == "zebra 🦓"


def test_bpe_vocab_size_must_leave_room_for_merges():
    with pytest.raises(ValueError, match="257"):
        BPETokenizer.train(SAMPLE, 256)


def test_build_tokenizer():
    assert build_tokenizer("byte", b"abc", 1000).kind == "byte"
    assert build_tokenizer("bpe", SAMPLE.encode(), 300).vocab_size == 300
    with pytest.raises(ValueError, match="byte, bpe"):
        build_tokenizer("wordpiece", b"abc", 1000)


# ---- streaming ------------------------------------------------------------------------------


@FAST
@given(st.lists(st.integers(0, 255), max_size=60), st.lists(st.integers(0, 100), max_size=8))
def test_byte_stream_decoder_equals_decode(ids, cuts):
    tok = ByteTokenizer()
    stream = tok.stream_decoder()
    text = "".join(stream.push(p) for p in _pieces(ids, cuts)) + stream.flush()
    assert text == tok.decode(ids)


@FAST
@given(st.data())
def test_bpe_stream_decoder_equals_decode(bpe, data):
    ids = data.draw(st.lists(st.integers(0, bpe.vocab_size - 1), max_size=40))
    cuts = data.draw(st.lists(st.integers(0, 100), max_size=8))
    stream = bpe.stream_decoder()
    text = "".join(stream.push(p) for p in _pieces(ids, cuts)) + stream.flush()
    assert text == bpe.decode(ids)


def test_stream_decoder_holds_back_incomplete_characters():
    stream = ByteTokenizer().stream_decoder()
    snowman = list("☃".encode())
    assert stream.push([104, snowman[0]]) == "h"
    assert stream.push(snowman[1:2]) == ""
    assert stream.push(snowman[2:]) == "☃"
    assert stream.push([0xE2]) == ""
    assert stream.flush() == "\ufffd"
    assert stream.push([105]) == "i"


# ---- save / load ----------------------------------------------------------------------------


def test_byte_save_load_and_hf_compatibility(tmp_path):
    path = ByteTokenizer().save(tmp_path / "sub" / "tokenizer.json")
    loaded = load_tokenizer(path)
    assert isinstance(loaded, ByteTokenizer)
    assert isinstance(load_tokenizer(tmp_path / "sub"), ByteTokenizer)
    hf = tokenizers.Tokenizer.from_file(str(path))
    for text in ["Hello, world!", "tab\tand  spaces\n", "héllo ☃ 🙂"]:
        assert hf.encode(text).ids == list(text.encode())
        assert hf.decode(list(text.encode())) == text


def test_bpe_save_load_gives_identical_encodings(bpe, tmp_path):
    path = bpe.save(tmp_path / "tokenizer.json")
    loaded = load_tokenizer(path)
    assert isinstance(loaded, BPETokenizer) and loaded.vocab_size == bpe.vocab_size
    text = SAMPLE[:500] + "unseen wörds ✓"
    assert loaded.encode(text) == bpe.encode(text)
    assert loaded.decode(bpe.encode(text)) == text
    assert tokenizers.Tokenizer.from_file(str(path)).encode(text).ids == bpe.encode(text)


def test_load_missing_or_corrupt_tokenizer_names_the_path(tmp_path):
    missing = tmp_path / "nope.json"
    with pytest.raises(FileNotFoundError, match="nope.json"):
        load_tokenizer(missing)
    corrupt = tmp_path / "corrupt.json"
    corrupt.write_text('{"model": {"type": "BPE", "vocab": ')
    with pytest.raises(ValueError, match="corrupt.json"):
        load_tokenizer(corrupt)
    other = tmp_path / "wordlevel.json"
    other.write_text(json.dumps({"model": {"type": "WordLevel", "vocab": {}}}))
    with pytest.raises(ValueError, match="wordlevel.json.*WordLevel"):
        load_tokenizer(other)


# ---- vocabulary fingerprints ----------------------------------------------------------------


def test_fingerprint_names_the_vocabulary_not_just_its_size(bpe, tmp_path):
    small = BPETokenizer.train(SAMPLE, vocab_size=300)
    other = BPETokenizer.train(SAMPLE[::-1], vocab_size=300)  # same size, other merges
    assert other.vocab_size == small.vocab_size == 300 and other.fingerprint != small.fingerprint
    assert load_tokenizer(bpe.save(tmp_path / "t.json")).fingerprint == bpe.fingerprint
    assert BPETokenizer.train(SAMPLE, vocab_size=400).fingerprint == bpe.fingerprint  # deterministic
    byte = ByteTokenizer()
    assert load_tokenizer(byte.save(tmp_path / "b.json")).fingerprint == byte.fingerprint != bpe.fingerprint


def test_generate_refuses_a_draft_or_amateur_run_with_another_vocabulary(tmp_path, capsys):
    """Two BPE runs with the same vocabulary size but different merges: generate used to accept
    them as draft or amateur (it compared kind and size) and mixed unrelated tokens."""
    from arlm.cli.main import main
    from conftest import make_corpus

    runs = []
    for seed in (0, 1):
        (tmp_path / f"c{seed}.txt").write_text(make_corpus(6000, seed=seed) + SAMPLE[:2000] * (1 + seed))
        out = tmp_path / f"run{seed}"
        assert main(["train", "--preset", "tiny", "--data", str(tmp_path / f"c{seed}.txt"), "--out", str(out),
                     "--tokenizer", "bpe", "--data.bpe_vocab_size", "300", "--max-steps", "1", "--no-progress",
                     "--train.eval_every", "0", "--train.sample_tokens", "1"]) == 0
        runs.append(out)
    capsys.readouterr()
    toks = [load_tokenizer(r / "tokenizer.json") for r in runs]
    assert toks[0].vocab_size == toks[1].vocab_size == 300 and toks[0].fingerprint != toks[1].fingerprint
    for flag in ("--draft", "--amateur"):
        assert main(["generate", str(runs[0]), "--prompt", "the", "--max-new-tokens", "3", flag, str(runs[1])]) == 2
        err = capsys.readouterr().err
        assert f"{flag} {runs[1]} uses a different vocabulary" in err and toks[1].fingerprint[:12] in err
    assert main(["generate", str(runs[0]), "--prompt", "the", "--max-new-tokens", "3", "--temperature", "0",
                 "--amateur", str(runs[0])]) == 0  # the same vocabulary is accepted
