"""Text <-> token ids for the translation models, and the rules every decoder follows.
Torch-free (numpy and ``tokenizers``): training, export, serving and the demo share it, as
the image side shares :mod:`vit.preprocess`.

Tokenizer record: a tokenizer is one ``tokenizers`` JSON string, or two (source and
target) for per-language vocabularies. In a checkpoint's ``seq2seq`` record they are
``src_tokenizer`` and ``tgt_tokenizer`` (``None`` for a joint vocabulary); in a folder
they are ``tokenizer.json``, or ``src_tokenizer.json`` + ``tgt_tokenizer.json``.

Special tokens ``<pad> <bos> <eos> <unk>`` are read from the tokenizer, never assumed;
its post-processor appends ``<eos>`` to every encoding, so the JSON alone says how a
sentence becomes model input.

Decoding rules (:class:`DecodingRules`): at most ``2 S + 10`` generated tokens by default
(S: source length with EOS) within the model's positions; ``<pad>`` and ``<bos>`` are
never generated, ``<eos>`` not before ``min_len`` tokens, and the last allowed step can
only end the sentence. Shape letters: B batch, S source length, V vocabulary.
"""

from __future__ import annotations

import gzip
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from .command import file_mode
from .errors import DataError

log = logging.getLogger(__name__)

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
SPECIAL_TOKENS = (PAD, BOS, EOS, UNK)
JOINT_FILE, SRC_FILE, TGT_FILE = "tokenizer.json", "src_tokenizer.json", "tgt_tokenizer.json"

Scores = TypeVar("Scores")  # a numpy array or a torch tensor, (N, V)


def read_lines(path: str | Path, limit: int | None = None) -> list[str]:
    """Lines of a UTF-8 text file, plain or gzip (detected from its first bytes); the first
    ``limit`` only when given."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    with open(path, "rb") as f:
        gz = f.read(2) == b"\x1f\x8b"
    try:
        with (gzip.open(path, "rt", encoding="utf-8") if gz else open(path, encoding="utf-8")) as f:
            lines = [line.rstrip("\r\n") for line in f]
    except (UnicodeDecodeError, OSError, EOFError) as exc:
        raise DataError(f"{path}: not readable UTF-8 text ({exc.__class__.__name__}: {exc})") from exc
    return lines[:limit] if limit else lines


class TextCodec:
    """Source and target tokenizers (one object for a joint vocabulary) and ``max_len``,
    the longest source the model takes (``None``: no limit)."""

    def __init__(self, src: Any, tgt: Any | None = None, *, max_len: int | None = None) -> None:
        self.src, self.tgt = src, src if tgt is None else tgt
        self.max_len = max_len
        self._special: dict[str, int] | None = None
        for tok in {id(self.src): self.src, id(self.tgt): self.tgt}.values():
            tok.no_truncation()
            tok.no_padding()

    @property
    def joint(self) -> bool:
        return self.src is self.tgt

    # -- the record -------------------------------------------------------------------
    def special_ids(self) -> dict[str, int]:
        """``pad_id``, ``bos_id``, ``eos_id`` of the target side (the source shares ``pad``)."""
        if self._special is None:
            names = (("pad", PAD), ("bos", BOS), ("eos", EOS))
            ids = {f"{name}_id": self.tgt.token_to_id(tok) for name, tok in names}
            if None in ids.values() or self.src.token_to_id(PAD) != ids["pad_id"]:
                raise DataError(f"tokenizers lack the special tokens {SPECIAL_TOKENS} at equal ids")
            self._special = ids
        return dict(self._special)

    def to_record(self) -> dict[str, str | None]:
        """The tokenizer JSON strings as stored in a checkpoint's ``seq2seq`` record."""
        tgt = None if self.joint else self.tgt.to_str()
        return {"src_tokenizer": self.src.to_str(), "tgt_tokenizer": tgt}

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> TextCodec:
        """From a ``seq2seq`` record (tokenizer JSON strings; ``config.max_len`` if present)."""
        from tokenizers import Tokenizer

        src = Tokenizer.from_str(record["src_tokenizer"])
        tgt = Tokenizer.from_str(record["tgt_tokenizer"]) if record.get("tgt_tokenizer") else None
        return cls(src, tgt, max_len=(record.get("config") or {}).get("max_len"))

    def files(self) -> dict[str, Any]:
        return {JOINT_FILE: self.src} if self.joint else {SRC_FILE: self.src, TGT_FILE: self.tgt}

    def save(self, directory: str | Path) -> None:
        """Write the tokenizer file(s) into ``directory``, each atomically (a temporary file
        of a unique name in the folder, then a rename)."""
        import tempfile

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        for name, tok in self.files().items():
            with tempfile.NamedTemporaryFile("w", dir=directory, prefix=f".{name}.", suffix=".tmp",
                                             delete=False, encoding="utf-8") as f:
                f.write(tok.to_str())
            os.chmod(f.name, file_mode(directory / name))
            Path(f.name).replace(directory / name)

    @classmethod
    def load(cls, directory: str | Path, *, max_len: int | None = None) -> TextCodec:
        from tokenizers import Tokenizer

        directory = Path(directory)
        if (directory / JOINT_FILE).is_file():
            return cls(Tokenizer.from_file(str(directory / JOINT_FILE)), max_len=max_len)
        if (directory / SRC_FILE).is_file() and (directory / TGT_FILE).is_file():
            return cls(Tokenizer.from_file(str(directory / SRC_FILE)),
                       Tokenizer.from_file(str(directory / TGT_FILE)), max_len=max_len)
        raise DataError(f"{directory}: no {JOINT_FILE} nor {SRC_FILE} + {TGT_FILE}")

    # -- text -> ids --------------------------------------------------------------------
    def encode_lines(self, lines: Sequence[str], side: str = "src") -> list[np.ndarray]:
        """Token ids of each line, ending in ``<eos>``, as int32 arrays (no truncation)."""
        tok = self.src if side == "src" else self.tgt
        return [np.asarray(e.ids, dtype=np.int32) for e in tok.encode_batch(list(lines))]

    def encode(self, texts: Sequence[str]) -> list[tuple[list[int], bool]]:
        """Source sentences -> (ids ending in EOS, truncated?) each; whitespace-only texts give
        ``[]``. A sentence longer than ``max_len`` keeps its first ``max_len - 1`` tokens and
        EOS, with a warning."""
        eos = self.special_ids()["eos_id"]
        out = []
        for i, enc in enumerate(self.src.encode_batch([t.strip() for t in texts])):
            ids = list(enc.ids)
            if not texts[i].strip():
                out.append(([], False))
                continue
            if ids[-1:] != [eos]:  # a tokenizer without the EOS post-processor
                ids.append(eos)
            cut = self.max_len is not None and len(ids) > self.max_len
            if cut:
                log.warning("sentence %d has %d tokens; truncated to the model's max_len %d",
                            i + 1, len(ids), self.max_len)
                ids = ids[: self.max_len - 1] + [eos]
            out.append((ids, cut))
        return out

    def pad(self, seqs: Sequence[Sequence[int]]) -> np.ndarray:
        """Right-pad to (B, S) int64."""
        batch = np.full((len(seqs), max(len(s) for s in seqs)), self.special_ids()["pad_id"], dtype=np.int64)
        for i, s in enumerate(seqs):
            batch[i, : len(s)] = s
        return batch

    @staticmethod
    def batches(encoded: list[tuple[list[int], bool]], batch_size: int) -> Iterator[list[int]]:
        """Indices of the non-empty sentences, longest first, in chunks of ``batch_size``."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        order = sorted((i for i, (ids, _) in enumerate(encoded) if ids), key=lambda i: -len(encoded[i][0]))
        for start in range(0, len(order), batch_size):
            yield order[start : start + batch_size]

    # -- ids -> text --------------------------------------------------------------------
    def cut(self, ids: Sequence[int]) -> list[int]:
        """Generated ids up to and including the first EOS (all of them if none)."""
        ids = list(ids)
        eos = self.special_ids()["eos_id"]
        return ids[: ids.index(eos) + 1] if eos in ids else ids

    def decode(self, ids: Sequence[int]) -> str:
        """Detokenized target text of generated ids (cut at EOS, special tokens dropped)."""
        return self.tgt.decode(self.cut(ids), skip_special_tokens=True)

    def decode_batch(self, rows: Sequence[Sequence[int]]) -> list[str]:
        return self.tgt.decode_batch([self.cut(r) for r in rows], skip_special_tokens=True)

    def tokens(self, ids: Sequence[int], side: str = "tgt") -> list[str]:
        """The subword strings of ``ids`` (``<unk>`` for an unknown id)."""
        tok = self.src if side == "src" else self.tgt
        return [tok.id_to_token(int(t)) or UNK for t in ids]


@dataclass(frozen=True)
class DecodingRules:
    """What any decoder of a model may generate (see the module docstring). ``max_len`` is
    the model's number of positions."""

    pad_id: int
    bos_id: int
    eos_id: int
    max_len: int

    @classmethod
    def of(cls, config: Any) -> DecodingRules:
        """From a config (object or dict) with ``pad_id``, ``bos_id``, ``eos_id``, ``max_len``."""
        get = config.get if isinstance(config, dict) else lambda k: getattr(config, k)
        return cls(int(get("pad_id")), int(get("bos_id")), int(get("eos_id")), int(get("max_len")))

    def steps(self, src_len: int, max_len: int | None = None, min_len: int = 0) -> int:
        """How many tokens to generate at most (``max_len``, default ``2 S + 10``), checked."""
        steps = min(self.max_len, 2 * src_len + 10) if max_len is None else max_len
        if not 1 <= steps <= self.max_len:
            raise ValueError(f"max_len must be in [1, {self.max_len}] (the model's max_len), got {steps}")
        if not 0 <= min_len < steps:
            raise ValueError(f"min_len must be in [0, max_len={steps}), got {min_len}")
        return steps

    def apply(self, scores: Scores, step: int, steps: int, min_len: int = 0) -> Scores:
        """Set the scores (N, V) of tokens that may not come at ``step`` (0-based, of
        ``steps``) to -inf, in place; works on numpy arrays and torch tensors alike."""
        scores[:, [self.pad_id, self.bos_id]] = float("-inf")
        if step < min_len:
            scores[:, self.eos_id] = float("-inf")
        if step == steps - 1:  # the last allowed step can only end the sentence
            eos = scores[:, self.eos_id] * 1  # a copy
            scores[:, :] = float("-inf")
            scores[:, self.eos_id] = eos
        return scores
