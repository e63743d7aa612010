"""ONNX = PyTorch: compare an exported file with the model it came from.

The PyTorch model (running :mod:`vit.attention`) gives the reference once per input
set; every exported variant is run on the same inputs through onnxruntime, in batches
of 1, 3 and 64 so the dynamic batch dimension is exercised. Shape letters: B batch,
K classes, L layers, H heads, N tokens, Gh/Gw patch grid.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from vit.relevance import forward_with_contributions, token_logits
from vit.rollout import attention_rollout
from vit.vit import ViT

from .gate import over_limits
from .vit_onnx import has_token_logits

logger = logging.getLogger(__name__)

BATCH_SIZES = (1, 3, 64)  # cycled through when running the ONNX file


@dataclass(frozen=True)
class Tolerance:
    """Pass criteria. Logits: max |onnx - torch| <= atol + rtol * max |torch|. Top-1: the
    fraction of images whose arg-max agrees. Attention: max abs difference of the weights;
    rollout: max abs difference of the rollout maps relative to their largest value;
    contributions: max abs difference of the blocks' contributions, which come from
    differences of vector norms and so carry about ten times the weights' rounding (1.4e-4
    on a small test model in float32, where its attention moved by 2e-6)."""

    atol: float
    rtol: float
    min_top1_agreement: float
    attention_atol: float
    rollout_rtol: float
    contributions_atol: float


TOLERANCES = {
    "fp32": Tolerance(atol=1e-4, rtol=0.0, min_top1_agreement=1.0, attention_atol=1e-4, rollout_rtol=1e-4,
                      contributions_atol=1e-3),
    # float16 keeps ~3 significant digits per op; near-ties may flip.
    "fp16": Tolerance(atol=2e-2, rtol=2e-2, min_top1_agreement=0.99, attention_atol=1e-2, rollout_rtol=1e-2,
                      contributions_atol=5e-2),
    # dynamic int8 quantizes every matmul input per tensor: single attention weights move by up
    # to ~0.1 where attention is sharp (measured 0.11 on a CIFAR model), while the rollout maps,
    # which the demo draws, stay within ~1%.
    "int8": Tolerance(atol=0.1, rtol=0.1, min_top1_agreement=0.97, attention_atol=0.25, rollout_rtol=5e-2,
                      contributions_atol=0.25),
}


@dataclass
class Reference:
    """PyTorch outputs for one input set; ``labels`` are class indices (-1: unknown)."""

    name: str
    inputs: np.ndarray  # (B, 3, H, W) float32
    logits: np.ndarray  # (B, K)
    attention: np.ndarray | None  # (B, L, H, N, N)
    labels: np.ndarray | None = None
    token_logits: np.ndarray | None = None  # (B, Gh*Gw, K), average-pooling models
    contributions: np.ndarray | None = None  # (B, L, N, N), with attention


@dataclass
class ParityReport:
    """One variant on one input set."""

    variant: str
    inputs: str
    count: int
    max_logit_diff: float
    top1_agreement: float
    attention_diff: float | None = None
    rollout_diff: float | None = None
    token_logits_diff: float | None = None
    contributions_diff: float | None = None
    accuracy: float | None = None
    reference_accuracy: float | None = None
    failures: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.failures

    def line(self) -> str:
        parts = [f"{self.variant:<15} {self.inputs:<7} n={self.count:<4} "
                 f"max|dlogit|={self.max_logit_diff:.2e}  top-1 agree={self.top1_agreement:.2%}"]
        if self.attention_diff is not None:
            parts.append(f"max|dattn|={self.attention_diff:.2e}")
        if self.rollout_diff is not None:
            parts.append(f"max|drollout|={self.rollout_diff:.2e}")
        if self.token_logits_diff is not None:
            parts.append(f"max|dtoken_logits|={self.token_logits_diff:.2e}")
        if self.contributions_diff is not None:
            parts.append(f"max|dcontrib|={self.contributions_diff:.2e}")
        if self.accuracy is not None:
            parts.append(f"acc={self.accuracy:.2%} (torch fp32 {self.reference_accuracy:.2%})")
        parts.append("ok" if self.passed else "FAILED: " + "; ".join(self.failures))
        return "  ".join(parts)


def torch_reference(model: ViT, inputs: np.ndarray, *, name: str, return_attention: bool,
                    labels: np.ndarray | None = None, batch_size: int = 64) -> Reference:
    """Run the PyTorch model (eval mode, float32) on ``inputs``; with ``return_attention``
    also its attention weights, the blocks' contributions and, for average-pooling models,
    ``token_logits``."""
    model.eval()
    shares = return_attention and has_token_logits(model)
    logits, weights, token_shares, contributions = [], [], [], []
    with torch.no_grad():
        for start in range(0, len(inputs), batch_size):
            x = torch.from_numpy(inputs[start:start + batch_size])
            if return_attention:
                tokens, w, c = forward_with_contributions(model, x)  # (B, N, D), ..., (B, L, N, N)
                out = model.forward_head(tokens)
                weights.append(torch.stack(w, dim=1).numpy())  # (B, L, H, N, N)
                contributions.append(c.numpy())
                if shares:
                    token_shares.append(token_logits(model, tokens).numpy())  # (B, Gh*Gw, K)
            else:
                out = model(x)
            logits.append(out.numpy())
    return Reference(name, inputs, np.concatenate(logits),
                     np.concatenate(weights) if return_attention else None, labels,
                     np.concatenate(token_shares) if shares else None,
                     np.concatenate(contributions) if return_attention else None)


def run_onnx(path: str | Path, inputs: np.ndarray) -> dict[str, np.ndarray]:
    """All outputs of the ONNX file on ``inputs``, run in batches of 1, 3, 64, 64, ..."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    outputs: dict[str, list[np.ndarray]] = {o.name: [] for o in session.get_outputs()}
    start, i = 0, 0
    while start < len(inputs):
        size = BATCH_SIZES[min(i, len(BATCH_SIZES) - 1)]
        results = session.run(None, {name: inputs[start:start + size]})
        for key, value in zip(outputs, results, strict=True):
            outputs[key].append(np.asarray(value, dtype=np.float32))
        start, i = start + size, i + 1
    return {key: np.concatenate(values) for key, values in outputs.items()}


def check_parity(path: str | Path, ref: Reference, *, variant: str, tolerance: Tolerance,
                 grid: tuple[int, int], num_prefix_tokens: int, pool: str) -> ParityReport:
    """Compare the ONNX file at ``path`` with the PyTorch reference."""
    got = run_onnx(path, ref.inputs)
    logits = got["logits"]
    diff = float(np.abs(logits - ref.logits).max())
    agree = float((logits.argmax(1) == ref.logits.argmax(1)).mean())
    report = ParityReport(variant, ref.name, len(ref.inputs), diff, agree)
    bound = tolerance.atol + tolerance.rtol * float(np.abs(ref.logits).max())
    report.failures += over_limits([("max logit difference", diff, bound)])  # NaN fails too
    if agree < tolerance.min_top1_agreement:
        report.failures.append(f"top-1 agrees on {agree:.2%} < {tolerance.min_top1_agreement:.0%}")
    if ref.attention is not None:
        if "attention" not in got:
            report.failures.append("no attention output")
        else:
            _compare_attention(report, got["attention"], ref.attention, tolerance,
                               grid=grid, num_prefix_tokens=num_prefix_tokens, pool=pool)
    if ref.token_logits is not None:
        if "token_logits" not in got:
            report.failures.append("no token_logits output")
        else:
            report.token_logits_diff = float(np.abs(got["token_logits"] - ref.token_logits).max())
            report.failures += over_limits([("token_logits difference", report.token_logits_diff, bound)])
    if ref.contributions is not None and "contributions" in got:  # files before December 2026 lack it
        report.contributions_diff = float(np.abs(got["contributions"] - ref.contributions).max())
        report.failures += over_limits([("contributions difference", report.contributions_diff,
                                         tolerance.contributions_atol)])
    if ref.labels is not None and (ref.labels >= 0).any():
        known = ref.labels >= 0
        report.accuracy = float((logits.argmax(1) == ref.labels)[known].mean())
        report.reference_accuracy = float((ref.logits.argmax(1) == ref.labels)[known].mean())
    return report


def _compare_attention(report: ParityReport, got: np.ndarray, want: np.ndarray, tolerance: Tolerance,
                       *, grid: tuple[int, int], num_prefix_tokens: int, pool: str) -> None:
    if got.shape != want.shape:
        report.failures.append(f"attention shape {got.shape} != {want.shape}")
        return
    report.attention_diff = float(np.abs(got - want).max())
    rollout = lambda w: attention_rollout(w, num_prefix_tokens=num_prefix_tokens, grid=grid, pool=pool)
    ours, theirs = rollout(got), rollout(want)  # (B, Gh, Gw) each
    # rollout values are relevances of order 1 / (Gh * Gw); compare relative to their scale
    report.rollout_diff = float(np.abs(ours - theirs).max() / max(np.abs(theirs).max(), 1e-12))
    report.failures += over_limits([
        ("attention difference", report.attention_diff, tolerance.attention_atol),
        ("relative rollout difference", report.rollout_diff, tolerance.rollout_rtol),
    ])
