"""A trained ViT -> ONNX graphs (export/vit_onnx.py): the traced graphs equal PyTorch for any
batch size, with and without the attention output; the export-time attention layout; the
metadata a checkpoint without a preprocess record gets; operator counts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY, onnx_outputs, torch_logits

from export.metadata import read_metadata
from export.vit_onnx import ExportModel, build_metadata, count_ops, output_names
from vit.attention import MultiHeadAttention
from vit.checkpoint import load_vit
from vit.preprocess import IMAGENET_MEAN
from vit.relevance import forward_with_contributions, logit_offset, token_logits
from vit.rollout import attention_rollout, class_rollout, contribution_rollout
from vit.vit import ViT, ViTConfig


@pytest.mark.parametrize("batch", [1, 3, 64])
def test_one_file_serves_any_batch_size(tiny_onnx: Path, tiny_checkpoint: Path, batch: int) -> None:
    x = np.random.default_rng(batch).standard_normal((batch, 3, 32, 32)).astype(np.float32)
    (logits,) = onnx_outputs(tiny_onnx, x)
    assert logits.shape == (batch, TINY["num_classes"])
    np.testing.assert_allclose(logits, torch_logits(tiny_checkpoint, x), atol=1e-4)


def test_attention_output_matches_pytorch_and_its_rollout(tiny_onnx_attention: Path,
                                                          tiny_checkpoint: Path) -> None:
    model, _ = load_vit(tiny_checkpoint)
    x = np.random.default_rng(2).standard_normal((3, 3, 32, 32)).astype(np.float32)
    logits, attention, contributions = onnx_outputs(tiny_onnx_attention, x)
    with torch.no_grad():
        ref_logits, weights = model(torch.from_numpy(x), return_attention=True)
        _, _, ref_contributions = forward_with_contributions(model, torch.from_numpy(x))
    ref = torch.stack(weights, 1).numpy()
    assert attention.shape == (3, TINY["depth"], TINY["num_heads"], 17, 17)  # (B, L, H, N, N)
    np.testing.assert_allclose(logits, ref_logits.numpy(), atol=1e-4)
    np.testing.assert_allclose(attention, ref, atol=1e-5)
    np.testing.assert_allclose(attention_rollout(attention, grid=(4, 4)), attention_rollout(ref, grid=(4, 4)),
                               rtol=1e-4, atol=1e-6)
    assert contributions.shape == (3, TINY["depth"], 17, 17)  # (B, L, N, N)
    np.testing.assert_allclose(contributions, ref_contributions.numpy(), atol=1e-5)
    np.testing.assert_allclose(contribution_rollout(contributions, grid=(4, 4)),
                               contribution_rollout(ref_contributions.numpy(), grid=(4, 4)),
                               rtol=1e-4, atol=1e-6)
    assert read_metadata(tiny_onnx_attention).outputs == ["logits", "attention", "contributions"]


def test_export_only_attention_layout_equals_the_model() -> None:
    torch.manual_seed(0)
    model = ViT(ViTConfig(**{**TINY, "qkv_bias": True})).eval()
    for p in model.parameters():  # non-trivial biases, unlike the zero init
        p.data += 0.05 * torch.randn_like(p)
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(ExportModel(model)(x), model(x), atol=1e-5, rtol=1e-5)
        logits, weights, contributions = ExportModel(model, return_attention=True)(x)
        assert contributions.shape == (4, TINY["depth"], 17, 17)
        assert weights.shape == (4, TINY["depth"], TINY["num_heads"], 17, 17)
    assert all(not m.split_qkv for m in model.modules() if isinstance(m, MultiHeadAttention))  # a copy


def test_token_logits_output_equals_pytorch_and_sums_to_the_logits(tiny_onnx_token_logits: Path,
                                                                   tiny_avg_checkpoint: Path) -> None:
    """Average-pooling files also carry each token's share of every class logit; the
    class-specific map computed from the file alone equals the one from PyTorch."""
    model, _ = load_vit(tiny_avg_checkpoint)
    x = np.random.default_rng(0).standard_normal((3, 3, 32, 32)).astype(np.float32)
    logits, attention, shares, _ = onnx_outputs(tiny_onnx_token_logits, x)
    outputs = ["logits", "attention", "token_logits", "contributions"]
    assert read_metadata(tiny_onnx_token_logits).outputs == outputs
    with torch.no_grad():
        tokens, weights = model.forward_features(torch.from_numpy(x), return_attention=True)
        want = token_logits(model, tokens).numpy()  # (B, Gh*Gw, K)
    assert shares.shape == (3, 16, 3)
    np.testing.assert_allclose(shares, want, atol=1e-5)
    np.testing.assert_allclose(shares.sum(axis=1) + logit_offset(model).detach().numpy(), logits, atol=1e-4)
    torch_maps = class_rollout(torch.stack(weights, 1).numpy(), want, [0, 1, 2], grid=(4, 4))
    onnx_maps = class_rollout(attention, shares, [0, 1, 2], grid=(4, 4))
    np.testing.assert_allclose(onnx_maps, torch_maps, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(onnx_maps.sum(axis=(1, 2)), (shares.sum(axis=1))[np.arange(3), [0, 1, 2]],
                               rtol=1e-5)  # rollout rows sum to 1: the map keeps the class's total


def test_output_names_and_graph_layouts(tiny_onnx: Path, tiny_onnx_attention: Path) -> None:
    """The logits-only graph has the split q/k/v layout (three projections on plain weights per
    block, no slices of the packed weight); the attention graph keeps the packed ``qkv``."""
    assert output_names(False) == ["logits"]
    assert output_names(True) == ["logits", "attention", "contributions"]
    assert output_names(True, token_logits=True) == ["logits", "attention", "token_logits", "contributions"]
    ops = ("LayerNormalization", "Softmax", "MatMul", "Slice", "NoSuchOp")
    split, packed = count_ops(tiny_onnx, ops), count_ops(tiny_onnx_attention, ops)
    depth = TINY["depth"]
    for counts in (split, packed):  # norm1, norm2 per block and the final norm; one softmax per block
        assert counts["LayerNormalization"] == 2 * depth + 1 and counts["Softmax"] == depth
        assert "NoSuchOp" not in counts
    assert "Slice" not in split and packed["Slice"] > 0
    assert split["MatMul"] - packed["MatMul"] == 2 * depth  # q, k, v instead of one qkv


def test_metadata_of_a_checkpoint_without_preprocess_record(caplog: pytest.LogCaptureFixture) -> None:
    model = ViT(ViTConfig(image_size=32, patch_size=8, dim=32, depth=1, num_heads=2, num_classes=2))
    record = {"config": model.config.to_dict(), "class_names": None, "preprocess": None, "val_acc": None,
              "source": "timm checkpoint t.pth"}
    meta = build_metadata(model, record, checkpoint="t.pth", return_attention=True)
    assert meta.class_names == ["class_0", "class_1"]
    assert meta.outputs == ["logits", "attention", "contributions"]
    assert meta.preprocess["crop_size"] == 32 and meta.preprocess["resize_size"] == 36
    assert tuple(meta.preprocess["mean"]) == IMAGENET_MEAN and meta.preprocess["interpolation"] == "bicubic"
    assert "no preprocess record" in caplog.text
    bad = {**record, "preprocess": {"crop_size": 24, "resize_size": 24}}
    with pytest.raises(ValueError, match="does not match the model's input size"):
        build_metadata(model, bad, checkpoint="t.pth", return_attention=False)
