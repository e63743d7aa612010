"""Parallel text for translation: reading, subword tokenizers, length-bucketed batches.

Two files, one sentence a line, aligned line by line (plain text or gzip). The subword
tokenizer (``tokenizers`` BPE or unigram, NFKC-normalised, SentencePiece-style ``▁``
word boundaries, punctuation split off) is trained on the training split, jointly on
both languages or one per language. Its special tokens are ``<pad> <bos> <eos> <unk>``
(ids 0-3, but every consumer reads them from the tokenizer), and its post-processor
appends ``<eos>`` to every encoding, so the tokenizer JSON alone says how a sentence
becomes model input (:mod:`vit.text_codec` reads, writes and applies it).

Batches hold about ``max_tokens`` padded positions of the longer side: sentences are
sorted by length (ties broken at random each epoch) and cut into batches, whose order is
shuffled (:class:`TokenBatchSampler`). Under DDP every rank builds the same batches and
takes its own share of them, the same number on every rank.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from torch import Tensor
from torch.utils.data import BatchSampler, DataLoader, Dataset, Sampler

from vit.errors import DataError
from vit.text_codec import EOS, SPECIAL_TOKENS, UNK, TextCodec, read_lines

log = logging.getLogger(__name__)

MULTI30K = "../shared/data/multi30k"  # relative to the repository root (the working directory)


class TextDataError(DataError):
    """Bad parallel text input: missing files, mismatched line counts, bad settings
    (``vit-train`` prints these as one-line errors)."""


def read_parallel(src_path: str | Path, tgt_path: str | Path) -> tuple[list[str], list[str]]:
    """Both sides of a parallel corpus; their line counts must agree."""
    try:
        src, tgt = read_lines(src_path), read_lines(tgt_path)
    except DataError as exc:
        raise TextDataError(str(exc)) from None
    if len(src) != len(tgt):
        raise TextDataError(
            f"parallel files differ in length: {src_path} has {len(src)} lines, {tgt_path} has {len(tgt)}"
        )
    if not src:
        raise TextDataError(f"{src_path}: no lines")
    return src, tgt


def train_tokenizer(texts: Sequence[str], *, kind: str = "bpe", vocab_size: int = 8000,
                    min_frequency: int = 2) -> Tokenizer:
    """Train a subword tokenizer (``kind`` ``"bpe"`` or ``"unigram"``) on ``texts``."""
    specials = list(SPECIAL_TOKENS)
    if kind == "bpe":
        tokenizer = Tokenizer(models.BPE(unk_token=UNK))
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                      special_tokens=specials, show_progress=False)
    elif kind == "unigram":
        tokenizer = Tokenizer(models.Unigram())
        trainer = trainers.UnigramTrainer(vocab_size=vocab_size, special_tokens=specials, unk_token=UNK,
                                          show_progress=False)
    else:
        raise TextDataError(f"tokenizer kind must be 'bpe' or 'unigram', got {kind!r}")
    tokenizer.normalizer = normalizers.NFKC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Metaspace(), pre_tokenizers.Punctuation()]
    )
    tokenizer.decoder = decoders.Metaspace()
    tokenizer.train_from_iterator(texts, trainer)
    eos = tokenizer.token_to_id(EOS)
    tokenizer.post_processor = processors.TemplateProcessing(single=f"$A {EOS}", special_tokens=[(EOS, eos)])
    return tokenizer


class ParallelDataset(Dataset):
    """Encoded sentence pairs and the raw target text (the BLEU reference)."""

    def __init__(self, src: list[np.ndarray], tgt: list[np.ndarray], refs: list[str]) -> None:
        self.src, self.tgt, self.refs = src, tgt, refs

    def __len__(self) -> int:
        return len(self.src)

    def __getitem__(self, i: int) -> tuple[int, np.ndarray, np.ndarray, str]:
        return i, self.src[i], self.tgt[i], self.refs[i]

    def lengths(self) -> np.ndarray:
        """Longer side of each pair, counting the decoder's extra BOS position."""
        return np.array([max(len(s), len(t)) for s, t in zip(self.src, self.tgt, strict=True)])


class EpochCounter(Sampler[int]):
    """Every index in order. It carries the epoch Lightning sets at the start of each epoch
    (Lightning calls ``set_epoch`` on a batch sampler's ``sampler``, not on the batch
    sampler) to :class:`TokenBatchSampler`; under DDP Lightning puts a
    ``DistributedSampler`` in its place, which also says the rank."""

    def __init__(self, size: int) -> None:
        self.size, self.epoch = size, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.size))

    def __len__(self) -> int:
        return self.size


class TokenBatchSampler(BatchSampler):
    """Batches of similar-length examples with at most ``max_tokens`` padded positions
    (batch size x longest length); a longer example goes alone. ``shuffle`` breaks length
    ties at random and shuffles the batch order, anew each epoch.

    ``sampler`` gives the epoch and, when it is a ``DistributedSampler`` (which Lightning
    injects under DDP), the rank and the number of ranks: every rank then builds the same
    batches (seeded by ``seed`` and the epoch) and takes every ``world``-th one, after the
    list was padded with its first batches to a multiple of ``world`` -- every rank gets the
    same number of batches (a rank with fewer would hang the others), and the ranks' shares
    are disjoint apart from those few repeats.
    """

    def __init__(self, lengths: Sequence[int], max_tokens: int, *, shuffle: bool, seed: int = 0,
                 sampler: Sampler[int] | None = None) -> None:
        # no BatchSampler.__init__: batches are cut by tokens, not by a fixed size
        if max_tokens <= 0:
            raise TextDataError(f"max_tokens must be positive, got {max_tokens}")
        self.lengths = np.asarray(lengths)
        self.max_tokens, self.shuffle, self.seed = max_tokens, shuffle, seed
        self.sampler = sampler if sampler is not None else EpochCounter(len(self.lengths))
        self._cache: tuple[int, list[list[int]]] | None = None

    @property
    def epoch(self) -> int:
        return int(getattr(self.sampler, "epoch", 0))

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    @property
    def rank_and_world(self) -> tuple[int, int]:
        return int(getattr(self.sampler, "rank", 0)), int(getattr(self.sampler, "num_replicas", 1))

    def global_batches(self) -> list[list[int]]:
        """This epoch's batches of all ranks together."""
        if self._cache is not None and self._cache[0] == self.epoch:
            return self._cache[1]
        rng = np.random.default_rng((self.seed, self.epoch))
        ties = rng.random(len(self.lengths)) if self.shuffle else np.zeros(len(self.lengths))
        order = np.lexsort((ties, self.lengths))
        batches, current, longest = [], [], 0
        for i in order.tolist():
            n = int(self.lengths[i])
            if current and (len(current) + 1) * max(longest, n) > self.max_tokens:
                batches.append(current)
                current, longest = [], 0
            current.append(i)
            longest = max(longest, n)
        if current:
            batches.append(current)
        if self.shuffle:
            rng.shuffle(batches)
        self._cache = (self.epoch, batches)
        return batches

    def _batches(self) -> list[list[int]]:
        batches = self.global_batches()
        rank, world = self.rank_and_world
        if world == 1:
            return batches
        per_rank = math.ceil(len(batches) / world)
        padded = batches + batches[: per_rank * world - len(batches)]
        return padded[rank::world]

    def padding_fraction(self) -> float:
        """Share of padded positions in this epoch's batches."""
        batches = self.global_batches()
        real = sum(int(self.lengths[b].sum()) for b in batches)
        total = sum(len(b) * int(self.lengths[b].max()) for b in batches)
        return 1.0 - real / total

    def __iter__(self) -> Iterator[list[int]]:
        # a generator: the batches are drawn at the first batch, after Lightning set this
        # epoch (it makes the first iterator of a run, resumed or not, before that)
        yield from self._batches()

    def __len__(self) -> int:
        return math.ceil(len(self.global_batches()) / self.rank_and_world[1])


class Collate:
    """Pad a list of pairs: ``src`` (B, S), ``tgt_in`` = BOS + target (B, T), ``tgt_out`` =
    target + EOS (B, T), the reference texts ``refs`` and the pairs' dataset indices
    ``index`` (B,) (which tell apart the few batches DDP repeats)."""

    def __init__(self, pad_id: int, bos_id: int) -> None:
        self.pad_id, self.bos_id = pad_id, bos_id

    def _pad(self, seqs: list[np.ndarray]) -> Tensor:
        out = torch.full((len(seqs), max(len(s) for s in seqs)), self.pad_id, dtype=torch.long)  # (B, N)
        for i, s in enumerate(seqs):
            out[i, : len(s)] = torch.from_numpy(s.astype(np.int64))
        return out

    def __call__(self, items: list[tuple[int, np.ndarray, np.ndarray, str]]) -> dict[str, Any]:
        index, src, tgt, refs = zip(*items, strict=True)
        tgt_in = [np.concatenate([[self.bos_id], t[:-1]]).astype(np.int32) for t in tgt]
        return {"src": self._pad(list(src)), "tgt_in": self._pad(tgt_in), "tgt_out": self._pad(list(tgt)),
                "refs": list(refs), "index": torch.tensor(index, dtype=torch.long)}


class TextDataModule(L.LightningDataModule):
    """Parallel text with a subword tokenizer trained on the training split.

    Args:
        train_src, train_tgt, val_src, val_tgt: one sentence a line, aligned (plain or .gz).
        tokenizer: ``"bpe"`` or ``"unigram"``.
        vocab_size: subword vocabulary size (of each side when ``joint_vocab`` is False).
        joint_vocab: one vocabulary for both languages (allows shared embeddings).
        tokenizer_dir: where the tokenizer JSON is kept: loaded from there when present,
            else trained and written there. ``None``: trained anew (deterministic) and kept
            in memory only (checkpoints carry it anyway).
        max_sentence_len: training pairs with a side longer than this (in tokens, with EOS)
            are dropped; validation sentences are truncated to it.
        max_tokens: padded positions per training batch; ``val_max_tokens`` for validation.
    """

    def __init__(
        self,
        train_src: str = f"{MULTI30K}/train.de.gz",
        train_tgt: str = f"{MULTI30K}/train.en.gz",
        val_src: str = f"{MULTI30K}/val.de.gz",
        val_tgt: str = f"{MULTI30K}/val.en.gz",
        tokenizer: str = "bpe",
        vocab_size: int = 8000,
        joint_vocab: bool = True,
        min_frequency: int = 2,
        tokenizer_dir: str | None = None,
        max_sentence_len: int = 128,
        max_tokens: int = 6000,
        val_max_tokens: int = 3000,
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if tokenizer not in ("bpe", "unigram"):
            raise TextDataError(f"TextDataModule.tokenizer must be 'bpe' or 'unigram', got {tokenizer!r}")
        if vocab_size < len(SPECIAL_TOKENS) + 1:
            raise TextDataError(
                f"TextDataModule.vocab_size must be > {len(SPECIAL_TOKENS)}, got {vocab_size}"
            )
        if max_sentence_len < 2:
            raise TextDataError(f"TextDataModule.max_sentence_len must be >= 2, got {max_sentence_len}")
        self.save_hyperparameters()
        self.codec: TextCodec | None = None
        self.train_set: ParallelDataset | None = None
        self.val_set: ParallelDataset | None = None

    # -- tokenizer -------------------------------------------------------------------
    def build_codec(self, src_lines: Sequence[str], tgt_lines: Sequence[str]) -> TextCodec:
        hp = self.hparams
        saved = Path(hp.tokenizer_dir) if hp.tokenizer_dir else None
        if saved is not None and saved.is_dir() and any(saved.glob("*.json")):
            toks = TextCodec.load(hp.tokenizer_dir)
            if toks.joint != hp.joint_vocab:
                kind = "joint" if toks.joint else "per-language"
                raise TextDataError(f"{saved}: holds a {kind} tokenizer but joint_vocab={hp.joint_vocab}")
            log.info("loaded tokenizer from %s", hp.tokenizer_dir)
            return toks
        kw = dict(kind=hp.tokenizer, vocab_size=hp.vocab_size, min_frequency=hp.min_frequency)
        if hp.joint_vocab:
            toks = TextCodec(train_tokenizer(list(src_lines) + list(tgt_lines), **kw))
        else:
            toks = TextCodec(train_tokenizer(src_lines, **kw), train_tokenizer(tgt_lines, **kw))
        log.info("trained %s tokenizer: %d source / %d target subwords", hp.tokenizer,
                 toks.src.get_vocab_size(), toks.tgt.get_vocab_size())
        if hp.tokenizer_dir:
            toks.save(hp.tokenizer_dir)
        return toks

    # -- Lightning hooks -------------------------------------------------------------
    def prepare_data(self) -> None:
        """Train and write the tokenizer once, before any rank's ``setup`` (Lightning runs this
        on one process per node and makes the others wait), so that ranks only load it."""
        saved = Path(self.hparams.tokenizer_dir) if self.hparams.tokenizer_dir else None
        if saved is not None and not (saved.is_dir() and any(saved.glob("*.json"))):
            self.build_codec(*read_parallel(self.hparams.train_src, self.hparams.train_tgt))

    def setup(self, stage: str | None = None) -> None:
        if self.codec is not None:
            return
        hp = self.hparams
        train_src, train_tgt = read_parallel(hp.train_src, hp.train_tgt)
        val_src, val_tgt = read_parallel(hp.val_src, hp.val_tgt)
        self.codec = toks = self.build_codec(train_src, train_tgt)
        self.special_ids = toks.special_ids()
        src_ids, tgt_ids = toks.encode_lines(train_src, "src"), toks.encode_lines(train_tgt, "tgt")
        keep = [i for i in range(len(src_ids))
                if 1 < len(src_ids[i]) <= hp.max_sentence_len and 1 < len(tgt_ids[i]) <= hp.max_sentence_len]
        if len(keep) < len(src_ids):
            log.info("dropped %d of %d training pairs (an empty side or longer than max_sentence_len=%d)",
                     len(src_ids) - len(keep), len(src_ids), hp.max_sentence_len)
        if not keep:
            raise TextDataError(
                f"{hp.train_src}: no training pair is at most max_sentence_len={hp.max_sentence_len} long"
            )
        self.train_set = ParallelDataset([src_ids[i] for i in keep], [tgt_ids[i] for i in keep],
                                         [train_tgt[i] for i in keep])
        vsrc = [_truncate(s, hp.max_sentence_len) for s in toks.encode_lines(val_src, "src")]
        vtgt = [_truncate(t, hp.max_sentence_len) for t in toks.encode_lines(val_tgt, "tgt")]
        self.val_set = ParallelDataset(vsrc, vtgt, val_tgt)
        self.collate = Collate(self.special_ids["pad_id"], self.special_ids["bos_id"])

    def train_dataloader(self) -> DataLoader:
        sampler = TokenBatchSampler(self.train_set.lengths(), self.hparams.max_tokens, shuffle=True,
                                    seed=self.hparams.seed)
        log.info("%d training batches of <= %d positions, %.1f%% padding", len(sampler),
                 self.hparams.max_tokens, 100 * sampler.padding_fraction())
        return DataLoader(self.train_set, batch_sampler=sampler, collate_fn=self.collate,
                          num_workers=self.hparams.num_workers, generator=self._generator())

    def val_dataloader(self) -> DataLoader:
        sampler = TokenBatchSampler(self.val_set.lengths(), self.hparams.val_max_tokens, shuffle=False)
        return DataLoader(self.val_set, batch_sampler=sampler, collate_fn=self.collate,
                          num_workers=self.hparams.num_workers, generator=self._generator())

    def _generator(self) -> torch.Generator:
        """The loaders' own: making an iterator takes no draw from the global random stream
        (Lightning makes the first one before the epoch is seeded)."""
        return torch.Generator().manual_seed(self.hparams.seed)


def _truncate(ids: np.ndarray, max_len: int) -> np.ndarray:
    """Keep the first ``max_len - 1`` tokens and the final EOS."""
    return ids if len(ids) <= max_len else np.concatenate([ids[: max_len - 1], ids[-1:]])

