"""The ViT LightningModule (training/image_classifier.py): its checkpoints carry the vit record
and load with torch.load(weights_only=True) and vit.checkpoint.load_vit alike; fine-tuning
from timm weights; compiled training writes plain weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import fit_args, make_image_folder, timm_checkpoint

from training.image_classifier import ImageClassifier
from training.train import main
from vit.attention import MultiHeadAttention, configure_attention
from vit.checkpoint import load_vit


def test_checkpoint_is_weights_only_and_carries_the_vit_record(smoke_run: Path) -> None:
    path = smoke_run / "runs" / "smoke" / "version_0" / "checkpoints" / "last.ckpt"
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    record = ckpt["vit"]
    assert record["class_names"] == ["circle", "square", "stripes"]
    assert record["config"]["num_classes"] == 3 and record["config"]["image_size"] == 32
    assert record["preprocess"]["crop_size"] == 32
    assert isinstance(record["val_acc"], float) and 0.0 <= record["val_acc"] <= 1.0
    assert ckpt["global_step"] == 2 * 3  # 27 training images, batch 8, drop_last
    assert all(k.startswith("model.") for k in ckpt["state_dict"])


def test_load_vit_matches_the_lightning_module(smoke_run: Path) -> None:
    path = smoke_run / "runs" / "smoke" / "version_0" / "checkpoints" / "last.ckpt"
    model, record = load_vit(path)
    module = ImageClassifier.load_from_checkpoint(path, map_location="cpu").eval()
    assert module.class_names == record["class_names"]
    images = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(images), module.model(images), rtol=0, atol=0)
        # the module computes attention on the explicit path on CPU (configure_attention(fused=False))
        torch.testing.assert_close(model(images), module(images), rtol=0, atol=1e-6)
        configure_attention(model, fused=False)  # the same path: bit for bit the same weights
        torch.testing.assert_close(model(images), module.model(images), rtol=0, atol=0)


def test_compiled_fit_with_conv_stem_checkpoints_plain_weights(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """``compile: true`` trains the compiled ViT (conv stem left eager), validates eagerly and
    writes the same state-dict keys as an eager run."""
    from torch._dynamo.utils import counters

    folder = make_image_folder(tmp_path / "images")
    monkeypatch.chdir(tmp_path)
    torch._dynamo.reset()
    counters.clear()
    main(fit_args(folder, tmp_path / "cache", "--trainer.max_epochs", "1", "--model.compile", "true",
                  "--model.stem", "conv"))
    assert counters["stats"]["unique_graphs"] >= 1  # the Transformer was compiled
    ckpt = torch.load(tmp_path / "runs" / "smoke" / "version_0" / "checkpoints" / "last.ckpt",
                      weights_only=True)
    assert ckpt["global_step"] == 3 and ckpt["vit"]["config"]["stem"] == "conv"
    keys = set(ckpt["state_dict"])
    assert not any("_orig_mod" in k for k in keys) and "model.patch_embed.convs.0.weight" in keys
    model, _ = load_vit(tmp_path / "runs" / "smoke" / "version_0" / "checkpoints" / "last.ckpt")
    assert set(model.state_dict()) == {k.removeprefix("model.") for k in keys if k.startswith("model.")}


@pytest.mark.parametrize("fmt", ["pth", "safetensors"])
def test_pretrained_timm_gets_a_new_head_and_image_size(tmp_path: Path, fmt: str) -> None:
    path, state = timm_checkpoint(tmp_path, fmt)
    module = ImageClassifier(pretrained=str(path), num_classes=3, image_size=32, vit={"num_heads": 2},
                             freeze_blocks=1, layer_decay=0.75)
    module.configure_model()
    model = module.model
    assert model.config.num_classes == 3 and model.config.image_hw == (32, 32) and model.config.num_heads == 2
    assert model.pos_embed.shape == (1, 1 + 8 * 8, 64)
    for key in ("blocks.1.attn.qkv.weight", "blocks.0.mlp.fc2.bias", "cls_token", "patch_embed.proj.weight"):
        assert torch.equal(model.state_dict()[key], state[key])
    assert not model.blocks[0].attn.qkv.weight.requires_grad and model.blocks[1].attn.qkv.weight.requires_grad
    assert not model.pos_embed.requires_grad and model.head.weight.requires_grad
    assert "timm_vit" in module.source


@pytest.mark.parametrize("explicit,expect_fused", [(None, False), (True, False), (False, True)])
def test_attention_path_is_chosen_for_the_device(explicit: bool | None, expect_fused: bool) -> None:
    """On CPU the explicit path by default (explicit_attention=None); the same logits either way."""
    module = ImageClassifier(patch_size=8, dim=32, depth=2, num_heads=2, num_classes=3, image_size=16,
                             drop_path_rate=0.0, explicit_attention=explicit)
    module.configure_model()
    module.eval()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        logits = module(x)
        reference = module.model(x)  # the same model, as configured by the first call
    assert logits.dtype == torch.float32 and logits.shape == (2, 3)
    fused = {m.fused for m in module.model.modules() if isinstance(m, MultiHeadAttention)}
    assert fused == {expect_fused}
    torch.testing.assert_close(logits, reference)


def test_record_and_build_errors() -> None:
    module = ImageClassifier(patch_size=8, dim=32, depth=2, num_heads=2, num_classes=3, image_size=16)
    module.configure_model()
    record = module.vit_record()
    assert record["class_names"] == ["0", "1", "2"] and record["config"] == module.model.config.to_dict()
    assert record["preprocess"]["crop_size"] == 16 and record["source"] == "trained from scratch"
    assert module.hparams.vit == module.model.config.to_dict()  # so that load_from_checkpoint rebuilds it
    with pytest.raises(ValueError, match="num_classes and model.image_size are unknown"):
        ImageClassifier().configure_model()
    with pytest.raises(ValueError, match="freeze_blocks=3"):
        module = ImageClassifier(depth=2, num_classes=3, image_size=16, patch_size=8, freeze_blocks=3)
        module.configure_model()
