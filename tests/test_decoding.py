"""Greedy decoding and beam search (vit/decoding.py, numpy over a step interface): cache = no
cache, beam 1 = greedy, EOS handling, a tiny model that overfits toy pairs decodes them
exactly, and the searches run on any numpy stepper without torch."""

from __future__ import annotations

import subprocess
import sys
from typing import Any, NamedTuple

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import BOS, EOS, PAD, REPO, rand_ids, tiny_model

from vit.decoding import (
    Generation,
    StepOutput,
    TorchStepper,
    as_stepper,
    beam_search,
    gnmt_length_penalty,
    greedy_decode,
    log_softmax,
)
from vit.seq2seq import Seq2Seq, Seq2SeqConfig
from vit.text_codec import DecodingRules

pytestmark = pytest.mark.usefixtures("one_thread")


def check_eos_and_padding(tokens: np.ndarray) -> None:
    """Every row ends in EOS, then only padding; no PAD or BOS before it."""
    for row in tokens.tolist():
        assert EOS in row, row
        end = row.index(EOS)
        assert all(t == PAD for t in row[end + 1 :]), row
        assert PAD not in row[:end] and BOS not in row[:end], row


def close(a: np.ndarray, b: np.ndarray, **kw: Any) -> None:
    """torch.testing.assert_close on numpy arrays (its default tolerances unless given)."""
    torch.testing.assert_close(torch.from_numpy(np.asarray(a)), torch.from_numpy(np.asarray(b)), **kw)


def test_greedy_cache_equals_no_cache_and_weights() -> None:
    model = tiny_model()
    src = rand_ids(3, 6, 23)
    src[2, 3:] = PAD
    fast = greedy_decode(model, src, max_len=9, min_len=4, return_attention=True)
    slow = greedy_decode(model, src, max_len=9, min_len=4, use_cache=False, return_attention=True)
    assert isinstance(fast, Generation) and isinstance(fast.tokens, np.ndarray)
    assert fast.tokens.dtype == np.int64 and fast.scores.shape == (3,)
    np.testing.assert_array_equal(fast.tokens, slow.tokens)
    close(fast.scores, slow.scores)
    check_eos_and_padding(fast.tokens)
    assert (fast.tokens != EOS)[:, :4].all()  # min_len
    t = fast.tokens.shape[1]
    assert fast.attention.shape == (3, 2, 4, t, 6)  # (B, L, H, T, S)
    close(fast.attention, slow.attention, atol=1e-5, rtol=1e-5)
    assert np.all(fast.attention[2, 0, :, :, 3:] == 0)


def test_greedy_picks_the_argmax_and_scores_its_log_probability() -> None:
    model = tiny_model(seed=1)
    src = rand_ids(2, 5, 23, seed=2)
    out = greedy_decode(model, src, max_len=20)
    tokens = torch.from_numpy(out.tokens)
    tgt_in = torch.cat([torch.full((2, 1), BOS), tokens[:, :-1]], dim=1)
    with torch.no_grad():
        logp = F.log_softmax(model(src, tgt_in), -1)  # (B, T, V)
    keep = tokens != PAD
    picked = logp.gather(2, tokens[..., None])[..., 0]  # (B, T)
    torch.testing.assert_close((picked * keep).sum(1), torch.from_numpy(out.scores), atol=1e-4, rtol=1e-4)
    allowed = logp.clone()
    allowed[..., [PAD, BOS]] = float("-inf")
    free = keep.clone()
    free[:, 19:] = False  # the last allowed step forces EOS
    assert torch.equal(allowed.argmax(-1)[free], tokens[free])


@pytest.mark.parametrize("length_penalty", [0.0, 0.6, 1.0])
def test_beam_width_one_equals_greedy(length_penalty: float) -> None:
    model = tiny_model(seed=3)
    src = rand_ids(4, 7, 23, seed=9)
    src[1, 4:] = PAD
    greedy = greedy_decode(model, src, max_len=12, min_len=3)
    beam = beam_search(model, src, beam_size=1, length_penalty=length_penalty, max_len=12, min_len=3)
    np.testing.assert_array_equal(beam.tokens, greedy.tokens)


def test_beam_cache_equals_no_cache_and_is_at_least_as_good_as_greedy() -> None:
    model = tiny_model(seed=4)
    src = rand_ids(3, 6, 23, seed=10)
    src[0, 3:] = PAD
    fast = beam_search(model, src, beam_size=4, length_penalty=0.0, max_len=10, return_attention=True)
    slow = beam_search(model, src, beam_size=4, length_penalty=0.0, max_len=10, use_cache=False,
                       return_attention=True)
    np.testing.assert_array_equal(fast.tokens, slow.tokens)
    close(fast.scores, slow.scores)
    close(fast.attention, slow.attention, atol=1e-5, rtol=1e-5)
    check_eos_and_padding(fast.tokens)
    greedy = greedy_decode(model, src, max_len=10)
    assert np.all(fast.scores >= greedy.scores - 1e-5)  # alpha=0: raw log-probabilities
    # the beam's weights are those of the returned hypothesis: rows sum to 1 up to its EOS
    lengths = (fast.tokens != PAD).sum(1)
    for i, n in enumerate(lengths.tolist()):
        close(fast.attention[i, 0, :, :n].sum(-1), np.ones((4, n), dtype=np.float32))


def test_decoding_argument_errors() -> None:
    model = tiny_model()
    src = rand_ids(1, 4, 23)
    with pytest.raises(ValueError, match="max_len must be in"):
        greedy_decode(model, src, max_len=25)
    with pytest.raises(ValueError, match="min_len"):
        greedy_decode(model, src, max_len=5, min_len=5)
    with pytest.raises(ValueError, match="beam_size"):
        beam_search(model, src, beam_size=0)
    with pytest.raises(ValueError, match="source token id 99"):
        greedy_decode(model, torch.tensor([[5, 99]]))
    with pytest.raises(ValueError, match="larger than the usable vocabulary"):
        beam_search(model, src, beam_size=17, max_len=3)


def toy_id_pairs() -> list[tuple[list[int], list[int]]]:
    """Six source sentences and their 'translations' (reversed, +1, varying lengths)."""
    g = torch.Generator().manual_seed(0)
    pairs = []
    for n in (3, 4, 5, 5, 6, 7):
        src = (torch.randperm(15, generator=g)[:n] + 3).tolist()  # distinct tokens 3..17
        pairs.append((src + [EOS], [t + 1 for t in reversed(src)] + [EOS]))
    return pairs


def pad_batch(seqs: list[list[int]]) -> torch.Tensor:
    n = max(len(s) for s in seqs)
    return torch.tensor([s + [PAD] * (n - len(s)) for s in seqs])


def test_tiny_model_overfits_toy_pairs_and_decodes_them_exactly() -> None:
    torch.manual_seed(0)
    cfg = Seq2SeqConfig(src_vocab_size=19, tgt_vocab_size=19, pad_id=PAD, bos_id=BOS, eos_id=EOS, dim=32,
                        num_heads=4, enc_depth=2, dec_depth=2, mlp_ratio=2.0, dropout=0.0, max_len=16,
                        share_embeddings=True)
    model = Seq2Seq(cfg)
    pairs = toy_id_pairs()
    src = pad_batch([s for s, _ in pairs])
    tgt_in = pad_batch([[BOS] + t[:-1] for _, t in pairs])
    tgt_out = pad_batch([t for _, t in pairs])
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(300):
        logits = model(src, tgt_in)
        loss = F.cross_entropy(logits.reshape(-1, 19), tgt_out.reshape(-1), ignore_index=PAD)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.02
    model.eval()
    expected = tgt_out.numpy()
    for decoded in (greedy_decode(model, src), beam_search(model, src, beam_size=3)):
        np.testing.assert_array_equal(decoded.tokens[:, : expected.shape[1]], expected)
        assert np.all(decoded.tokens[:, expected.shape[1]:] == PAD)


def test_torch_stepper_wraps_a_model_and_numpy_steppers_pass_through() -> None:
    model = tiny_model()
    stepper = as_stepper(model)
    assert isinstance(stepper, TorchStepper)
    assert stepper.rules == DecodingRules(pad_id=PAD, bos_id=BOS, eos_id=EOS, max_len=24)
    assert as_stepper(stepper) is stepper
    src = rand_ids(2, 5, 23).numpy()
    a = greedy_decode(stepper, src, max_len=8)
    b = greedy_decode(model, torch.from_numpy(src), max_len=8)
    np.testing.assert_array_equal(a.tokens, b.tokens)
    out = stepper.step(np.full((2, 1), BOS), stepper.start(src), use_cache=True, return_attention=True)
    assert out.logits.dtype == np.float32 and out.logits.shape == (2, 19)
    assert out.attention.shape == (2, 2, 4, 5)  # (N, L, H, S)


class CountingState(NamedTuple):
    rows: np.ndarray
    calls: int


class TableStepper:
    """A numpy model without torch: the next token's logits depend on the last token only,
    from a fixed (V, V) table; ``src_ids`` only set the batch size."""

    def __init__(self, table: np.ndarray, rules: DecodingRules) -> None:
        self.table, self.rules = table, rules

    def start(self, src_ids: np.ndarray) -> CountingState:
        return CountingState(np.arange(src_ids.shape[0]), 0)

    def step(self, tokens: np.ndarray, state: CountingState, *, use_cache: bool,
             return_attention: bool) -> StepOutput:
        return StepOutput(self.table[tokens[:, -1]], state._replace(calls=state.calls + 1), None)

    def reorder(self, state: CountingState, index: np.ndarray) -> CountingState:
        return state._replace(rows=state.rows[index])


def test_searches_run_on_a_numpy_stepper() -> None:
    rules = DecodingRules(pad_id=0, bos_id=1, eos_id=2, max_len=10)
    table = np.full((6, 6), -5.0, dtype=np.float32)
    table[1, 3] = 0.0  # bos -> 3 -> 4 -> 5 -> eos
    table[3, 4] = table[4, 5] = table[5, 2] = 0.0
    src = np.full((2, 4), 3)
    greedy = greedy_decode(TableStepper(table, rules), src)
    assert greedy.tokens.tolist() == [[3, 4, 5, 2]] * 2 and greedy.attention is None
    expected = log_softmax(table)[[1, 3, 4, 5], [3, 4, 5, 2]].sum()
    np.testing.assert_allclose(greedy.scores, [expected] * 2, rtol=1e-6)
    beam = beam_search(TableStepper(table, rules), src, beam_size=2, length_penalty=1.0)
    assert beam.tokens.tolist() == [[3, 4, 5, 2]] * 2
    np.testing.assert_allclose(beam.scores, greedy.scores / gnmt_length_penalty(4, 1.0), rtol=1e-5)
    short = greedy_decode(TableStepper(table, rules), src, max_len=2)  # the last step can only end it
    assert short.tokens.tolist() == [[3, 2]] * 2


def test_decoding_is_torch_free() -> None:
    code = ("import sys, vit.decoding, vit.text_codec; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)
