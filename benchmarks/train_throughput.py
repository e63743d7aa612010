"""Training throughput: a plain timm + torchvision loop against this project's data module
and LightningModule, on the same images, with the machine's matmul peaks for scale.

    python benchmarks/train_throughput.py --data-root ../shared/data/cifar10/train

(a) timm ``VisionTransformer`` (patch 4, dim 192, depth 6, 3 heads, mlp_ratio 2, 32x32,
    10 classes) in a plain PyTorch loop over ``torchvision.datasets.ImageFolder`` with
    RandomCrop(32, padding=4), flip, ToTensor, Normalize; DataLoader with 1 worker; AdamW;
    float32 and bf16 autocast.
(b) the same ``vit.ViT`` (no drop path, as timm's default) through ``ImageFolderData`` (cache
    mode, the full default augmentation recipe) and ``ImageClassifier`` in a Lightning
    ``Trainer``, bf16-mixed and 32;
    ``recipe``: the cifar10.yaml model (conv stem, average pooling), for scale.

Every run times ``--windows`` consecutive windows of ``--batches`` optimizer steps after
``--warmup`` steps; ``--rounds`` repeats the whole list of runs, alternating them, because
this machine's speed drifts by 10-15% from minute to minute. The table gives each run's best
window (the one least disturbed) and median, and both against the better timm loop. FLOPs of one training step
(forward + backward) are counted with ``FlopCounterMode``.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

ARCH = dict(patch_size=4, dim=192, depth=6, num_heads=3, mlp_ratio=2.0)


def matmul_peak(dtype: torch.dtype, n: int = 2048, reps: int = 10) -> float:
    """GFLOP/s of an n x n matmul in ``dtype``, best of ``reps``."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    best = float("inf")
    for _ in range(reps + 2):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e9


def train_flops(model: torch.nn.Module, batch: int, bf16: bool) -> float:
    """FLOPs of one forward + backward pass on ``batch`` 32x32 images."""
    x, y = torch.randn(batch, 3, 32, 32), torch.randint(0, 10, (batch,))
    counter = FlopCounterMode(display=False)
    amp = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else nullcontext()
    with counter:
        with amp:
            loss = F.cross_entropy(model(x), y)
        loss.backward()
    model.zero_grad(set_to_none=True)
    return float(counter.get_total_flops())


def windows(times: list[float], warmup: int, steps: int, n: int, batch: int) -> list[float]:
    """images/s of ``n`` consecutive windows of ``steps`` steps; ``times[i]`` ends step i."""
    return [steps * batch / (times[warmup + (w + 1) * steps - 1] - times[warmup + w * steps - 1])
            for w in range(n)]


def timm_loop(root: Path, bf16: bool, batch: int, warmup: int, steps: int,
              n_windows: int) -> tuple[list[float], float]:
    """(images/s per window, FLOPs per image) of the plain timm + torchvision loop."""
    import timm  # noqa: F401 -- the baseline needs timm
    from timm.models.vision_transformer import VisionTransformer
    from torchvision import datasets, transforms

    torch.manual_seed(0)
    model = VisionTransformer(img_size=32, num_classes=10, embed_dim=ARCH["dim"], depth=ARCH["depth"],
                              num_heads=ARCH["num_heads"], mlp_ratio=ARCH["mlp_ratio"],
                              patch_size=ARCH["patch_size"])
    flops = train_flops(model, batch, bf16) / batch
    tf = transforms.Compose([
        transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip(), transforms.ToTensor(),
        transforms.Normalize((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    ])
    loader = torch.utils.data.DataLoader(datasets.ImageFolder(str(root), tf), batch_size=batch,
                                         shuffle=True, num_workers=1, drop_last=True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.train()
    times = []
    for x, y in loader:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        times.append(time.perf_counter())
        if len(times) == warmup + n_windows * steps:
            break
    return windows(times, warmup, steps, n_windows, batch), flops


def ours(root: Path, precision: str, batch: int, warmup: int, steps: int, n_windows: int,
         cache_dir: str | None, compile_model: bool = False,
         explicit_attention: bool | None = None, **arch: object) -> tuple[list[float], float]:
    """(images/s per window, FLOPs per image) of ImageFolderData (cache mode) and
    ImageClassifier in a Trainer."""
    import lightning as L

    from training.image_classifier import ImageClassifier
    from training.image_data import ImageFolderData

    class StepTimer(L.Callback):
        def __init__(self) -> None:
            self.times: list[float] = []

        def on_train_batch_end(self, trainer, pl_module, outputs, batch_, batch_idx) -> None:  # noqa: ANN001
            self.times.append(time.perf_counter())

    L.seed_everything(0, verbose=False)
    data = ImageFolderData(root=str(root), batch_size=batch, mode="cache", cache_dir=cache_dir)
    model = ImageClassifier(**{**ARCH, "drop_path_rate": 0.0, **arch},  # timm's default: no drop path
                            compile=compile_model, explicit_attention=explicit_attention)
    timer = StepTimer()
    trainer = L.Trainer(accelerator="cpu", devices=1, precision=precision,
                        max_steps=warmup + n_windows * steps,
                        logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, limit_val_batches=0, num_sanity_val_steps=0,
                        gradient_clip_val=1.0, callbacks=[timer])
    trainer.fit(model, datamodule=data)
    flops = train_flops(model.model, batch, precision.startswith("bf16")) / batch
    return windows(timer.times, warmup, steps, n_windows, batch), flops


RUNS = {
    "timm-32": ("timm loop, fp32", "32"),
    "timm-bf16": ("timm loop, bf16 autocast", "bf16"),
    "ours-bf16": ("ours (Lightning), bf16-mixed", "bf16"),
    "ours-32": ("ours (Lightning), 32", "32"),
    "ours-bf16-sdpa": ("ours, bf16-mixed, SDPA attention", "bf16"),
    "ours-bf16-compile": ("ours, bf16-mixed, torch.compile", "bf16"),
    "recipe": ("cifar10.yaml model (conv stem)", "bf16"),
    "recipe-compile": ("cifar10.yaml model, torch.compile", "bf16"),
}
RECIPE = dict(stem="conv", global_pool="avg", vit={"class_token": False}, drop_path_rate=0.1)


def run_one(key: str, args: argparse.Namespace) -> tuple[list[float], float]:
    common = (args.batch_size, args.warmup, args.batches, args.windows)
    if key.startswith("timm"):
        return timm_loop(args.data_root, key == "timm-bf16", *common)
    precision = "32" if key == "ours-32" else "bf16-mixed"
    return ours(args.data_root, precision, *common, args.cache_dir,
                compile_model=key.endswith("compile"),
                explicit_attention=False if key.endswith("sdpa") else None,
                **(RECIPE if key.startswith("recipe") else {}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-root", type=Path, default=Path("../shared/data/cifar10/train"))
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--batches", type=int, default=20, help="timed batches per window")
    parser.add_argument("--windows", type=int, default=2, help="timed windows per run (best is reported)")
    parser.add_argument("--rounds", type=int, default=1,
                        help="repeat the list of runs; windows of all rounds are pooled per run")
    parser.add_argument("--cache-dir", default=None, help="image cache folder for the data module")
    parser.add_argument("--runs", default="timm-32,timm-bf16,ours-bf16,ours-bf16-compile,ours-32",
                        help=f"comma-separated subset of {','.join(RUNS)}")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    runs = args.runs.split(",")
    if unknown := [r for r in runs if r not in RUNS]:
        parser.error(f"unknown run(s) {unknown}; choose from {list(RUNS)}")
    if not args.data_root.is_dir():
        parser.error(f"--data-root {args.data_root} is not a folder")

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}, load average "
          f"{os.getloadavg()[0]:.1f}; batch {args.batch_size}, {args.warmup} warmup + "
          f"{args.windows} x {args.batches} timed batches per run, {args.rounds} round(s)")
    peak = {"32": matmul_peak(torch.float32), "bf16": matmul_peak(torch.bfloat16)}
    print(f"matmul peak (2048^3): fp32 {peak['32']:.0f} GFLOP/s, bf16 {peak['bf16']:.0f} GFLOP/s")
    if any(r.startswith("ours") for r in runs):  # build the image cache outside the timed runs
        from training.image_data import ImageFolderData

        t = time.perf_counter()
        ImageFolderData(root=str(args.data_root), cache_dir=args.cache_dir).prepare_data()
        print(f"image cache ready in {time.perf_counter() - t:.1f} s")

    results: dict[str, tuple[list[float], float]] = {}
    for round_ in range(args.rounds):  # rounds alternate the runs, so that drift hits all alike
        for key in runs:
            ips, flops = run_one(key, args)
            results.setdefault(key, ([], flops))[0].extend(ips)
            print(f"round {round_ + 1}: {key}: " + " ".join(f"{x:.0f}" for x in ips) + " img/s")
    timm = [r[0] for k, r in results.items() if k.startswith("timm")]
    best_timm = max((max(ips) for ips in timm), default=None)
    median_timm = max((statistics.median(ips) for ips in timm), default=None)
    print(f"\nload average at the end: {os.getloadavg()[0]:.1f}\n")
    print(f"| {'run':<38} | {'img/s best':>10} | {'median':>6} | {'vs timm (best)':>14} "
          f"| {'(median)':>8} | {'GFLOP/s':>7} | {'of peak':>7} |")
    print(f"|{'-' * 40}|{'-' * 12}|{'-' * 8}|{'-' * 16}|{'-' * 10}|{'-' * 9}|{'-' * 9}|")
    for key, (ips, flops) in results.items():
        name, prec = RUNS[key]
        best, median = max(ips), statistics.median(ips)
        gflops = best * flops / 1e9
        ratio = f"{best / best_timm:.2f}x" if best_timm else "-"
        ratio_median = f"{median / median_timm:.2f}x" if median_timm else "-"
        print(f"| {name:<38} | {best:10.0f} | {median:6.0f} | {ratio:>14} | {ratio_median:>8} "
              f"| {gflops:7.0f} | {100 * gflops / peak[prec]:6.0f}% |")
    flops = next(iter(results.values()))[1]
    print(f"\ntraining FLOPs per image (forward + backward, FlopCounterMode): {flops / 1e9:.3f} GFLOP")


if __name__ == "__main__":
    main()
