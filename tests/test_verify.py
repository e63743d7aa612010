"""ONNX = PyTorch (export/verify.py): the PyTorch reference, the exported file run in batches of
1, 3 and 64, and the parity report that passes or names what failed."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY

from export.verify import TOLERANCES, check_parity, run_onnx, torch_reference
from vit.checkpoint import load_vit

LAYOUT = dict(grid=(4, 4), num_prefix_tokens=1, pool="token")


@pytest.fixture(scope="module")
def inputs() -> np.ndarray:
    return np.random.default_rng(5).standard_normal((70, 3, 32, 32)).astype(np.float32)


def test_torch_reference_logits_and_attention(tiny_checkpoint: Path, inputs: np.ndarray) -> None:
    model, _ = load_vit(tiny_checkpoint)
    ref = torch_reference(model, inputs[:5], name="random", return_attention=True, batch_size=2)
    with torch.no_grad():
        logits, weights = model(torch.from_numpy(inputs[:5]), return_attention=True)
    assert ref.name == "random" and ref.labels is None
    np.testing.assert_allclose(ref.logits, logits.numpy(), atol=1e-6)
    np.testing.assert_allclose(ref.attention, torch.stack(weights, 1).numpy(), atol=1e-6)
    assert ref.attention.shape == (5, TINY["depth"], TINY["num_heads"], 17, 17)
    assert ref.contributions.shape == (5, TINY["depth"], 17, 17)
    np.testing.assert_allclose(ref.contributions.sum(-1), 1.0, atol=1e-5)
    plain = torch_reference(model, inputs[:5], name="random", return_attention=False)
    assert plain.attention is None and plain.contributions is None
    np.testing.assert_allclose(plain.logits, ref.logits, atol=1e-5)


def test_run_onnx_over_batch_sizes_equals_one_batch(tiny_onnx_attention: Path, inputs: np.ndarray) -> None:
    out = run_onnx(tiny_onnx_attention, inputs)  # batches of 1, 3, 64, 2
    assert set(out) == {"logits", "attention", "contributions"}
    assert out["logits"].shape == (70, TINY["num_classes"])
    whole = run_onnx(tiny_onnx_attention, inputs[4:68])  # one batch of 1, 3, then 60
    np.testing.assert_allclose(out["logits"][4:68], whole["logits"], atol=1e-5)
    np.testing.assert_allclose(out["attention"][4:68], whole["attention"], atol=1e-6)
    np.testing.assert_allclose(out["contributions"][4:68], whole["contributions"], atol=1e-6)


def test_parity_report_passes_and_names_failures(tiny_checkpoint: Path, tiny_onnx_attention: Path,
                                                 tiny_onnx: Path, inputs: np.ndarray) -> None:
    model, _ = load_vit(tiny_checkpoint)
    labels = np.array([0, 1, 2, -1] * 5)
    ref = torch_reference(model, inputs[:20], name="images", return_attention=True, labels=labels)
    report = check_parity(tiny_onnx_attention, ref, variant="fp32", tolerance=TOLERANCES["fp32"], **LAYOUT)
    assert report.passed and report.count == 20 and report.top1_agreement == 1.0
    assert report.max_logit_diff < 1e-4 and report.attention_diff < 1e-4 and report.rollout_diff < 1e-4
    assert report.contributions_diff < 1e-4 and "max|dcontrib|=" in report.line()
    assert report.accuracy == report.reference_accuracy  # over the 15 known labels
    assert report.line().endswith("ok") and "acc=" in report.line() and "max|dattn|=" in report.line()
    strict = replace(TOLERANCES["fp32"], atol=-1.0, attention_atol=-1.0, rollout_rtol=-1.0,
                     contributions_atol=-1.0)
    failed = check_parity(tiny_onnx_attention, ref, variant="fp32", tolerance=strict, **LAYOUT)
    assert not failed.passed and len(failed.failures) == 4  # logits, attention, rollout, contributions
    assert "FAILED: max logit difference" in failed.line() and "attention difference" in failed.line()
    missing = check_parity(tiny_onnx, ref, variant="fp32", tolerance=TOLERANCES["fp32"], **LAYOUT)
    assert missing.failures == ["no attention output"]


def test_tolerances_loosen_from_fp32_to_int8() -> None:
    fp32, fp16, int8 = TOLERANCES["fp32"], TOLERANCES["fp16"], TOLERANCES["int8"]
    assert fp32.atol <= fp16.atol <= int8.atol and fp32.min_top1_agreement == 1.0
    assert fp32.min_top1_agreement >= fp16.min_top1_agreement >= int8.min_top1_agreement
