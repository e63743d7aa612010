"""Greedy decoding and beam search over a step interface, batched, on the KV cache.

Torch-free (numpy): the same two searches decode a PyTorch model and an ONNX export.
A model takes part through three calls (:class:`Stepper`): ``start(src_ids)`` -> state,
``step(tokens, state)`` -> next-token logits and the new state (``tokens`` is the whole
prefix, BOS first; a model with a cache runs only the new position), and
``reorder(state, index)`` -> the state of the rows ``index`` (beam search keeps, repeats
and drops rows). :class:`vit.seq2seq.Seq2Seq` offers them in torch (wrapped here by
:class:`TorchStepper`), the ONNX translator in numpy; a decoder-only model would offer the
same three. What may be generated when is :class:`vit.text_codec.DecodingRules`, the one
place those rules are written.

Shape letters: B batch, K beam width, S source length, T generated length, V target
vocabulary, L decoder layers, H heads (1 where a back end averages them).

Beam search: at each step the 2K best continuations are ranked by summed
log-probability; those ending in ``eos`` among the first K become finished hypotheses
(fairseq's rule), the first K others stay active. Finished hypotheses are scored with the
GNMT length penalty (Wu et al. 2016): ``score / ((5 + |Y|) / 6) ** length_penalty``, with
|Y| counting ``eos``; ``length_penalty=0`` compares raw log-probabilities, 1 is close to
per-token normalisation. Each sentence keeps its K best finished hypotheses and is done
when it has K and its best active beam, scored at its current length, is no better than
the worst of them (Hugging Face's default stopping rule; stopping at the first K finished,
as fairseq does, lets unlikely short hypotheses end the search before the likely ones).
With K=1 it returns exactly what greedy decoding returns.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Protocol

import numpy as np

from .text_codec import DecodingRules


class StepOutput(NamedTuple):
    """``logits`` (N, V) float32 of the next token; the new ``state``; the step's
    cross-attention (N, L, H, S) when asked for."""

    logits: np.ndarray
    state: Any
    attention: np.ndarray | None


class Stepper(Protocol):
    """A model as the searches see it (numpy in, numpy out)."""

    rules: DecodingRules

    def start(self, src_ids: np.ndarray) -> Any: ...

    def step(self, tokens: np.ndarray, state: Any, *, use_cache: bool,
             return_attention: bool) -> StepOutput: ...

    def reorder(self, state: Any, index: np.ndarray) -> Any: ...


class Generation(NamedTuple):
    """``tokens`` (B, T): generated ids without BOS, ending in EOS, right-padded with pad;
    ``scores`` (B,): summed log-probability (greedy) or length-penalised score (beam);
    ``attention``: when asked for, (B, L, H, T, S) -- the cross-attention of the step that
    produced each token (zero rows after a hypothesis ended)."""

    tokens: np.ndarray
    scores: np.ndarray
    attention: np.ndarray | None


class TorchStepper:
    """:class:`Stepper` for a PyTorch model with ``start``/``step``/``reorder`` (such as
    :class:`vit.seq2seq.Seq2Seq`): converts at the boundary, runs without gradients."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.rules = DecodingRules.of(model.config)
        self.device = next(model.parameters()).device

    def start(self, src_ids: np.ndarray) -> Any:
        import torch

        with torch.no_grad():
            return self.model.start(torch.as_tensor(src_ids, device=self.device))

    def step(self, tokens: np.ndarray, state: Any, *, use_cache: bool, return_attention: bool) -> StepOutput:
        import torch

        with torch.no_grad():
            out = self.model.step(torch.as_tensor(tokens, device=self.device), state, use_cache=use_cache,
                                  return_attention=return_attention)
        attention = None if out.attention is None else out.attention.float().cpu().numpy()
        return StepOutput(out.logits.float().cpu().numpy(), out.state, attention)

    def reorder(self, state: Any, index: np.ndarray) -> Any:
        import torch

        return self.model.reorder(state, torch.as_tensor(index, device=self.device))


def as_stepper(model: Any) -> Stepper:
    """``model`` itself, or a :class:`TorchStepper` around a PyTorch module."""
    return TorchStepper(model) if hasattr(model, "parameters") else model


def as_array(ids: Any) -> np.ndarray:
    """Token ids (numpy, or a torch tensor on any device) as an int64 numpy array."""
    if hasattr(ids, "cpu"):
        ids = ids.cpu().numpy()
    return np.asarray(ids, dtype=np.int64)


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise log-softmax in float32: (N, V) -> (N, V)."""
    z = logits.astype(np.float32) - logits.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def greedy_decode(
    model: Any,
    src_ids: Any,
    *,
    max_len: int | None = None,
    min_len: int = 0,
    use_cache: bool = True,
    return_attention: bool = False,
) -> Generation:
    """Pick the most probable token at each step. src_ids (B, S) -> :class:`Generation`."""
    stepper = as_stepper(model)
    rules = stepper.rules
    src = as_array(src_ids)
    steps = rules.steps(src.shape[1], max_len, min_len)
    state = stepper.start(src)
    b = src.shape[0]
    tokens = np.full((b, 1), rules.bos_id, dtype=np.int64)  # (B, 1)
    scores = np.zeros(b, dtype=np.float32)
    done = np.zeros(b, dtype=bool)
    history: list[np.ndarray] = []
    for t in range(steps):
        out = stepper.step(tokens, state, use_cache=use_cache, return_attention=return_attention)
        state = out.state
        logp = rules.apply(log_softmax(out.logits), t, steps, min_len)  # (B, V)
        nxt = logp.argmax(axis=-1)  # (B,)
        best = logp[np.arange(b), nxt]
        nxt = np.where(done, rules.pad_id, nxt)
        scores += np.where(done, 0.0, best).astype(np.float32)
        tokens = np.concatenate([tokens, nxt[:, None]], axis=1)  # (B, t + 2)
        if out.attention is not None:
            history.append(out.attention)
        done |= nxt == rules.eos_id
        if done.all():
            break
    attention = np.stack(history, axis=3) if return_attention else None  # (B, L, H, T, S)
    return Generation(tokens[:, 1:], scores, attention)


def gnmt_length_penalty(length: int, alpha: float) -> float:
    """((5 + length) / 6) ** alpha (Wu et al. 2016, eq. 14)."""
    return ((5.0 + length) / 6.0) ** alpha


class _Finished(NamedTuple):
    score: float
    tokens: np.ndarray  # (T,)
    attention: np.ndarray | None  # (L, H, T, S)


def beam_search(
    model: Any,
    src_ids: Any,
    *,
    beam_size: int = 4,
    length_penalty: float = 0.6,
    max_len: int | None = None,
    min_len: int = 0,
    use_cache: bool = True,
    return_attention: bool = False,
) -> Generation:
    """Batched beam search (see the module docstring). src_ids (B, S) -> best hypothesis each."""
    stepper = as_stepper(model)
    rules = stepper.rules
    if beam_size < 1:
        raise ValueError(f"beam_size must be >= 1, got {beam_size}")
    src = as_array(src_ids)
    steps = rules.steps(src.shape[1], max_len, min_len)
    b, k = src.shape[0], beam_size
    # every sentence's state repeated for its K beams
    state = stepper.reorder(stepper.start(src), np.repeat(np.arange(b), k))
    tokens = np.full((b * k, 1), rules.bos_id, dtype=np.int64)  # (BK, 1)
    scores = np.full((b, k), -np.inf, dtype=np.float32)
    scores[:, 0] = 0.0  # only the first beam is alive at the start
    base = (np.arange(b) * k)[:, None]  # (B, 1)
    rank = np.arange(2 * k)  # (2K,)
    finished: list[list[_Finished]] = [[] for _ in range(b)]
    done = [False] * b
    history: np.ndarray | None = None  # (BK, L, H, t, S)
    for t in range(steps):
        out = stepper.step(tokens, state, use_cache=use_cache, return_attention=return_attention)
        logp = rules.apply(log_softmax(out.logits), t, steps, min_len)  # (BK, V)
        vocab = logp.shape[-1]
        if k > vocab - 3:
            raise ValueError(f"beam_size {beam_size} is larger than the usable vocabulary")
        cand = (scores[:, :, None] + logp.reshape(b, k, vocab)).reshape(b, k * vocab)  # (B, KV)
        top_idx = np.argpartition(-cand, 2 * k - 1, axis=1)[:, : 2 * k]  # (B, 2K), unordered
        top_idx = np.take_along_axis(top_idx, np.argsort(-np.take_along_axis(cand, top_idx, 1), axis=1,
                                                         kind="stable"), 1)
        top_scores = np.take_along_axis(cand, top_idx, 1)  # (B, 2K), best first
        beam_idx, tok = top_idx // vocab, top_idx % vocab  # (B, 2K)
        step_attention = None
        if out.attention is not None:
            now = out.attention[:, :, :, None]  # (BK, L, H, 1, S)
            step_attention = now if history is None else np.concatenate([history, now], axis=3)
        is_eos = tok == rules.eos_id
        final = is_eos & (rank < k) & np.isfinite(top_scores)  # (B, 2K)
        for i, j in zip(*np.nonzero(final), strict=True):
            if done[i]:
                continue
            row = int(base[i, 0] + beam_idx[i, j])
            hyp = np.concatenate([tokens[row, 1:], tok[i, j : j + 1]])  # (t + 1,)
            attn = None if step_attention is None else step_attention[row]
            score = float(top_scores[i, j]) / gnmt_length_penalty(t + 1, length_penalty)
            _keep_best(finished[i], _Finished(score, hyp, attn), k)
        # the K best continuations that do not end in EOS stay active (at most K end in EOS)
        order = np.argsort(is_eos * 2 * k + rank, axis=1, kind="stable")[:, :k]  # (B, K)
        scores = np.take_along_axis(top_scores, order, 1)
        rows = (base + np.take_along_axis(beam_idx, order, 1)).reshape(-1)  # (BK,)
        tokens = np.concatenate([tokens[rows], np.take_along_axis(tok, order, 1).reshape(-1, 1)], axis=1)
        state = stepper.reorder(out.state, rows)
        if step_attention is not None:
            history = step_attention[rows]
        best_active = scores.max(axis=1) / gnmt_length_penalty(t + 1, length_penalty)
        for i, f in enumerate(finished):
            done[i] = done[i] or (len(f) == k and best_active[i] <= min(h.score for h in f))
        if all(done):
            break
    return _collect(finished, rules.pad_id)


def _keep_best(pool: list[_Finished], hyp: _Finished, k: int) -> None:
    """Add ``hyp`` to a sentence's finished hypotheses, keeping the K best."""
    if len(pool) < k:
        pool.append(hyp)
        return
    worst = min(range(k), key=lambda i: pool[i].score)
    if hyp.score > pool[worst].score:
        pool[worst] = hyp


def _collect(finished: list[list[_Finished]], pad_id: int) -> Generation:
    best = [max(f, key=lambda h: h.score) for f in finished]
    length = max(h.tokens.shape[0] for h in best)
    tokens = np.full((len(best), length), pad_id, dtype=np.int64)  # (B, T)
    for i, h in enumerate(best):
        tokens[i, : h.tokens.shape[0]] = h.tokens
    scores = np.array([h.score for h in best], dtype=np.float32)
    attention = None
    if best[0].attention is not None:
        pad = lambda a: np.pad(a, ((0, 0), (0, 0), (0, length - a.shape[2]), (0, 0)))  # (L, H, T, S)
        attention = np.stack([pad(h.attention) for h in best])  # (B, L, H, T, S)
    return Generation(tokens, scores, attention)
