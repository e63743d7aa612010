"""timm weights in the from-scratch ViT (vit/timm_weights.py): exact parity with timm's
VisionTransformer, inferred configs, strict key mapping."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import timm_vit
from safetensors.torch import save_file

from vit.timm_weights import infer_config, read_state_dict, vit_from_timm

PARITY = [  # (patch, image, pool, layer scale)
    (4, 32, "token", None),
    (4, 32, "avg", 1e-5),
    (8, 32, "token", 1e-5),
    (8, 32, "avg", None),
    (16, 224, "token", None),
    (16, 224, "avg", 0.1),
    (16, 32, "token", 0.1),
]


@pytest.mark.parametrize("patch,image,pool,ls", PARITY)
def test_logits_equal_timm(patch: int, image: int, pool: str, ls: float | None) -> None:
    ref = timm_vit(patch, image, pool, ls)
    model = vit_from_timm(ref).eval()
    x = torch.randn(2, 3, image, image)
    with torch.no_grad():
        expected = ref(x)
        diff = (model(x) - expected).abs().max().item()
        diff_explicit = (model(x, return_attention=True)[0] - expected).abs().max().item()
    print(f"parity patch={patch} image={image} pool={pool} ls={ls}:{diff:.2e} (explicit {diff_explicit:.1e})")
    assert diff <= 1e-5 and diff_explicit <= 1e-5


@pytest.mark.parametrize("pool,no_embed_class", [("token", True), ("avg", False), ("token", False)])
def test_register_tokens_equal_timm(pool: str, no_embed_class: bool) -> None:
    ref = timm_vit(4, 32, pool, None, reg_tokens=4, no_embed_class=no_embed_class)
    x = torch.randn(2, 3, 32, 32)
    for source in (ref, ref.state_dict()):
        overrides = {} if source is ref else {"no_embed_class": no_embed_class, "num_heads": 3}
        model = vit_from_timm(source, **overrides).eval()
        assert model.config.reg_tokens == 4 and model.num_prefix_tokens == int(pool == "token") + 4
        with torch.no_grad():
            torch.testing.assert_close(model(x), ref(x), atol=1e-5, rtol=0)


def test_from_state_dict_and_files(tmp_path: Path) -> None:
    ref = timm_vit(4, 32, "avg", 1e-5, dim=128, heads=2)  # 64-wide heads are inferred
    x = torch.randn(2, 3, 32, 32)
    expected = ref(x)
    torch.save(ref.state_dict(), tmp_path / "timm.pth")
    save_file(ref.state_dict(), str(tmp_path / "timm.safetensors"))
    for source in (ref.state_dict(), tmp_path / "timm.pth", str(tmp_path / "timm.safetensors")):
        model = vit_from_timm(source).eval()
        assert model.config.num_heads == 2 and model.config.global_pool == "avg"
        torch.testing.assert_close(model(x), expected, atol=1e-5, rtol=0)


def test_unmappable_checkpoint_names_first_key() -> None:
    state = timm_vit(4, 32, "token", None).state_dict()
    state["mask_token"] = torch.zeros(1, 1, 96)
    with pytest.raises(ValueError, match="'mask_token'"):
        vit_from_timm(state)
    state = timm_vit(4, 32, "token", None).state_dict()
    del state["blocks.1.mlp.fc2.bias"]
    with pytest.raises(ValueError, match="blocks.1.mlp.fc2.bias"):
        vit_from_timm(state)
    with pytest.raises(TypeError, match="VisionTransformer"):
        vit_from_timm(42)


def test_runs_at_other_resolution_like_timm() -> None:
    ref = timm_vit(4, 32, "token", None, dynamic_img_size=True)  # timm resizes pos. embeddings
    model = vit_from_timm(ref).eval()
    x = torch.randn(2, 3, 48, 48)
    with torch.no_grad():
        out = model(x)
        torch.testing.assert_close(out, ref(x), atol=1e-5, rtol=0)
    assert out.shape == (2, 10)
    _, weights = model(torch.randn(1, 3, 48, 64), return_attention=True)  # non-square grid
    assert weights[0].shape[-1] == 1 + 12 * 16


def test_inferred_config_and_overrides() -> None:
    state = timm_vit(8, 32, "token", 0.1, dim=128, heads=2).state_dict()
    cfg = infer_config(state)
    assert (cfg.patch_size, cfg.dim, cfg.depth, cfg.image_size, cfg.num_classes) == (8, 128, 3, 32, 10)
    assert cfg.num_heads == 2 and cfg.class_token and cfg.global_pool == "token"
    assert cfg.layer_scale_init == 1.0 and cfg.mlp_ratio == 2.0
    assert infer_config(state, num_heads=4, image_size=64).num_heads == 4
    with pytest.raises(ValueError, match="no 'patch_embed.proj.weight'"):
        infer_config({k: v for k, v in state.items() if not k.startswith("patch_embed")})


def test_read_state_dict_formats_and_errors(tmp_path: Path) -> None:
    state = {"a": torch.ones(2), "b": torch.zeros(3)}
    for key in ("state_dict", "model", "state_dict_ema"):
        torch.save({key: state, "epoch": 3}, tmp_path / f"{key}.pth")
        assert set(read_state_dict(tmp_path / f"{key}.pth")) == {"a", "b"}
    torch.save([1, 2], tmp_path / "list.pth")
    with pytest.raises(ValueError, match="not a state dict"):
        read_state_dict(tmp_path / "list.pth")
    with pytest.raises(FileNotFoundError, match="no such checkpoint file"):
        read_state_dict(tmp_path / "missing.pth")
