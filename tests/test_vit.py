"""The from-scratch ViT (vit/vit.py): attention maps, resizing, the conv stem, bf16 autocast,
input and config checks. Parity with timm is in test_timm_weights.py."""

from __future__ import annotations

import pytest
import torch

from vit import ViT, ViTConfig
from vit.errors import ConfigError
from vit.vit import ConfigError as ConfigErrorFromVit


def test_attention_weights_shape_and_rows() -> None:
    model = ViT(ViTConfig(image_size=32, patch_size=8, dim=48, depth=2, num_heads=3, num_classes=5)).eval()
    logits, weights = model(torch.randn(4, 3, 32, 32), return_attention=True)
    assert logits.shape == (4, 5)
    assert len(weights) == 2
    for w in weights:
        assert w.shape == (4, 3, 17, 17)
        assert torch.all(w >= 0)
        torch.testing.assert_close(w.sum(-1), torch.ones(4, 3, 17))


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
    with pytest.raises(ConfigError, match="num_heads"):
        ViTConfig(dim=50, num_heads=3)
    with pytest.raises(ConfigError, match="not divisible by patch_size"):
        ViTConfig(image_size=30, patch_size=8)
    with pytest.raises(ConfigError, match="class_token"):
        ViTConfig(class_token=False, global_pool="token")


def test_conv_stem_tokens_and_resizing() -> None:
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


@pytest.mark.parametrize("pool,centred", [(4, True), (3, False)])
def test_conv_stem_pool_4_centres_tokens_on_their_patches(pool: int, centred: bool) -> None:
    """With mirror-symmetric kernels, a stem whose tokens sit on their patch centres commutes
    with flipping the image; CCT's 3x3 pool shifts the grid up-left, so it does not."""
    torch.manual_seed(0)
    stem = ViT(ViTConfig(image_size=32, patch_size=4, stem="conv", stem_width=8, dim=16, depth=1,
                         num_heads=2, num_classes=3, class_token=False, global_pool="avg",
                         stem_pool=pool)).patch_embed
    with torch.no_grad():
        for m in stem.convs:
            if isinstance(m, torch.nn.Conv2d):  # symmetric under up-down and left-right flips
                m.weight.copy_(m.weight + m.weight.flip(2) + m.weight.flip(3) + m.weight.flip(2, 3))
    x = torch.randn(2, 3, 32, 32)
    tokens, grid = stem(x)
    flipped, _ = stem(x.flip(2, 3))
    as_grid = tokens.reshape(2, *grid, -1)  # (B, Gh, Gw, D)
    same = torch.allclose(flipped.reshape(2, *grid, -1), as_grid.flip(1, 2), atol=1e-5)
    assert same == centred


@pytest.mark.parametrize("class_token,no_embed_class", [(True, False), (False, False), (True, True)])
def test_register_tokens_are_prefix_tokens_no_output_reads(class_token: bool, no_embed_class: bool) -> None:
    torch.manual_seed(0)
    cfg = ViTConfig(image_size=16, patch_size=4, dim=32, depth=2, num_heads=2, num_classes=3,
                    class_token=class_token, global_pool="token" if class_token else "avg",
                    reg_tokens=4, no_embed_class=no_embed_class)
    model = ViT(cfg).eval()
    assert model.num_prefix_tokens == int(class_token) + 4
    x = torch.randn(2, 3, 16, 16)
    tokens, weights = model.forward_features(x, return_attention=True)
    assert tokens.shape == (2, 16 + model.num_prefix_tokens, 32) and weights[0].shape[-1] == tokens.shape[1]
    assert model.pos_embed.shape[1] == 16 + (0 if no_embed_class else model.num_prefix_tokens)
    with torch.no_grad():  # registers matter (attention reads them) ...
        before = model(x)
        model.reg_token.add_(torch.randn_like(model.reg_token))
        assert not torch.allclose(model(x), before)
    model.set_image_size(24)  # ... and survive a resolution change
    assert model(torch.randn(1, 3, 24, 24)).shape == (1, 3)


def test_conv_stem_config_errors() -> None:
    with pytest.raises(ConfigError, match="stem_pool must be 3 or 4"):
        ViTConfig(stem="conv", stem_pool=2)
    with pytest.raises(ConfigError, match="stem must be 'patch' or 'conv'"):
        ViTConfig(stem="resnet")
    with pytest.raises(ConfigError, match="power-of-two patch_size"):
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


def test_config_error_is_a_value_error_importable_from_vit_vit() -> None:
    assert ConfigErrorFromVit is ConfigError and issubclass(ConfigError, ValueError)
    with pytest.raises(ConfigError, match="num_classes must be >= 0"):
        ViTConfig(num_classes=-1)
    with pytest.raises(ConfigError, match="depth must be positive"):
        ViTConfig(depth=0)
    with pytest.raises(ConfigError, match="global_pool must be 'token' or 'avg'"):
        ViTConfig(global_pool="max")


def test_config_round_trips_through_a_plain_dict() -> None:
    cfg = ViTConfig(image_size=(32, 48), patch_size=8, dim=48, num_heads=3, num_classes=4)
    d = cfg.to_dict()
    assert d["image_size"] == [32, 48]  # JSON/YAML safe
    again = ViTConfig(**d)
    assert again == cfg and again.image_hw == (32, 48) and again.grid_size == (4, 6)


def test_reset_classifier_and_pooled_features() -> None:
    model = ViT(ViTConfig(image_size=16, patch_size=8, dim=32, depth=1, num_heads=2, num_classes=3)).eval()
    x = torch.randn(2, 3, 16, 16)
    model.reset_classifier(7)
    assert model(x).shape == (2, 7) and model.config.num_classes == 7
    tokens, weights = model.forward_features(x)
    assert tokens.shape == (2, 5, 32) and weights == ()
    assert model.forward_head(tokens, pre_logits=True).shape == (2, 32)
    model.reset_classifier(0)
    assert model(x).shape == (2, 32)
