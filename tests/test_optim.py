"""Optimizer groups and learning-rate schedules (training/optim.py)."""

from __future__ import annotations

import math

import pytest

from training.optim import WarmupCosine, WarmupInverseSqrt, check_rates, layer_id, param_groups
from vit.errors import ConfigError
from vit.vit import ViT, ViTConfig


def test_param_groups_skip_decay_on_norms_biases_and_tokens() -> None:
    model = ViT(ViTConfig(image_size=16, patch_size=8, num_classes=3, dim=16, depth=3, num_heads=2))
    groups = param_groups(model, weight_decay=0.05, depth=3)
    names = {id(p): n for n, p in model.named_parameters()}
    no_decay = {names[id(p)] for g in groups if g["weight_decay"] == 0 for p in g["params"]}
    assert {"pos_embed", "cls_token", "norm.weight", "blocks.0.norm1.bias", "head.bias"} <= no_decay
    assert "blocks.0.attn.qkv.weight" not in no_decay and "head.weight" not in no_decay
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))

    layered = param_groups(model, weight_decay=0.05, depth=3, layer_decay=0.5)
    scale = {names[id(p)]: g["lr_scale"] for g in layered for p in g["params"]}
    assert scale["head.weight"] == 1.0 and scale["blocks.2.mlp.fc1.weight"] == 0.5
    assert scale["blocks.0.attn.qkv.weight"] == 0.125 and scale["patch_embed.proj.weight"] == 0.0625


def test_warmup_then_cosine() -> None:
    schedule = WarmupCosine(warmup_steps=4, total_steps=20, min_factor=0.1)
    factors = [schedule(s) for s in range(21)]
    assert factors[:4] == sorted(factors[:4]) and factors[0] > 0
    assert math.isclose(factors[4], 1.0) and math.isclose(factors[20], 0.1)
    assert all(a >= b for a, b in zip(factors[4:], factors[5:], strict=False))


def test_warmup_then_inverse_square_root() -> None:
    f = WarmupInverseSqrt(100)
    assert f(0) == pytest.approx(0.01) and f(99) == pytest.approx(1.0)
    assert f(399) == pytest.approx(0.5)


def test_layer_ids_and_schedule_edges() -> None:
    assert [layer_id(n, 3) for n in ("cls_token", "patch_embed.proj.weight", "blocks.0.attn.qkv.weight",
                                     "blocks.2.norm1.bias", "norm.weight", "head.bias")] == [0, 0, 1, 3, 4, 4]
    with pytest.raises(ValueError, match="total_steps"):
        WarmupCosine(0, 0)
    assert WarmupCosine(10, 5).warmup_steps == 4  # warmup ends before the last step
    assert WarmupInverseSqrt(0)(0) == 1.0


@pytest.mark.parametrize("rates,message", [
    ({"lr": -1.0}, "model.lr must be a number > 0, got -1.0"),
    ({"lr": 0.0}, "model.lr must be a number > 0, got 0.0"),
    ({"lr": 1e-3, "min_lr": -1e-5}, "model.min_lr must be a number >= 0, got -1e-05"),
    ({"lr": float("nan")}, "model.lr must be a number > 0, got nan"),
])
def test_bad_learning_rates_name_the_field(rates: dict[str, float], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        check_rates(**rates)
    assert str(info.value) == message
    check_rates(lr=1e-3, min_lr=0.0)  # fine
