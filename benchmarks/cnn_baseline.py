"""How far a small convolutional network gets on the same validation split, trained on this
CPU in under an hour: the reference a ViT recipe has to beat (#16), and a candidate teacher.

    python benchmarks/cnn_baseline.py --data ../shared/data/cifar10/train \\
        [--model models/cifar10_vit.onnx] [--epochs 18] [--output cnn.pt]

The network is a plain stack without residual connections, in the manner of the fast
CIFAR-10 trainers (a 3x3 conv, then three stages of conv -> 2x2 max-pool -> BatchNorm -> GELU
-> conv -> BatchNorm -> GELU at widths 64, 256, 256, a global max-pool and a linear head; 2.0M
parameters, ~0.3 GFLOPs per image), trained with SGD (Nesterov, a linear warm-up over 15% of
the steps, then linearly to zero), label smoothing 0.2, flips and 4-pixel reflected
translations, in bf16 autocast.
The split is vit-train's (``--val-fraction``, ``--seed``), the images come from vit-train's
decode-once cache, and the ViT file given with ``--model`` is evaluated on the same images as
``vit-predict`` serves it; the table puts the two side by side. ``--output`` saves the
network's weights (written to a temporary file next to it, then renamed). Set
OMP_NUM_THREADS and pause other work first.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F  # noqa: N812
from torch import Tensor, nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from model_cost import architecture  # noqa: E402

from training.augment import random_crop, random_flip  # noqa: E402
from training.image_cache import cached_decode  # noqa: E402
from vit.errors import DataError  # noqa: E402
from vit.image_folder import scan_folder, split_indices  # noqa: E402
from vit.preprocess import Preprocess  # noqa: E402


class Stage(nn.Module):
    """conv -> 2x2 max-pool -> BN -> GELU -> conv -> BN -> GELU: (B, Cin, H, W) -> (B, Cout, H/2, W/2)."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
        self.norm1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.norm2 = nn.BatchNorm2d(cout)

    def forward(self, x: Tensor) -> Tensor:
        x = F.gelu(self.norm1(F.max_pool2d(self.conv1(x), 2)))
        return F.gelu(self.norm2(self.conv2(x)))


def small_cnn(num_classes: int, widths: tuple[int, int, int] = (64, 256, 256)) -> nn.Sequential:
    """(B, 3, H, W) normalized images -> (B, num_classes) logits."""
    return nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.GELU(),
        Stage(32, widths[0]), Stage(widths[0], widths[1]), Stage(widths[1], widths[2]),
        nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Linear(widths[2], num_classes, bias=False),
    )


def accuracy(model: nn.Module, images: Tensor, labels: Tensor, normalize: Normalize,
             flip_tta: bool) -> float:
    """Top-1 on uint8 images (N, 3, H, W); with ``flip_tta`` the softmax of the image and its
    mirror image are averaged."""
    model.eval()
    correct = 0
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        for start in range(0, len(images), 500):
            x = normalize(images[start:start + 500].float())
            probs = model(x).float().softmax(-1)
            if flip_tta:
                probs = probs + model(x.flip(-1)).float().softmax(-1)
            correct += int((probs.argmax(-1) == labels[start:start + 500]).sum())
    model.train()
    return correct / len(images)


class Normalize:
    """float (B, 3, H, W) in 0..255 -> normalized as the ViT's preprocessing, channels-last."""

    def __init__(self, spec: Preprocess) -> None:
        self.mean = torch.tensor(spec.mean).view(1, 3, 1, 1) * 255
        self.std = torch.tensor(spec.std).view(1, 3, 1, 1) * 255

    def __call__(self, x: Tensor) -> Tensor:
        return ((x - self.mean) / self.std).contiguous(memory_format=torch.channels_last)


def train(model: nn.Module, images: Tensor, labels: Tensor, normalize: Normalize, epochs: int,
          batch_size: int, lr: float, on_epoch: Callable[[int, float], None]) -> float:
    """SGD with Nesterov momentum, linear warm-up over 15% of the steps then linear decay to 0;
    returns the seconds spent training (``on_epoch`` excluded)."""
    steps_per_epoch = len(images) // batch_size
    total = max(1, epochs * steps_per_epoch)
    warm = max(1, int(0.15 * total))
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": 5e-4}, {"params": no_decay, "weight_decay": 0.0}]
    opt = torch.optim.SGD(groups, lr=lr, momentum=0.9, nesterov=True)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / warm if s < warm else max(0.0, (total - s) / max(1, total - warm)))
    seconds = 0.0
    for epoch in range(epochs):
        start = time.perf_counter()
        order = torch.randperm(len(images))
        for i in range(steps_per_epoch):
            batch = order[i * batch_size:(i + 1) * batch_size]
            x = normalize(random_crop(random_flip(images[batch].float(), 0.5), 4, mode="reflect"))
            with torch.autocast("cpu", dtype=torch.bfloat16):
                logits = model(x)
            loss = F.cross_entropy(logits.float(), labels[batch], label_smoothing=0.2)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        elapsed = time.perf_counter() - start
        seconds += elapsed
        on_epoch(epoch + 1, elapsed)
    return seconds


def vit_accuracy(path: Path, data: Path, val_fraction: float, seed: int) -> tuple[str, int, float]:
    """(name, parameters, validation accuracy) of an exported ViT, served as vit-predict does."""
    from export.evaluate import evaluate
    from export.onnx_classifier import OnnxClassifier

    clf = OnnxClassifier(path)
    params, _ = architecture(clf)
    result = evaluate(clf, data, val_fraction, seed)
    return f"{path} ({clf.backend} {clf.precision})", params, result["accuracy"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--data", type=Path, required=True, help="ImageFolder (vit-train's data.root)")
    p.add_argument("--model", type=Path, help="an exported ViT (.onnx) to put next to it")
    p.add_argument("--epochs", type=int, default=18)
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--lr", type=float, default=0.2)
    p.add_argument("--val-fraction", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0, help="the split's seed, as vit-train's data.seed")
    p.add_argument("--cache-dir", type=Path, help="vit-train's image cache (default ~/.cache/vit-service)")
    p.add_argument("--output", type=Path, help="save the trained network's state_dict here")
    args = p.parse_args(argv)
    if args.model is not None and not args.model.is_file():
        print(f"cnn_baseline: {args.model}: no such file", file=sys.stderr)
        return 2
    try:
        index = scan_folder(args.data)
        decoded = cached_decode(index, Preprocess(), args.cache_dir)
    except DataError as exc:
        print(f"cnn_baseline: {exc}", file=sys.stderr)
        return 2
    train_idx, val_idx = split_indices(decoded.labels.tolist(), args.val_fraction, args.seed)
    if len(train_idx) < args.batch_size or not val_idx:
        print(f"cnn_baseline: {args.data}: {len(train_idx)} training and {len(val_idx)} validation images; "
              f"need at least --batch-size ({args.batch_size}) and one", file=sys.stderr)
        return 2
    x_train, y_train = decoded.images[train_idx], decoded.labels[train_idx]
    x_val, y_val = decoded.images[val_idx], decoded.labels[val_idx]

    torch.manual_seed(args.seed)
    model = small_cnn(len(decoded.class_names)).to(memory_format=torch.channels_last)
    params = sum(p.numel() for p in model.parameters())
    normalize = Normalize(Preprocess())

    def report(epoch: int, seconds: float) -> None:
        print(f"epoch {epoch}: val {accuracy(model, x_val, y_val, normalize, False):.4f} "
              f"({seconds:.0f} s)", flush=True)

    print(f"small CNN, {params:,} parameters, {len(train_idx)} training and {len(val_idx)} validation "
          f"images, {args.epochs} epochs, {torch.get_num_threads()} threads", flush=True)
    train_s = train(model, x_train, y_train, normalize, args.epochs, args.batch_size, args.lr, report)
    plain = accuracy(model, x_val, y_val, normalize, False)
    tta = accuracy(model, x_val, y_val, normalize, True)
    if args.output is not None:
        tmp = args.output.with_name(f".{args.output.name}.{os.getpid()}.tmp")
        torch.save(model.state_dict(), tmp)
        tmp.replace(args.output)

    rows = [("small CNN", params, f"{args.epochs} epochs, {train_s / 60:.1f} min", plain, tta)]
    if args.model is not None:
        name, vit_params, vit_acc = vit_accuracy(args.model, args.data, args.val_fraction, args.seed)
        rows.append((name, vit_params, "(its model card)", vit_acc, None))
    ref = rows[-1][3]
    print(f"\nvalidation split of {args.data} ({len(val_idx)} images); ratios against the last row")
    print("| model | parameters | training here | val acc | val acc, flip TTA | error vs last row |")
    print("|---|---:|---|---:|---:|---:|")
    for name, n, cost, acc, acc_tta in rows:
        error_ratio = (1 - acc) / (1 - ref) if ref < 1 else float("nan")
        tta_cell = f"{acc_tta:.2%}" if acc_tta is not None else ""
        print(f"| {name} | {n:,} | {cost} | {acc:.2%} | {tta_cell} | {error_ratio:.2f}x |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
