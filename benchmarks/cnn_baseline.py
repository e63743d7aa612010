"""How far a small convolutional network gets on the same validation split, trained on this
CPU in under an hour: the reference a ViT recipe has to beat (#16), and the teacher it can
distil from (``--model.distill.teacher``).

    python benchmarks/cnn_baseline.py --data ../shared/data/cifar10/train \\
        [--model models/cifar10_vit.onnx] [--epochs 18] [--output cnn.safetensors] [--state run.pt]

The network is :class:`training.cnn.SmallCNN` (2.0M parameters, ~0.3 GFLOPs per image),
trained with SGD (Nesterov, a linear warm-up over 15% of the steps, then linearly to zero),
label smoothing 0.2, flips and 4-pixel reflected translations, in bf16 autocast where the CPU
has bf16 instructions and in fp32 elsewhere (``--precision``).
The split is vit-train's (``--val-fraction``, ``--seed``), the images come from vit-train's
decode-once cache, and the ViT file given with ``--model`` is evaluated on the same images as
``vit-predict`` serves it; the table puts the two side by side. ``--output`` saves the
network with its classes and preprocessing, a teacher file (written to a temporary file next
to it, then renamed); ``--state`` keeps the whole run after every epoch, so a run longer than
a sitting continues where it stopped with the same batches. Set OMP_NUM_THREADS and pause
other work first.
"""

from __future__ import annotations

import argparse
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

from training.augment import Normalize, random_crop, random_flip  # noqa: E402
from training.checkpoint_io import atomic_torch_save, read_checkpoint_file  # noqa: E402
from training.cnn import CNNConfig, SmallCNN  # noqa: E402
from training.image_cache import cached_decode  # noqa: E402
from training.teacher import save_cnn  # noqa: E402
from training.train import cpu_has_bf16  # noqa: E402
from vit.errors import DataError  # noqa: E402
from vit.image_folder import scan_folder, split_indices  # noqa: E402
from vit.preprocess import Preprocess  # noqa: E402


def accuracy(model: nn.Module, images: Tensor, labels: Tensor, normalize: Normalize,
             flip_tta: bool, bf16: bool = True) -> float:
    """Top-1 on uint8 images (N, 3, H, W); with ``flip_tta`` the softmax of the image and its
    mirror image are averaged."""
    model.eval()
    correct = 0
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        for start in range(0, len(images), 500):
            x = normalize(images[start:start + 500]).contiguous(memory_format=torch.channels_last)
            probs = model(x).float().softmax(-1)
            if flip_tta:
                probs = probs + model(x.flip(-1)).float().softmax(-1)
            correct += int((probs.argmax(-1) == labels[start:start + 500]).sum())
    model.train()
    return correct / len(images)


def train(model: nn.Module, images: Tensor, labels: Tensor, normalize: Normalize, epochs: int,
          batch_size: int, lr: float, on_epoch: Callable[[int, float], None], *, bf16: bool = True,
          state_path: Path | None = None) -> float:
    """SGD with Nesterov momentum, linear warm-up over 15% of the steps then linear decay to 0;
    returns the seconds spent training (``on_epoch`` excluded). With ``state_path``, the whole
    state (weights, optimizer, schedule, random generator, epoch) is saved there after every
    epoch, and a run finding it there continues from it with the same batches and updates."""
    steps_per_epoch = len(images) // batch_size
    total = max(1, epochs * steps_per_epoch)
    warm = max(1, int(0.15 * total))
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": 5e-4}, {"params": no_decay, "weight_decay": 0.0}]
    opt = torch.optim.SGD(groups, lr=lr, momentum=0.9, nesterov=True)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / warm if s < warm else max(0.0, (total - s) / max(1, total - warm)))
    seconds, first = 0.0, 0
    if state_path is not None and state_path.is_file():
        state = read_checkpoint_file(state_path)
        if state.get("epochs") != epochs:
            raise DataError(f"{state_path}: a run of {state.get('epochs')} epochs, not --epochs {epochs}")
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"])
        seconds, first = state["seconds"], state["epoch"]
        print(f"resumed from {state_path} after epoch {first}", flush=True)
    for epoch in range(first, epochs):
        start = time.perf_counter()
        order = torch.randperm(len(images))
        for i in range(steps_per_epoch):
            batch = order[i * batch_size:(i + 1) * batch_size]
            x = normalize(random_crop(random_flip(images[batch].float(), 0.5), 4, mode="reflect"))
            x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                logits = model(x)
            loss = F.cross_entropy(logits.float(), labels[batch], label_smoothing=0.2)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        elapsed = time.perf_counter() - start
        seconds += elapsed
        if state_path is not None:
            atomic_torch_save({"model": model.state_dict(), "optimizer": opt.state_dict(),
                               "scheduler": sched.state_dict(), "rng": torch.get_rng_state(),
                               "epoch": epoch + 1, "epochs": epochs, "seconds": seconds}, state_path)
        on_epoch(epoch + 1, elapsed)
    return seconds


def bf16_autocast(precision: str) -> bool:
    """Whether to train in bf16 autocast: ``precision`` "bf16", "32", or "auto" (bf16 where
    oneDNN has bf16 instructions on this CPU)."""
    if precision == "auto":
        return cpu_has_bf16()
    return precision == "bf16"


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
    p.add_argument("--output", type=Path,
                   help="save the trained network here (.safetensors): a teacher for model.distill.teacher")
    p.add_argument("--state", type=Path,
                   help="save the run's whole state here after every epoch; continue from it if it is there")
    p.add_argument("--precision", choices=("auto", "bf16", "32"), default="auto",
                   help="bf16 autocast or fp32; auto = bf16 where the CPU has bf16 instructions "
                        "(AVX512-BF16, AMX; ~3x faster there) and fp32 elsewhere (where bf16 is ~50x slower)")
    args = p.parse_args(argv)
    if args.output is not None and args.output.suffix != ".safetensors":
        print(f"cnn_baseline: --output {args.output}: must end in .safetensors", file=sys.stderr)
        return 2
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
    model = SmallCNN(CNNConfig(num_classes=len(decoded.class_names))).to(memory_format=torch.channels_last)
    params = sum(p.numel() for p in model.parameters())
    spec = Preprocess()
    normalize = Normalize(spec)
    bf16 = bf16_autocast(args.precision)

    def report(epoch: int, seconds: float) -> None:
        print(f"epoch {epoch}: val {accuracy(model, x_val, y_val, normalize, False, bf16):.4f} "
              f"({seconds:.0f} s)", flush=True)

    print(f"small CNN, {params:,} parameters, {len(train_idx)} training and {len(val_idx)} validation "
          f"images, {args.epochs} epochs, {'bf16' if bf16 else 'fp32'}, {torch.get_num_threads()} threads",
          flush=True)
    try:
        train_s = train(model, x_train, y_train, normalize, args.epochs, args.batch_size, args.lr, report,
                        bf16=bf16, state_path=args.state)
    except DataError as exc:
        print(f"cnn_baseline: {exc}", file=sys.stderr)
        return 2
    plain = accuracy(model, x_val, y_val, normalize, False, bf16)
    tta = accuracy(model, x_val, y_val, normalize, True, bf16)
    if args.output is not None:
        save_cnn(model, {"class_names": list(decoded.class_names), "preprocess": spec.to_dict(),
                         "val_acc": plain, "source": f"benchmarks/cnn_baseline.py, {args.epochs} epochs "
                         f"on {args.data} (val_fraction {args.val_fraction}, seed {args.seed})"}, args.output)

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
