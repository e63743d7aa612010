"""Text <-> token ids and the decoding rules (vit/text_codec.py): the tokenizer record and
folder, encoding with truncation, padding, batching, cutting at EOS and detokenizing; what
any decoder may generate when, on numpy arrays and torch tensors alike."""

from __future__ import annotations

import gzip
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import COMPAT, REPO, tiny_config
from tokenizers import Tokenizer, models

from vit.errors import DataError
from vit.text_codec import EOS, PAD, SPECIAL_TOKENS, UNK, DecodingRules, TextCodec, read_lines

TOKENIZER = COMPAT / "seq2seq_onnx" / "tokenizer.json"  # the release's joint BPE (read only)
SENTENCES = ["Der hund läuft schnell.", "Ein kind springt hier.", "Eine katze."]


@pytest.fixture(scope="module")
def codec() -> TextCodec:
    return TextCodec(Tokenizer.from_file(str(TOKENIZER)))


def per_language() -> TextCodec:
    """Two tokenizer objects (of the same vocabulary): a per-language codec."""
    text = TOKENIZER.read_text(encoding="utf-8")
    return TextCodec(Tokenizer.from_str(text), Tokenizer.from_str(text))


def test_special_ids_are_read_from_the_tokenizer(codec: TextCodec) -> None:
    assert SPECIAL_TOKENS == (PAD, "<bos>", EOS, UNK)
    assert codec.special_ids() == {"pad_id": 0, "bos_id": 1, "eos_id": 2}
    assert codec.joint and not per_language().joint
    with pytest.raises(DataError, match="lack the special tokens"):
        TextCodec(Tokenizer(models.BPE())).special_ids()


@pytest.mark.parametrize("joint", [True, False])
def test_record_round_trip(codec: TextCodec, joint: bool) -> None:
    original = codec if joint else per_language()
    record = original.to_record()
    assert set(record) == {"src_tokenizer", "tgt_tokenizer"}
    assert (record["tgt_tokenizer"] is None) is joint
    again = TextCodec.from_record({**record, "config": {"max_len": 9}})
    assert again.joint is joint and again.max_len == 9 and again.to_record() == record
    assert TextCodec.from_record(record).max_len is None
    assert TextCodec.from_record(record).encode(SENTENCES) == original.encode(SENTENCES)


@pytest.mark.parametrize("joint", [True, False])
def test_save_and_load_a_folder(codec: TextCodec, joint: bool, tmp_path: Path) -> None:
    original = codec if joint else per_language()
    original.save(tmp_path / "tok")
    names = {"tokenizer.json"} if joint else {"src_tokenizer.json", "tgt_tokenizer.json"}
    assert {p.name for p in (tmp_path / "tok").iterdir()} == names  # no temporary files left
    loaded = TextCodec.load(tmp_path / "tok", max_len=12)
    assert loaded.joint is joint and loaded.max_len == 12 and loaded.to_record() == original.to_record()
    original.save(tmp_path / "tok")  # over an existing folder
    assert {p.name for p in (tmp_path / "tok").iterdir()} == names
    with pytest.raises(DataError, match="no tokenizer.json"):
        TextCodec.load(tmp_path)


def test_encode_ends_in_eos_and_truncates_with_a_warning(codec: TextCodec,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    lines = codec.encode_lines(SENTENCES)
    assert all(a.dtype == np.int32 and a[-1] == 2 for a in lines)
    full = codec.encode(SENTENCES + ["   ", ""])
    assert [ids for ids, _ in full[:3]] == [a.tolist() for a in lines]
    assert full[3] == ([], False) and full[4] == ([], False)
    assert not any(cut for _, cut in full)
    short = TextCodec(codec.src, max_len=12)
    with caplog.at_level(logging.WARNING):
        (ids, cut), (ids2, cut2) = short.encode([SENTENCES[0], SENTENCES[2]])
    assert len(lines[0]) == 17 and len(lines[2]) == 10
    assert cut and ids == lines[0].tolist()[:11] + [2]  # the first max_len - 1 tokens and EOS
    assert not cut2 and ids2 == lines[2].tolist()
    assert "sentence 1 has 17 tokens; truncated to the model's max_len 12" in caplog.text
    assert "sentence 2" not in caplog.text


def test_pad_and_batches(codec: TextCodec) -> None:
    batch = codec.pad([[5, 6, 2], [7, 2], [2]])
    assert batch.dtype == np.int64 and batch.tolist() == [[5, 6, 2], [7, 2, 0], [2, 0, 0]]
    encoded = [([4, 2], False), ([], False), ([4, 5, 6, 2], False), ([4, 5, 2], False), ([9, 2], False)]
    assert list(codec.batches(encoded, 2)) == [[2, 3], [0, 4]]  # longest first, the empty one left out
    assert list(codec.batches(encoded, 10)) == [[2, 3, 0, 4]]
    with pytest.raises(ValueError, match="batch_size"):
        list(codec.batches(encoded, 0))


def test_cut_decode_and_tokens(codec: TextCodec) -> None:
    ids = codec.encode([SENTENCES[0]])[0][0]
    assert codec.cut(ids + [0, 0]) == ids and codec.cut([5, 2, 7, 2]) == [5, 2]
    assert codec.cut([5, 6]) == [5, 6]  # no EOS: everything
    assert codec.decode(ids + [0, 0, 9]) == SENTENCES[0]  # special tokens dropped, cut at EOS
    assert codec.decode_batch([ids, codec.encode([SENTENCES[2]])[0][0]]) == [SENTENCES[0], SENTENCES[2]]
    tokens = codec.tokens(ids)
    assert tokens[0] == "▁Der" and tokens[-1] == EOS
    assert codec.tokens([2, 10_000], "src") == [EOS, UNK]


def test_text_codec_is_torch_free() -> None:
    code = ("import sys; from vit.text_codec import TextCodec; "
            f"c = TextCodec.load({str(TOKENIZER.parent)!r}); c.decode(c.encode(['ein hund'])[0][0]); "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


# --------------------------------------------------------------------------- DecodingRules
RULES = DecodingRules(pad_id=0, bos_id=1, eos_id=2, max_len=30)


def test_steps_default_to_twice_the_source_plus_ten_within_the_model() -> None:
    assert RULES.steps(5) == 20 and RULES.steps(1) == 12
    assert RULES.steps(10) == 30 and RULES.steps(15) == 30  # clipped to the model's max_len
    assert RULES.steps(5, max_len=7) == 7 and RULES.steps(100, max_len=30) == 30
    assert RULES.steps(5, min_len=19) == 20


@pytest.mark.parametrize("kwargs,message", [
    ({"max_len": 31}, r"max_len must be in \[1, 30\]"),
    ({"max_len": 0}, r"max_len must be in \[1, 30\]"),
    ({"max_len": 5, "min_len": 5}, r"min_len must be in \[0, max_len=5\)"),
    ({"min_len": -1}, "min_len must be in"),
    ({"min_len": 20}, r"min_len must be in \[0, max_len=20\)"),
])
def test_steps_errors(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RULES.steps(5, **kwargs)


def test_rules_of_a_config_or_a_dict() -> None:
    cfg = tiny_config()
    assert DecodingRules.of(cfg) == DecodingRules(0, 1, 2, 24)
    assert DecodingRules.of(cfg.to_dict()) == DecodingRules.of(cfg)


@pytest.mark.parametrize("kind", ["numpy", "torch"])
def test_apply_bans_what_may_not_come(kind: str) -> None:
    base = np.arange(12, dtype=np.float32).reshape(2, 6) / 10 - 1.0  # (N, V), all finite
    make = (lambda a: a.copy()) if kind == "numpy" else (lambda a: torch.from_numpy(a.copy()))
    as_np = lambda s: s if isinstance(s, np.ndarray) else s.numpy()
    inf = -np.inf
    # never pad or bos; no eos before min_len
    scores = make(base)
    out = RULES.apply(scores, 0, 5, min_len=2)
    assert out is scores  # in place
    expected = base.copy()
    expected[:, [0, 1, 2]] = inf
    np.testing.assert_array_equal(as_np(out), expected)
    # from min_len on, eos is allowed
    expected = base.copy()
    expected[:, [0, 1]] = inf
    np.testing.assert_array_equal(as_np(RULES.apply(make(base), 2, 5, min_len=2)), expected)
    np.testing.assert_array_equal(as_np(RULES.apply(make(base), 3, 5)), expected)
    # the last allowed step can only end the sentence, keeping eos's own score
    expected = np.full_like(base, inf)
    expected[:, 2] = base[:, 2]
    np.testing.assert_array_equal(as_np(RULES.apply(make(base), 4, 5, min_len=2)), expected)


def test_read_lines_plain_gzip_limit_and_errors(tmp_path: Path) -> None:
    lines = ["eins", "zwei", "", "drei"]
    (tmp_path / "s.de").write_text("\n".join(lines) + "\n", encoding="utf-8")
    with gzip.open(tmp_path / "s.de.gz", "wt", encoding="utf-8") as f:
        f.write("\r\n".join(lines) + "\r\n")
    (tmp_path / "gz_named_plain.gz").write_text("eins\n", encoding="utf-8")  # detected by content
    assert read_lines(tmp_path / "s.de") == lines
    assert read_lines(tmp_path / "s.de.gz") == lines
    assert read_lines(tmp_path / "s.de.gz", 2) == lines[:2]
    assert read_lines(tmp_path / "gz_named_plain.gz") == ["eins"]
    with pytest.raises(DataError, match=r"nope\.de: no such file"):
        read_lines(tmp_path / "nope.de")
    bad = tmp_path / "bad.de"
    bad.write_bytes(b"\xff\xfe\x00 not utf-8 \xc3\x28\n")
    with pytest.raises(DataError, match=r"bad\.de: not readable UTF-8"):
        read_lines(bad)
