"""Write tests/data/compat with the code of the commit it is run at (see the README there)."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(REPO / "tests"))
from conftest import make_image_folder  # noqa: E402
from test_translation_data import write_corpus  # noqa: E402

OUT = REPO / "tests" / "data" / "compat"
WORK = Path("/tmp/compat_work")
shutil.rmtree(WORK, ignore_errors=True)
WORK.mkdir(parents=True)
import os  # noqa: E402

os.chdir(WORK)
shutil.rmtree(OUT, ignore_errors=True)
OUT.mkdir(parents=True)
torch.set_num_threads(1)

from training.cli import main as vit_train  # noqa: E402

# ---- image: a conv-stem, avg-pool ViT trained 2 epochs with EMA weights (as cifar10.yaml)
images = make_image_folder(WORK / "images", per_class=8)
vit_train(["fit", "--config", str(REPO / "training/configs/smoke.yaml"),
           "--data.root", str(images), "--data.cache_dir", str(WORK / "cache"),
           "--data.batch_size", "8", "--data.val_fraction", "0.25",
           "--model.stem", "conv", "--model.dim", "32", "--model.depth", "2", "--model.num_heads", "2",
           "--model.patch_size", "4", "--model.global_pool", "avg",
           "--model.vit", "{class_token: false, stem_width: 8}",
           "--trainer.default_root_dir", str(WORK),

           "--trainer.callbacks+=lightning.pytorch.callbacks.EMAWeightAveraging",
           "--trainer.callbacks.decay", "0.9",
           ])
shutil.copy(WORK / "runs/smoke/checkpoints/last.ckpt", OUT / "vit_conv.ckpt")

from export.cli import ExportOptions, export_checkpoint  # noqa: E402
from vit.checkpoint import load_vit, save_safetensors  # noqa: E402

model, record = load_vit(OUT / "vit_conv.ckpt")
save_safetensors(model, record, OUT / "vit_conv.safetensors")
result = export_checkpoint(OUT / "vit_conv.ckpt", OUT / "vit_conv.onnx",
                           ExportOptions(attention=True, verify_images=images))
assert result.passed, [r.line() for r in result.reports]
# a patch-stem model with a class token, written as safetensors only
from vit.vit import ViT, ViTConfig  # noqa: E402

torch.manual_seed(1)
patch = ViT(ViTConfig(image_size=32, patch_size=8, num_classes=3, dim=32, depth=2, num_heads=2,
                      mlp_ratio=2.0, layer_scale_init=0.1))
with torch.no_grad():
    for p in patch.parameters():
        p.add_(0.02 * torch.randn_like(p))
save_safetensors(patch.eval(), {"config": patch.config.to_dict(), "class_names": ["a", "b", "c"],
                                "preprocess": record["preprocess"], "val_acc": None,
                                "source": "compat fixture"}, OUT / "vit_patch.safetensors")
rng = np.random.default_rng(0)
x = rng.standard_normal((4, 3, 32, 32)).astype(np.float32)
with torch.no_grad():
    logits, weights = model(torch.from_numpy(x), return_attention=True)
    plogits, pweights = patch(torch.from_numpy(x), return_attention=True)
np.savez(OUT / "vit_reference.npz", inputs=x, logits=logits.numpy(),
         attention=torch.stack(weights, 1).numpy(), patch_logits=plogits.numpy(),
         patch_attention=torch.stack(pweights, 1).numpy())

# ---- text: a tiny translator trained 3 epochs
paths = write_corpus(WORK / "text", n_train=120, n_val=10)
vit_train(["fit", "--config", str(REPO / "training/configs/multi30k.yaml"),
           *[a for k, v in paths.items() for a in (f"--data.{k}", v)],
           "--data.vocab_size", "60", "--data.max_tokens", "256", "--data.max_sentence_len", "30",
           "--data.tokenizer_dir", str(WORK / "tok"),
           "--model.dim", "32", "--model.num_heads", "4", "--model.enc_depth", "2", "--model.dec_depth", "2",
           "--model.mlp_ratio", "2.0", "--model.dropout", "0.0", "--model.attn_dropout", "0.0",
           "--model.max_len", "32", "--model.lr", "5e-3", "--model.warmup_steps", "5",
           "--trainer.max_epochs", "40", "--trainer.check_val_every_n_epoch", "1",
           "--trainer.default_root_dir", str(WORK),
           ])
shutil.copy(WORK / "runs/multi30k/checkpoints/last.ckpt", OUT / "seq2seq.ckpt")

from export.seq2seq_onnx import export_seq2seq  # noqa: E402
from export.translate import TorchTranslator  # noqa: E402
from vit.decoding import beam_search, greedy_decode  # noqa: E402
from vit.seq2seq import load_seq2seq, save_seq2seq  # noqa: E402

tmodel, trecord = load_seq2seq(OUT / "seq2seq.ckpt")
save_seq2seq(tmodel, trecord, OUT / "seq2seq.safetensors")
sentences = ["ein hund läuft schnell", "der mann schläft dort", "eine katze", "kind springt hier rot"]
report = export_seq2seq(OUT / "seq2seq.ckpt", OUT / "seq2seq_onnx", sentences=sentences)
translator = TorchTranslator(tmodel, trecord)
src = torch.from_numpy(translator.codec.pad([ids for ids, _ in translator.codec.encode(sentences)]))
greedy = greedy_decode(tmodel, src, need_weights=True)
beam = beam_search(tmodel, src, beam_size=3)
with torch.no_grad():
    enc = tmodel.encode(src)
    tgt = torch.cat([torch.full((len(sentences), 1), tmodel.config.bos_id), greedy.tokens[:, :-1]], 1)
    teacher = tmodel.decode(tgt.clamp(max=tmodel.config.tgt_vocab_size - 1), enc).logits
np.savez(OUT / "seq2seq_reference.npz", src=src.numpy(), greedy=greedy.tokens.numpy(),
         greedy_scores=greedy.scores.numpy(), beam=beam.tokens.numpy(), beam_scores=beam.scores.numpy(),
         cross_attention=torch.stack(greedy.cross_weights, 1).numpy(), tgt_in=tgt.numpy(),
         logits=teacher.numpy())
(OUT / "seq2seq_reference.json").write_text(json.dumps(
    {"sentences": sentences, "translations": [t.text for t in translator.translate(sentences)],
     "beam3": [t.text for t in translator.translate(sentences, beam=3)], "onnx_report": report},
    indent=1, ensure_ascii=False) + "\n")
print("done")
