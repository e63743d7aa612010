"""The from-scratch ViT: exact parity with timm, attention maps, resizing, input checks."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from timm.models.vision_transformer import VisionTransformer

from vit import ViT, ViTConfig
from vit.checkpoint import load_vit, save_safetensors

PARITY = [  # (patch, image, pool, layer scale)
    (4, 32, "token", None),
    (4, 32, "avg", 1e-5),
    (8, 32, "token", 1e-5),
    (8, 32, "avg", None),
    (16, 224, "token", None),
    (16, 224, "avg", 0.1),
    (16, 32, "token", 0.1),
]


def timm_vit(patch: int, image: int, pool: str, ls: float | None, **kw) -> VisionTransformer:
    torch.manual_seed(patch + image)
    model = VisionTransformer(
        img_size=image, patch_size=patch, embed_dim=kw.get("dim", 96), depth=kw.get("depth", 3),
        num_heads=kw.get("heads", 3), mlp_ratio=kw.get("mlp_ratio", 2.0), num_classes=10,
        global_pool=pool, class_token=pool == "token", init_values=ls,
        dynamic_img_size=kw.get("dynamic_img_size", False),
    )
    with torch.no_grad():  # timm inits layer scale / biases to constants: randomize for a fair test
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return model.eval()


@pytest.mark.parametrize("patch,image,pool,ls", PARITY)
def test_logits_equal_timm(patch: int, image: int, pool: str, ls: float | None) -> None:
    ref = timm_vit(patch, image, pool, ls)
    model = ViT.from_timm(ref).eval()
    x = torch.randn(2, 3, image, image)
    with torch.no_grad():
        expected = ref(x)
        diff = (model(x) - expected).abs().max().item()
        diff_explicit = (model(x, return_attention=True)[0] - expected).abs().max().item()
    print(f"parity patch={patch} image={image} pool={pool} ls={ls}:{diff:.2e} (explicit {diff_explicit:.1e})")
    assert diff <= 1e-5 and diff_explicit <= 1e-5


def test_from_state_dict_and_files(tmp_path: Path) -> None:
    ref = timm_vit(4, 32, "avg", 1e-5, dim=128, heads=2)  # 64-wide heads are inferred
    x = torch.randn(2, 3, 32, 32)
    expected = ref(x)
    torch.save(ref.state_dict(), tmp_path / "timm.pth")
    save_file(ref.state_dict(), str(tmp_path / "timm.safetensors"))
    for source in (ref.state_dict(), tmp_path / "timm.pth", str(tmp_path / "timm.safetensors")):
        model = ViT.from_timm(source).eval()
        assert model.config.num_heads == 2 and model.config.global_pool == "avg"
        torch.testing.assert_close(model(x), expected, atol=1e-5, rtol=0)
    model = ViT.from_pretrained(tmp_path / "timm.pth")
    torch.testing.assert_close(model(x), expected, atol=1e-5, rtol=0)


def test_unmappable_checkpoint_names_first_key() -> None:
    state = timm_vit(4, 32, "token", None).state_dict()
    state["reg_token"] = torch.zeros(1, 4, 96)
    with pytest.raises(ValueError, match="'reg_token'"):
        ViT.from_timm(state)
    state = timm_vit(4, 32, "token", None).state_dict()
    del state["blocks.1.mlp.fc2.bias"]
    with pytest.raises(ValueError, match="blocks.1.mlp.fc2.bias"):
        ViT.from_timm(state)
    with pytest.raises(TypeError, match="VisionTransformer"):
        ViT.from_timm(42)


def test_attention_weights_shape_and_rows() -> None:
    model = ViT(ViTConfig(image_size=32, patch_size=8, dim=48, depth=2, num_heads=3, num_classes=5)).eval()
    logits, weights = model(torch.randn(4, 3, 32, 32), return_attention=True)
    assert logits.shape == (4, 5)
    assert len(weights) == 2
    for w in weights:
        assert w.shape == (4, 3, 17, 17)
        assert torch.all(w >= 0)
        torch.testing.assert_close(w.sum(-1), torch.ones(4, 3, 17))


def test_runs_at_other_resolution_like_timm() -> None:
    ref = timm_vit(4, 32, "token", None, dynamic_img_size=True)  # timm resizes pos. embeddings
    model = ViT.from_timm(ref).eval()
    x = torch.randn(2, 3, 48, 48)
    with torch.no_grad():
        out = model(x)
        torch.testing.assert_close(out, ref(x), atol=1e-5, rtol=0)
    assert out.shape == (2, 10)
    _, weights = model(torch.randn(1, 3, 48, 64), return_attention=True)  # non-square grid
    assert weights[0].shape[-1] == 1 + 12 * 16


def test_set_image_size_keeps_function() -> None:
    model = ViT(ViTConfig(image_size=32, patch_size=4, dim=48, depth=1, num_heads=2, num_classes=3)).eval()
    x = torch.randn(1, 3, 48, 48)
    before = model(x)
    model.set_image_size(48)
    assert model.pos_embed.shape[1] == 1 + 144 and model.config.image_size == 48
    torch.testing.assert_close(model(x), before)


def test_bad_input_is_a_clear_error() -> None:
    model = ViT(ViTConfig(image_size=32, patch_size=8, dim=48, depth=1, num_heads=3, num_classes=3))
    with pytest.raises(ValueError, match=r"expected images of shape \(B, 3, H, W\)"):
        model(torch.randn(1, 1, 32, 32))
    with pytest.raises(ValueError, match="not divisible by patch size 8"):
        model(torch.randn(1, 3, 30, 32))
    with pytest.raises(ValueError, match="expected images"):
        model(torch.randn(3, 32, 32))
    padded = ViT(ViTConfig(image_size=30, patch_size=8, dim=48, depth=1, num_heads=3,
                           num_classes=3, dynamic_img_pad=True))
    assert padded(torch.randn(2, 3, 30, 30)).shape == (2, 3)
    with pytest.raises(ValueError, match="num_heads"):
        ViTConfig(dim=50, num_heads=3)
    with pytest.raises(ValueError, match="not divisible by patch_size"):
        ViTConfig(image_size=30, patch_size=8)
    with pytest.raises(ValueError, match="class_token"):
        ViTConfig(class_token=False, global_pool="token")


def test_project_safetensors_round_trip(tmp_path: Path) -> None:
    model = ViT(ViTConfig(image_size=32, patch_size=4, dim=48, depth=2, num_heads=2, num_classes=3)).eval()
    record = {"config": model.config.to_dict(), "class_names": ["a", "b", "c"], "preprocess": None,
              "val_acc": 0.5, "source": "test"}
    save_safetensors(model, record, tmp_path / "m.safetensors")
    loaded, meta = load_vit(tmp_path / "m.safetensors")
    assert meta["class_names"] == ["a", "b", "c"]
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(loaded(x), model(x))
    with pytest.raises(FileNotFoundError, match="no such checkpoint"):
        load_vit(tmp_path / "missing.ckpt")


def test_conv_stem_tokens_resizing_and_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(0)
    cfg = ViTConfig(image_size=32, patch_size=4, stem="conv", stem_width=16, dim=48, depth=2, num_heads=2,
                    num_classes=3, class_token=False, global_pool="avg")
    model = ViT(cfg).eval()
    assert [type(m).__name__ for m in model.patch_embed.convs] == ["Conv2d", "ReLU", "MaxPool2d"] * 2
    x = torch.randn(2, 3, 32, 32)
    logits, weights = model(x, return_attention=True)
    assert logits.shape == (2, 3) and weights[0].shape == (2, 2, 64, 64)  # the 8x8 grid of patch 4
    torch.testing.assert_close(model(x), logits)
    x48 = torch.randn(1, 3, 48, 48)  # any size: 12x12 tokens, position embeddings resized
    before = model(x48, return_attention=True)[1][0]
    assert before.shape[-1] == 144
    model.set_image_size(48)
    torch.testing.assert_close(model(x48, return_attention=True)[1][0], before)
    record = {"config": model.config.to_dict(), "class_names": ["a", "b", "c"], "preprocess": None,
              "val_acc": 0.5, "source": "test"}
    save_safetensors(model, record, tmp_path / "conv.safetensors")
    loaded, meta = load_vit(tmp_path / "conv.safetensors")
    assert meta["config"]["stem"] == "conv"
    torch.testing.assert_close(loaded(x48), model(x48))


def test_conv_stem_config_errors() -> None:
    with pytest.raises(ValueError, match="stem must be 'patch' or 'conv'"):
        ViTConfig(stem="resnet")
    with pytest.raises(ValueError, match="power-of-two patch_size"):
        ViTConfig(image_size=36, patch_size=6, stem="conv")


@pytest.mark.parametrize("stem,class_token", [("patch", True), ("conv", False)])
def test_bf16_autocast_keeps_the_token_stream_bf16(stem: str, class_token: bool) -> None:
    cfg = ViTConfig(image_size=16, patch_size=4, dim=32, depth=2, num_heads=2, num_classes=3, stem=stem,
                    class_token=class_token, global_pool="token" if class_token else "avg",
                    layer_scale_init=1e-5)
    model = ViT(cfg).train()
    seen: list[torch.dtype] = []
    for block in model.blocks:
        block.register_forward_hook(lambda _m, _args, out: seen.append(out[0].dtype))
    x = torch.randn(2, 3, 16, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(x)
    assert seen == [torch.bfloat16] * 2 and logits.dtype == torch.bfloat16
    logits.float().sum().backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in model.parameters())
    seen.clear()
    with torch.no_grad():  # no autocast: float32 throughout, and close to the bf16 result
        reference = model.eval()(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model(x)
    assert seen == [torch.float32] * 2 + [torch.bfloat16] * 2 and reference.dtype == torch.float32
    torch.testing.assert_close(low.float(), reference, atol=0.1, rtol=0.05)
