"""Every file format of the models (vit/checkpoint.py): project safetensors and Lightning
checkpoints of classifiers and translators, timm files, which kind a file holds, and the
names of translator weights written before the shared encoder block."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import COMPAT, rand_ids, save_ckpt, timm_vit, tiny_config, tiny_model
from safetensors.torch import save_file

from vit.checkpoint import (
    SEQ2SEQ_KEY,
    VIT_KEY,
    checkpoint_kind,
    legacy_seq2seq_name,
    load_seq2seq,
    load_vit,
    read_checkpoint,
    save_seq2seq,
    save_vit,
    upgrade_seq2seq_state,
)
from vit.seq2seq import Seq2Seq
from vit.vit import ViT, ViTConfig

pytestmark = pytest.mark.usefixtures("one_thread")


def vit_record(model: ViT) -> dict:
    return {"config": model.config.to_dict(), "class_names": ["a", "b", "c"], "preprocess": None,
            "val_acc": 0.5, "source": "test"}


SEQ2SEQ_RECORD = {"src_tokenizer": "{}", "tgt_tokenizer": None, "val_bleu": None, "source": "test"}


def test_project_safetensors_round_trip(tmp_path: Path) -> None:
    model = ViT(ViTConfig(image_size=32, patch_size=4, dim=48, depth=2, num_heads=2, num_classes=3)).eval()
    save_vit(model, vit_record(model), tmp_path / "m.safetensors")
    loaded, meta = load_vit(tmp_path / "m.safetensors")
    assert meta["class_names"] == ["a", "b", "c"]
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(loaded(x), model(x))
    with pytest.raises(FileNotFoundError, match="no such checkpoint"):
        load_vit(tmp_path / "missing.ckpt")
    assert not list(tmp_path.glob("*.tmp"))  # written atomically


def test_conv_stem_round_trips_through_safetensors(tmp_path: Path) -> None:
    torch.manual_seed(0)
    cfg = ViTConfig(image_size=32, patch_size=4, stem="conv", stem_width=16, dim=48, depth=2, num_heads=2,
                    num_classes=3, class_token=False, global_pool="avg")
    model = ViT(cfg).eval()
    model.set_image_size(48)
    x48 = torch.randn(1, 3, 48, 48)
    save_vit(model, vit_record(model), tmp_path / "conv.safetensors")
    loaded, meta = load_vit(tmp_path / "conv.safetensors")
    assert meta["config"]["stem"] == "conv"
    torch.testing.assert_close(loaded(x48), model(x48))


def test_lightning_checkpoint_of_a_classifier(tmp_path: Path) -> None:
    model = ViT(ViTConfig(image_size=16, patch_size=8, dim=32, depth=1, num_heads=2, num_classes=3)).eval()
    path = save_ckpt(model, vit_record(model), tmp_path / "m.ckpt")
    state, record = read_checkpoint(path)
    assert set(state) == set(model.state_dict()) and record["class_names"] == ["a", "b", "c"]
    loaded, _ = load_vit(path, drop_rate=0.1)  # overrides apply over the record's config
    assert loaded.config.drop_rate == 0.1 and not loaded.training
    x = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(loaded(x), model(x))
    (tmp_path / "cut.ckpt").write_bytes(path.read_bytes()[:100])
    with pytest.raises(ValueError, match="cut.ckpt: not a readable PyTorch checkpoint"):
        read_checkpoint(tmp_path / "cut.ckpt")


def test_load_vit_reads_a_timm_checkpoint(tmp_path: Path) -> None:
    ref = timm_vit(4, 32, "avg", 1e-5, dim=128, heads=2)
    x = torch.randn(2, 3, 32, 32)
    expected = ref(x)
    torch.save(ref.state_dict(), tmp_path / "timm.pth")
    model, record = load_vit(tmp_path / "timm.pth")
    torch.testing.assert_close(model(x), expected, atol=1e-5, rtol=0)
    assert record["class_names"] is None and record["config"] == model.config.to_dict()
    assert "timm checkpoint timm.pth" in record["source"]


def test_shared_and_tied_embeddings_round_trip(tmp_path: Path) -> None:
    model = tiny_model(src_vocab_size=19, share_embeddings=True, tie_output=True)
    assert model.src_embed is model.tgt_embed
    assert model.head.weight is model.tgt_embed.weight
    n_untied = Seq2Seq(tiny_config(src_vocab_size=19, tie_output=False)).num_params()
    assert model.num_params() == n_untied - 2 * 19 * 32
    src, tgt = rand_ids(2, 5, 19), rand_ids(2, 4, 19, seed=8)
    path = tmp_path / "m.safetensors"
    save_seq2seq(model, SEQ2SEQ_RECORD, path)
    loaded, record = load_seq2seq(path)
    assert record["config"] == model.config.to_dict()
    assert loaded.head.weight is loaded.tgt_embed.weight
    torch.testing.assert_close(loaded(src, tgt), model(src, tgt))


def test_load_rejects_foreign_files(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no such checkpoint"):
        load_seq2seq(tmp_path / "missing.ckpt")
    path = tmp_path / "other.ckpt"
    torch.save({"state_dict": {}}, path)
    with pytest.raises(ValueError, match="not a translation checkpoint"):
        load_seq2seq(path)


def test_checkpoint_kind_tells_translators_from_classifiers(tmp_path: Path) -> None:
    vit = ViT(ViTConfig(image_size=16, patch_size=8, dim=32, depth=1, num_heads=2, num_classes=3))
    save_vit(vit, vit_record(vit), tmp_path / "vit.safetensors")
    save_ckpt(vit, vit_record(vit), tmp_path / "vit.ckpt")
    save_seq2seq(tiny_model(), SEQ2SEQ_RECORD, tmp_path / "text.safetensors")
    torch.save(timm_vit(8, 32, "token", None, dim=32, depth=1, heads=2).state_dict(), tmp_path / "timm.pth")
    assert checkpoint_kind(tmp_path / "vit.safetensors") == VIT_KEY == "vit"
    assert checkpoint_kind(tmp_path / "vit.ckpt") == VIT_KEY
    assert checkpoint_kind(tmp_path / "timm.pth") == VIT_KEY
    assert checkpoint_kind(tmp_path / "text.safetensors") == SEQ2SEQ_KEY == "seq2seq"
    assert checkpoint_kind(COMPAT / "seq2seq.ckpt") == SEQ2SEQ_KEY  # a vit-train Lightning checkpoint
    assert checkpoint_kind(COMPAT / "seq2seq.safetensors") == SEQ2SEQ_KEY
    with pytest.raises(FileNotFoundError, match="no such checkpoint file"):
        checkpoint_kind(tmp_path / "missing.ckpt")


@pytest.mark.parametrize("name,today", [
    ("model.encoder.0.self_attn.qkv.weight", "model.encoder.0.attn.qkv.weight"),
    ("encoder.11.self_attn.proj.bias", "encoder.11.attn.proj.bias"),
    ("model.decoder.0.self_attn.qkv.weight", "model.decoder.0.self_attn.qkv.weight"),  # decoders keep it
    ("decoder.1.cross_attn.kv.bias", "decoder.1.cross_attn.kv.bias"),
    ("encoder.0.attn.qkv.weight", "encoder.0.attn.qkv.weight"),  # already today's
    ("src_embed.weight", "src_embed.weight"),
])
def test_legacy_seq2seq_name(name: str, today: str) -> None:
    assert legacy_seq2seq_name(name) == today


def _legacy(name: str) -> str:
    """The name a translator weight had before the text encoder shared the ViT's Block."""
    parts = name.split(".")
    if parts[0] == "encoder" and parts[2] == "attn":
        parts[2] = "self_attn"
    return ".".join(parts)


def test_translators_written_under_the_earlier_layout_still_load(tmp_path: Path) -> None:
    model = tiny_model()
    state = {_legacy(k): v.contiguous() for k, v in model.state_dict().items() if k != "head.weight"}
    assert "encoder.0.self_attn.qkv.weight" in state and "encoder.0.attn.qkv.weight" not in state
    assert upgrade_seq2seq_state(state).keys() == {k for k in model.state_dict() if k != "head.weight"}
    prefixed = upgrade_seq2seq_state({"model." + k: v for k, v in state.items()})
    assert "model.encoder.1.attn.proj.weight" in prefixed
    record = {**SEQ2SEQ_RECORD, "config": model.config.to_dict()}
    save_file(state, str(tmp_path / "old.safetensors"), metadata={SEQ2SEQ_KEY: json.dumps(record)})
    loaded, _ = load_seq2seq(tmp_path / "old.safetensors")
    src, tgt = rand_ids(2, 5, 23), rand_ids(2, 4, 19, seed=8)
    torch.testing.assert_close(loaded(src, tgt), model(src, tgt))
    old = torch.load(COMPAT / "seq2seq.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    assert "model.encoder.0.self_attn.qkv.weight" in old  # the release file is of the earlier layout
    load_seq2seq(COMPAT / "seq2seq.ckpt")  # strict loading after the renaming


def test_average_checkpoints_is_the_mean_of_the_weights(tmp_path: Path) -> None:
    from vit.checkpoint import average_checkpoints, load_seq2seq, save_seq2seq

    model, record = load_seq2seq(COMPAT / "seq2seq.ckpt")  # written under the earlier layout
    shifted = load_seq2seq(COMPAT / "seq2seq.ckpt")[0]
    with torch.no_grad():
        for p in shifted.parameters():
            p.add_(1.0)
    save_seq2seq(shifted, record, tmp_path / "shifted.safetensors")
    kind, mean, mean_record = average_checkpoints([COMPAT / "seq2seq.ckpt", tmp_path / "shifted.safetensors"])
    assert kind == "seq2seq" and "mean of 2 checkpoints" in mean_record["source"]
    for (name, a), b in zip(model.state_dict().items(), mean.state_dict().values(), strict=True):
        torch.testing.assert_close(b, a + 0.5, msg=name)  # tied weights included
    with pytest.raises(ValueError, match="not a seq2seq checkpoint"):
        average_checkpoints([COMPAT / "vit_conv.safetensors", COMPAT / "seq2seq.ckpt"])
    with pytest.raises(ValueError, match="do not match"):
        average_checkpoints([COMPAT / "vit_patch.safetensors", COMPAT / "vit_conv.safetensors"])
