"""LightningModule around :class:`vit.ViT`: a thin adapter that adds the loss, metrics,
optimizer and schedule, fine-tuning, and the checkpoint's ``vit`` record.

The ViT is built in :meth:`ImageClassifier.configure_model`, once the data has said how
many classes and which image size there are. Its architecture comes from, in order: the
full ``vit`` hyperparameter (filled in by the first build, so ``load_from_checkpoint``
rebuilds exactly), ``pretrained``, the fields below; a checkpoint being restored
replaces it with its own (:meth:`ImageClassifier.on_load_checkpoint`).
"""

from __future__ import annotations

import logging
import math
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics.classification import MulticlassAccuracy

from vit.attention import configure_attention
from vit.checkpoint import load_vit
from vit.errors import DataError
from vit.preprocess import Preprocess
from vit.vit import ConvStem, ViT, ViTConfig

from .distill import Distill, Teacher
from .distributed import seed_epoch
from .optim import WarmupCosine, check_rates, param_groups

log = logging.getLogger(__name__)


class ImageClassifier(L.LightningModule):
    """Image classification with a ViT.

    Args:
        patch_size, stem, dim, depth, num_heads, mlp_ratio, qkv_bias, global_pool, drop_rate,
            attn_drop_rate, drop_path_rate, layer_scale_init: the architecture
            (:class:`vit.ViTConfig` fields).
        vit: any further :class:`vit.ViTConfig` fields, applied over the ones above.
        num_classes / image_size: taken from the data module when unset.
        pretrained: a timm ViT checkpoint or one of this project's; its architecture wins
            over the fields above; the head is replaced when the class count differs and
            the position embeddings are resized when the image size differs.
        freeze_blocks: freeze the embeddings and the first N blocks.
        layer_decay: layer-wise lr decay factor (e.g. 0.65 for fine-tuning); None = off.
        lr, weight_decay, betas, warmup_epochs, min_lr: AdamW and the warmup + cosine schedule.
        label_smoothing: for the cross-entropy loss.
        distill: learn also from a frozen teacher's answers on the same augmented images
            (:class:`training.distill.Distill`: teacher file, weight, kind, temperature).
        compile: ``torch.compile`` the ViT.
        explicit_attention: compute attention with the core's explicit softmax path instead
            of ``F.scaled_dot_product_attention`` (``configure_attention(fused=False)``); None =
            on CPU only, where PyTorch's fused bf16 attention backward is several times
            slower for ViT-length sequences (``benchmarks/train_throughput.py``). Same math.
    """

    def __init__(
        self,
        patch_size: int = 4,
        stem: str = "patch",
        dim: int = 192,
        depth: int = 6,
        num_heads: int = 3,
        mlp_ratio: float = 2.0,
        qkv_bias: bool = True,
        global_pool: str = "token",
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.1,
        layer_scale_init: float | None = None,
        vit: dict[str, Any] | None = None,
        num_classes: int | None = None,
        image_size: int | None = None,
        pretrained: str | None = None,
        freeze_blocks: int = 0,
        layer_decay: float | None = None,
        lr: float = 1e-3,
        weight_decay: float = 0.05,
        betas: tuple[float, float] = (0.9, 0.999),
        warmup_epochs: float = 5.0,
        min_lr: float = 1e-5,
        label_smoothing: float = 0.1,
        distill: Distill | None = None,
        compile: bool = False,
        explicit_attention: bool | None = None,
    ) -> None:
        super().__init__()
        check_rates(lr=lr, min_lr=min_lr)
        if isinstance(distill, dict):  # from a checkpoint's hyperparameters
            distill = Distill(**distill)
        self.save_hyperparameters()
        self.hparams.distill = asdict(distill) if distill is not None else None  # plain data in checkpoints
        self.teacher: Teacher | None = None
        self.model: ViT | None = None
        self.class_names: list[str] | None = None
        self.preprocess: Preprocess | None = None
        self.best_val_acc: float | None = None
        self.source = "trained from scratch"
        self._attention_device: str | None = None  # the device type attention was configured for

    # ------------------------------------------------------------------------ building
    def setup(self, stage: str) -> None:
        self._read_data_module()
        if stage == "fit" and self.hparams.distill and self.teacher is None:
            self.teacher = Teacher(Distill(**self.hparams.distill), self.class_names, self.preprocess)

    def _read_data_module(self) -> None:
        """Take class names, class count, image size and preprocessing from the data module.
        Also called from :meth:`configure_model`, which callbacks such as
        ``EMAWeightAveraging`` call before the module's own ``setup``."""
        dm = self.trainer.datamodule if self._trainer is not None else None
        names = getattr(dm, "class_names", None)
        if names:
            self.class_names = list(names)
            if self.hparams.num_classes is None:
                self.hparams.num_classes = len(names)
            elif self.hparams.num_classes != len(names):
                raise ValueError(f"model.num_classes={self.hparams.num_classes} but the data has "
                                 f"{len(names)} classes")
        spec = getattr(dm, "preprocess", None)
        if isinstance(spec, Preprocess):
            self.preprocess = spec
            if self.hparams.image_size is None:
                self.hparams.image_size = spec.crop_size
            elif self.hparams.image_size != spec.crop_size:
                raise ValueError(f"model.image_size={self.hparams.image_size} but the data's "
                                 f"image_size is {spec.crop_size}")

    def _config_fields(self) -> dict[str, Any]:
        hp = self.hparams
        fields = {k: hp[k] for k in ("patch_size", "stem", "dim", "depth", "num_heads", "mlp_ratio",
                                     "qkv_bias", "global_pool", "drop_rate", "attn_drop_rate",
                                     "drop_path_rate", "layer_scale_init")}
        return {**fields, **(hp.vit or {})}

    def configure_model(self) -> None:
        if self.model is not None:
            return
        hp = self.hparams
        if hp.num_classes is None or hp.image_size is None:
            self._read_data_module()
        if hp.vit and set(ViTConfig.__dataclass_fields__) <= set(hp.vit):  # saved by an earlier build
            model = ViT(ViTConfig(**hp.vit))
        elif hp.pretrained:
            model = self._load_pretrained(hp.pretrained)
        else:
            if hp.num_classes is None or hp.image_size is None:
                raise ValueError("model.num_classes and model.image_size are unknown: give them, or train "
                                 "with a data module that has class_names and preprocess")
            model = ViT(ViTConfig(**{"image_size": hp.image_size, "num_classes": hp.num_classes,
                                     **self._config_fields()}))
        self._set_model(model)

    def _set_model(self, model: ViT) -> None:
        """Install ``model`` (freezing, compiling) with metrics for its class count."""
        self._freeze(model, self.hparams.freeze_blocks)
        self.model = model
        self._attention_device = None
        self.hparams.vit = model.config.to_dict()
        k = model.config.num_classes
        self.metrics = torch.nn.ModuleDict({
            f"{stage}_{name}": MulticlassAccuracy(k, top_k=min(top_k, k), average="micro")
            for stage in ("train", "val", "test") for name, top_k in (("acc", 1), ("acc5", 5))
        }).to(self.device)
        if self.hparams.compile:
            _compile(model)

    def _load_pretrained(self, path: str) -> ViT:
        hp = self.hparams
        overrides = {k: hp[k] for k in ("drop_rate", "attn_drop_rate", "drop_path_rate")}
        overrides.update(hp.vit or {})  # the vit dict wins, as for a model built from the fields
        try:
            model, record = load_vit(path, **overrides)
        except (OSError, ValueError, KeyError, RuntimeError) as exc:  # missing, unsafe, corrupt or foreign
            raise DataError(f"model.pretrained: {exc}") from exc
        model.train()
        self.source = f"fine-tuned from {Path(path).name} ({record.get('source') or 'unknown'})"
        if hp.num_classes is not None and model.config.num_classes != hp.num_classes:
            log.info("replacing the %d-class head by a %d-class one", model.config.num_classes,
                     hp.num_classes)
            model.reset_classifier(hp.num_classes)
        if hp.image_size is not None and model.config.image_hw != (hp.image_size, hp.image_size):
            log.info("resizing position embeddings from %s to %d", model.config.image_hw, hp.image_size)
            model.set_image_size(hp.image_size)
        return model

    @staticmethod
    def _freeze(model: ViT, n_blocks: int) -> None:
        """Freeze the patch embedding, class token, position embeddings and first blocks."""
        if n_blocks <= 0:
            return
        if n_blocks > len(model.blocks):
            raise ValueError(f"model.freeze_blocks={n_blocks} but the ViT has {len(model.blocks)} blocks")
        for module in (model.patch_embed, *model.blocks[:n_blocks]):
            module.requires_grad_(False)
        for param in (model.cls_token, model.reg_token, model.pos_embed):
            if param is not None:
                param.requires_grad_(False)

    # ------------------------------------------------------------------------ steps
    def forward(self, images: Tensor) -> Tensor:
        """Float32 logits (B, K), also under bf16 autocast. With ``compile``, training steps
        run the compiled ViT and evaluation runs it eagerly (``ViT.forward`` directly): no
        recompiling for eval mode or for a last, smaller batch, for a small share of the time."""
        if self._attention_device != images.device.type:
            explicit = self.hparams.explicit_attention
            if explicit is None:
                explicit = images.device.type == "cpu"
            configure_attention(self.model, fused=not explicit)
            self._attention_device = images.device.type
        run = self.model if self.training else self.model.forward
        return run(images).float()

    def on_train_epoch_start(self) -> None:
        seed_epoch(self.global_rank, self.current_epoch)

    def training_step(self, batch: tuple[Tensor, Tensor, Tensor], batch_idx: int) -> Tensor:
        images, labels, targets = batch
        logits = self(images)
        loss = F.cross_entropy(logits, targets, label_smoothing=self.hparams.label_smoothing)
        if self.teacher is not None:
            weight = self.teacher.config.weight
            teacher_loss = self.teacher.loss(logits, images)
            self.log("train_teacher_loss", teacher_loss, on_step=True, on_epoch=True, batch_size=len(labels),
                     sync_dist=True)
            loss = (1 - weight) * loss + weight * teacher_loss
        self._log_metrics("train", loss, logits, labels)
        return loss

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._eval_step("val", batch)

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._eval_step("test", batch)

    def _eval_step(self, stage: str, batch: tuple[Tensor, Tensor]) -> None:
        images, labels = batch
        logits = self(images)
        self._log_metrics(stage, F.cross_entropy(logits, labels), logits, labels)

    def _log_metrics(self, stage: str, loss: Tensor, logits: Tensor, labels: Tensor) -> None:
        train = stage == "train"
        n = labels.shape[0]
        logits = logits.detach()
        self.log(f"{stage}_loss", loss, prog_bar=True, on_step=train, on_epoch=True, batch_size=n,
                 sync_dist=True)
        for name in ("acc", "acc5"):
            metric = self.metrics[f"{stage}_{name}"]
            metric(logits, labels)
            self.log(f"{stage}_{name}", metric, prog_bar=name == "acc", on_step=False, on_epoch=True,
                     batch_size=n)

    def predict_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        return self(batch[0]).softmax(dim=-1)  # (B, K)

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking or "val_acc" not in self.trainer.callback_metrics:
            return
        acc = float(self.trainer.callback_metrics["val_acc"])
        if self.best_val_acc is None or acc > self.best_val_acc:
            self.best_val_acc = acc

    # ------------------------------------------------------------------------ optimizer
    def configure_optimizers(self) -> dict[str, Any]:
        hp = self.hparams
        groups = param_groups(self.model, hp.weight_decay, self.model.config.depth, hp.layer_decay)
        for group in groups:
            group["lr"] = hp.lr * group["lr_scale"]
        fused = self.device.type in ("cpu", "cuda") and self._loss_scaler() is None
        optimizer = torch.optim.AdamW(groups, lr=hp.lr, betas=tuple(hp.betas), fused=fused)
        trainer = self.trainer
        total = trainer.estimated_stepping_batches
        if total == float("inf"):
            raise ValueError("set trainer.max_epochs or trainer.max_steps: the lr schedule needs a length")
        if trainer.num_training_batches == float("inf"):  # max_steps given, batches not counted yet
            trainer.fit_loop.setup_data()
        batches = trainer.num_training_batches
        per_epoch = total if batches == float("inf") else math.ceil(batches / trainer.accumulate_grad_batches)
        total = max(1, int(total))
        schedule = WarmupCosine(int(round(hp.warmup_epochs * per_epoch)), total, hp.min_lr / hp.lr)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, [schedule] * len(groups))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def _loss_scaler(self) -> Any:
        return getattr(self.trainer.precision_plugin, "scaler", None)

    def configure_gradient_clipping(self, optimizer: torch.optim.Optimizer,
                                    gradient_clip_val: float | None = None,
                                    gradient_clip_algorithm: str | None = None) -> None:
        """Without loss scaling (fp32, bf16) gradients are clipped here, because Lightning's
        mixed-precision plugin refuses to clip for a fused optimizer even when nothing is scaled."""
        if not gradient_clip_val or self._loss_scaler() is not None:
            return super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)
        params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        if gradient_clip_algorithm == "value":
            torch.nn.utils.clip_grad_value_(params, gradient_clip_val)
        else:
            torch.nn.utils.clip_grad_norm_(params, gradient_clip_val)

    # ------------------------------------------------------------------------ checkpoint
    def vit_record(self) -> dict[str, Any]:
        """The checkpoint's ``vit`` record (see :mod:`vit.checkpoint`)."""
        k = self.model.config.num_classes
        spec = self.preprocess or Preprocess(crop_size=self.model.config.image_hw[0],
                                             resize_size=self.model.config.image_hw[0])
        return {
            "config": self.model.config.to_dict(),
            "class_names": list(self.class_names) if self.class_names else [str(i) for i in range(k)],
            "preprocess": spec.to_dict(),
            "val_acc": self.best_val_acc,
            "source": self._source(),
        }

    def _source(self) -> str:
        """Where the weights come from, with the teacher's file when distilled."""
        distill = self.hparams.distill
        if not distill or "distilled from" in self.source:
            return self.source
        files = Distill(**distill).files()
        return f"{self.source}; distilled from {' + '.join(Path(f).name for f in files)}"

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["vit"] = self.vit_record()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Restore the record; the checkpoint's architecture wins over the configured one."""
        record = checkpoint.get("vit") or {}
        if record.get("config") and self.model is not None:
            config = ViTConfig(**record["config"])
            if config != self.model.config:
                log.info("rebuilding the ViT as the checkpoint's: %s", config)
                self._set_model(ViT(config))
        self.class_names = record.get("class_names") or self.class_names
        if record.get("preprocess") and self.preprocess is None:
            self.preprocess = Preprocess(**record["preprocess"])
        self.best_val_acc = record.get("val_acc")
        self.source = record.get("source", self.source)


def _compile(model: ViT) -> None:
    """``torch.compile`` the ViT in place, leaving a convolutional stem eager (compiled, it
    trained slower than eager on a 2-core CPU; training/README.md has the measurements). On
    a CPU without a C++ compiler (which the CPU backend needs) it warns and stays eager."""
    if not torch.cuda.is_available() and not any(shutil.which(c) for c in ("c++", "g++", "clang++")):
        log.warning("model.compile: no C++ compiler found for torch.compile on CPU; training eagerly")
        return
    if isinstance(model.patch_embed, ConvStem):
        model.patch_embed.forward = torch.compiler.disable(model.patch_embed.forward)
    model.compile()
