"""The translation LightningModule (training/translation.py): trains, checkpoints
(weights_only loadable, carrying the tokenizer), resumes, learns the toy language."""

from __future__ import annotations

import math
from pathlib import Path

import lightning as L
import pytest
import torch
from conftest import COMPAT, REPO, tiny_model, write_corpus

from training.text_data import TextDataModule
from training.translation import TranslationModule
from vit.checkpoint import load_seq2seq
from vit.text_codec import TextCodec

DATA = dict(vocab_size=60, max_tokens=256, max_sentence_len=30)

TINY = dict(dim=32, num_heads=4, enc_depth=1, dec_depth=1, mlp_ratio=2.0, dropout=0.0, max_len=32, lr=3e-3,
            warmup_steps=5)


pytestmark = pytest.mark.usefixtures("one_thread")


def trainer(root: Path, callbacks_extra: list[L.Callback] = (), **kw: object) -> L.Trainer:
    ckpt = L.pytorch.callbacks.ModelCheckpoint(dirpath=root / "ckpt", save_last=True)
    return L.Trainer(default_root_dir=root, accelerator="cpu", logger=False, enable_progress_bar=False,
                     enable_model_summary=False, callbacks=[ckpt, *callbacks_extra], num_sanity_val_steps=0,
                     **kw)


def test_fit_checkpoint_load_and_resume(tmp_path: Path) -> None:
    paths = write_corpus(tmp_path / "data", n_train=120, n_val=10)
    dm = TextDataModule(**paths, **DATA, tokenizer_dir=str(tmp_path / "tok"))
    module = TranslationModule(**TINY)
    t = trainer(tmp_path, max_epochs=2)
    t.fit(module, dm)
    assert math.isfinite(float(t.callback_metrics["val_loss"]))
    assert 0.0 <= float(t.callback_metrics["val_bleu"]) <= 100.0
    last = tmp_path / "ckpt" / "last.ckpt"
    raw = torch.load(last, map_location="cpu", weights_only=True)
    assert raw["seq2seq"]["config"]["dim"] == 32
    assert raw["hyper_parameters"]["seq2seq"]["tgt_vocab_size"] == dm.codec.tgt.get_vocab_size()
    assert (tmp_path / "ckpt" / "tokenizer.json").is_file()  # beside the checkpoints

    model, record = load_seq2seq(last)
    assert record["src_tokenizer"] == dm.codec.src.to_str() and record["tgt_tokenizer"] is None
    batch = next(iter(dm.val_dataloader()))
    module.eval()
    torch.testing.assert_close(model(batch["src"], batch["tgt_in"]), module(batch["src"], batch["tgt_in"]))

    restored = TranslationModule.load_from_checkpoint(last, weights_only=True)
    assert restored.model.config == module.model.config
    assert restored.translate_ids(batch["src"][:2]) == module.translate_ids(batch["src"][:2])

    steps = t.global_step
    t2 = trainer(tmp_path, max_epochs=3)
    t2.fit(TranslationModule(**TINY), TextDataModule(**paths, **DATA, tokenizer_dir=str(tmp_path / "tok")),
           ckpt_path=last)
    assert t2.global_step == steps * 3 // 2


def test_resume_refuses_a_different_tokenizer(tmp_path: Path) -> None:
    paths = write_corpus(tmp_path / "data", n_train=60, n_val=5)
    t = trainer(tmp_path, max_steps=2, limit_val_batches=0)
    t.fit(TranslationModule(**TINY), TextDataModule(**paths, **DATA))
    other = TextDataModule(**paths, **{**DATA, "vocab_size": 50})
    with pytest.raises(ValueError, match="tokenizer differs"):
        trainer(tmp_path, max_steps=4).fit(TranslationModule(**TINY), other,
                                           ckpt_path=tmp_path / "ckpt" / "last.ckpt")


def test_learns_the_toy_language(tmp_path: Path) -> None:
    """A hundred steps on the toy pairs give a validation BLEU far above chance."""
    paths = write_corpus(tmp_path / "data", n_train=200, n_val=20)
    dm = TextDataModule(**paths, vocab_size=60, max_tokens=800, max_sentence_len=30)
    module = TranslationModule(**{**TINY, "dec_depth": 2, "lr": 1e-2, "schedule": "inverse_sqrt",
                                  "label_smoothing": 0.0})
    t = trainer(tmp_path, max_epochs=20, check_val_every_n_epoch=20)
    t.fit(module, dm)
    assert float(t.callback_metrics["val_bleu"]) > 60.0


def test_argument_errors() -> None:
    with pytest.raises(ValueError, match="schedule"):
        TranslationModule(schedule="linear")
    with pytest.raises(ValueError, match="label_smoothing"):
        TranslationModule(label_smoothing=1.0)


def test_multi30k_config_runs_through_vit_train(tmp_path: Path) -> None:
    """The shipped YAML parses into these classes and trains (fast_dev_run, toy data)."""
    from training.train import main

    paths = write_corpus(tmp_path / "data", n_train=60, n_val=8)
    data = [f"--data.{k}={v}" for k, v in paths.items()]
    config = tmp_path / "multi30k.yaml"  # the shipped file, writing under tmp_path instead of runs/
    text = (REPO / "training/configs/multi30k.yaml").read_text(encoding="utf-8")
    config.write_text(text.replace("runs/multi30k", str(tmp_path / "run")), encoding="utf-8")
    main(["fit", "--config", str(config), *data,
          "--data.vocab_size=60", f"--data.tokenizer_dir={tmp_path / 'tok'}", "--model.dim=32",
          "--model.enc_depth=1", "--model.dec_depth=1", "--trainer.fast_dev_run=2", "--trainer.precision=32",
          f"--trainer.default_root_dir={tmp_path}"])
    assert (tmp_path / "tok" / "tokenizer.json").is_file()
    # fast_dev_run logs nothing: checkpoints (and the tokenizer beside them) go to the root
    assert (tmp_path / "checkpoints" / "tokenizer.json").is_file()


def test_batch_units_are_the_real_source_and_target_tokens() -> None:
    module = TranslationModule(**TINY)
    module.model = tiny_model()  # pad_id 0
    batch = {"src": torch.tensor([[5, 6, 2, 0], [7, 2, 0, 0]]),
             "tgt_in": torch.tensor([[1, 8, 9], [1, 4, 0]]), "tgt_out": torch.tensor([[8, 9, 2], [4, 2, 0]])}
    assert module.batch_units(batch) == 5 + 5


def test_resumes_a_checkpoint_written_before_the_shared_encoder_block(tmp_path: Path) -> None:
    """The release's vit-train checkpoint (encoder weights named ``self_attn``): its weights are
    renamed and its optimizer state reordered, so that training goes on where it stopped."""
    old = torch.load(COMPAT / "seq2seq.ckpt", map_location="cpu", weights_only=True)
    assert "model.encoder.0.self_attn.qkv.weight" in old["state_dict"] and old["global_step"] == 168
    paths = write_corpus(tmp_path / "data", n_train=120, n_val=10)  # the corpus it was trained on
    TextCodec.from_record(old["seq2seq"]).save(tmp_path / "tok")
    dm = TextDataModule(**paths, **DATA, tokenizer_dir=str(tmp_path / "tok"))
    shapes: list[bool] = []

    class CheckOptimizer(L.Callback):
        def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
            opt = trainer.optimizers[0]
            params = [p for group in opt.param_groups for p in group["params"]]
            shapes.extend(opt.state[p]["exp_avg"].shape == p.shape for p in params)

    module = TranslationModule(**{k: v for k, v in old["hyper_parameters"].items() if not k.startswith("_")})
    t = trainer(tmp_path, max_epochs=old["epoch"] + 2, callbacks_extra=[CheckOptimizer()])
    t.fit(module, dm, ckpt_path=COMPAT / "seq2seq.ckpt")
    assert len(shapes) == len(list(module.model.parameters())) and all(shapes)
    assert t.global_step == 168 + 8  # one more epoch of 8 batches
    model, _ = load_seq2seq(tmp_path / "ckpt" / "last.ckpt")  # written under today's names
    reference, _ = load_seq2seq(COMPAT / "seq2seq.ckpt")
    assert not torch.equal(model.encoder[0].attn.qkv.weight, reference.encoder[0].attn.qkv.weight)
