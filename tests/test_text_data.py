"""Parallel text (training/text_data.py): reading, clear errors, the subword tokenizer,
length-bucketed batches, and the data module's codec."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import toy_pairs, write_corpus

from training.text_data import (
    Collate,
    TextDataError,
    TextDataModule,
    TokenBatchSampler,
    read_parallel,
    train_tokenizer,
)
from vit.errors import DataError
from vit.text_codec import EOS, SPECIAL_TOKENS, TextCodec


def test_missing_file_and_mismatched_counts_name_the_files(tmp_path: Path) -> None:
    paths = write_corpus(tmp_path)
    with pytest.raises(TextDataError, match=r"nope\.de: no such file"):
        read_parallel(tmp_path / "nope.de", paths["train_tgt"])
    with pytest.raises(TextDataError, match=r"train\.de\.gz has 200 lines, .*val\.en\.gz has 20"):
        read_parallel(paths["train_src"], paths["val_tgt"])
    bad = tmp_path / "bad.de"
    bad.write_bytes(b"\xff\xfe\x00 not utf-8 \xc3\x28\n")
    with pytest.raises(TextDataError, match=r"bad\.de: not readable UTF-8"):
        read_parallel(bad, bad)


@pytest.mark.parametrize("kind", ["bpe", "unigram"])
def test_tokenizer_special_tokens_eos_and_round_trip(kind: str) -> None:
    lines = [s for pair in toy_pairs(100) for s in pair]
    tok = train_tokenizer(lines, kind=kind, vocab_size=60)
    assert [tok.token_to_id(t) for t in SPECIAL_TOKENS] == [0, 1, 2, 3]
    enc = tok.encode("Der hund läuft schnell.")
    assert enc.tokens[-1] == EOS
    assert tok.decode(enc.ids, skip_special_tokens=True) == "Der hund läuft schnell."
    weird = tok.encode("Der Hund ☃ läuft 日本!")  # characters never seen in training
    assert tok.token_to_id("<unk>") in weird.ids or kind == "unigram"
    assert weird.ids[-1] == tok.token_to_id(EOS)


def test_token_batch_sampler_covers_all_within_budget_with_little_padding() -> None:
    rng = np.random.default_rng(0)
    lengths = rng.integers(3, 40, size=500)
    sampler = TokenBatchSampler(lengths, max_tokens=200, shuffle=True, seed=1)
    batches = list(sampler)
    assert sorted(i for b in batches for i in b) == list(range(500))
    assert len(batches) == len(sampler)
    assert all(len(b) * lengths[b].max() <= 200 for b in batches)
    assert sampler.padding_fraction() < 0.05
    sampler.set_epoch(1)
    assert list(sampler) != batches and len(list(sampler)) == len(batches)
    sampler.set_epoch(0)
    assert list(sampler) == batches
    long = TokenBatchSampler([5, 500, 5], max_tokens=100, shuffle=False)
    assert [1] in list(long)  # longer than the budget: a batch of its own
    with pytest.raises(TextDataError, match="max_tokens"):
        TokenBatchSampler([3], max_tokens=0, shuffle=False)


def test_collate_shifts_targets() -> None:
    collate = Collate(pad_id=0, bos_id=1)
    batch = collate([(4, np.array([5, 6, 2]), np.array([7, 8, 9, 2]), "a"),
                     (9, np.array([5, 2]), np.array([7, 2]), "b")])
    assert batch["index"].tolist() == [4, 9]
    assert batch["src"].tolist() == [[5, 6, 2], [5, 2, 0]]
    assert batch["tgt_in"].tolist() == [[1, 7, 8, 9], [1, 7, 0, 0]]
    assert batch["tgt_out"].tolist() == [[7, 8, 9, 2], [7, 2, 0, 0]]
    assert batch["refs"] == ["a", "b"]


@pytest.mark.parametrize("joint", [True, False])
def test_data_module_builds_saves_and_reloads_tokenizers(tmp_path: Path, joint: bool) -> None:
    paths = write_corpus(tmp_path / "data")
    tok_dir = tmp_path / "tok"
    dm = TextDataModule(**paths, vocab_size=80, joint_vocab=joint, tokenizer_dir=str(tok_dir), max_tokens=64)
    dm.setup("fit")
    assert dm.codec.joint is joint
    names = {"tokenizer.json"} if joint else {"src_tokenizer.json", "tgt_tokenizer.json"}
    assert {p.name for p in tok_dir.iterdir()} == names
    assert dm.special_ids == {"pad_id": 0, "bos_id": 1, "eos_id": 2}
    batch = next(iter(dm.train_dataloader()))
    assert batch["src"].dtype == torch.long and batch["src"].numel() <= 2 * 64
    assert torch.all(batch["tgt_in"][:, 0] == 1)
    assert len(dm.val_set) == 20
    again = TextDataModule(**paths, vocab_size=80, joint_vocab=joint, tokenizer_dir=str(tok_dir))
    again.setup("fit")
    assert again.codec.to_record() == dm.codec.to_record()
    assert TextCodec.from_record(dm.codec.to_record()).joint is joint
    other = TextDataModule(**paths, vocab_size=80, joint_vocab=not joint, tokenizer_dir=str(tok_dir))
    with pytest.raises(TextDataError, match="joint_vocab"):
        other.setup("fit")


def test_data_module_argument_errors(tmp_path: Path) -> None:
    with pytest.raises(TextDataError, match="tokenizer must be 'bpe' or 'unigram'"):
        TextDataModule(tokenizer="wordpiece")
    dm = TextDataModule(train_src=str(tmp_path / "missing.de"), train_tgt=str(tmp_path / "missing.en"))
    with pytest.raises(TextDataError, match=r"missing\.de: no such file"):
        dm.setup("fit")


def test_data_module_drops_long_pairs_and_truncates_validation(tmp_path: Path) -> None:
    paths = write_corpus(tmp_path / "data", n_train=60, n_val=10)
    dm = TextDataModule(**paths, vocab_size=80, max_sentence_len=12, max_tokens=64)
    dm.setup("fit")
    assert 0 < len(dm.train_set) < 60
    assert all(max(len(s), len(t)) <= 12 for _, s, t, _ in dm.train_set)
    assert len(dm.val_set) == 10 and all(len(s) <= 12 and s[-1] == 2 for _, s, _, _ in dm.val_set)
    assert issubclass(TextDataError, DataError)  # vit-train prints these as one line
    with pytest.raises(TextDataError, match="no training pair"):
        TextDataModule(**paths, vocab_size=80, max_sentence_len=2).setup("fit")


@pytest.mark.parametrize("shuffle", [True, False])
def test_token_batches_shard_across_ranks_with_equal_counts(shuffle: bool) -> None:
    """Under DDP (Lightning hands the batch sampler a DistributedSampler) the ranks' batches
    are disjoint apart from the few repeats that equalise the counts, and cover every pair."""
    from torch.utils.data.distributed import DistributedSampler

    lengths = np.random.default_rng(0).integers(3, 40, size=301)
    single = TokenBatchSampler(lengths, max_tokens=150, shuffle=shuffle, seed=3)
    for world in (2, 3):
        shards = []
        for rank in range(world):
            dist_sampler = DistributedSampler(range(len(lengths)), num_replicas=world, rank=rank,
                                              shuffle=shuffle)
            sampler = TokenBatchSampler(lengths, max_tokens=150, shuffle=shuffle, seed=3,
                                        sampler=dist_sampler)
            sampler.set_epoch(1)  # what Lightning does at each epoch, on the DistributedSampler
            assert sampler.epoch == 1 == dist_sampler.epoch
            shards.append([tuple(b) for b in sampler])
            assert len(shards[-1]) == len(sampler)
        assert len({len(s) for s in shards}) == 1  # equal counts: no rank waits for another
        seen = [b for s in shards for b in s]
        assert sorted(i for b in set(seen) for i in b) == list(range(len(lengths)))  # cover, disjoint
        assert len(seen) - len(set(seen)) < world  # at most world - 1 repeated batches
        single.set_epoch(1)
        assert set(seen) == {tuple(b) for b in single}  # the same batches one process would see
