"""Deletion test (Petsiuk et al. 2018, as used by Chefer et al. 2021): how faithful is a
relevance map to what the model actually uses?

For each image, patches are removed from most to least relevant according to a map -- a
removed patch is set to 0 after normalization (the dataset's mean colour; ``--baseline
zero``) or to the image's own mean colour (``--baseline image-mean``) -- and the
probability of the true class is recorded after each step. The area under that curve
(fraction removed on the x axis, 0..1) is lower when the map puts first what the model
needs. Maps compared:

    rollout          attention rollout (vit/rollout.py), --head-fusion / --discard-ratio
    raw-last-layer   the last layer's class-token attention, mean over heads
    gradient         gradient-weighted rollout for the true class (vit/relevance.py)
    random           a random order (the reference a useful map must beat)

    python benchmarks/faithfulness.py --checkpoint run/best.ckpt --data path/to/val \\
        --num-images 300 [--steps 16] [--output results.json]

``--data`` is an ImageFolder (``<class>/<image>``) whose class folders are named as in the
checkpoint's class names.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

if __package__ in (None, ""):  # run as a script from anywhere: make the project importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from PIL import Image  # noqa: E402

from vit.checkpoint import load_vit  # noqa: E402
from vit.preprocess import Preprocess, preprocess_image  # noqa: E402
from vit.relevance import class_relevance, forward_with_attention, patch_grid  # noqa: E402
from vit.rollout import attention_rollout, raw_attention  # noqa: E402
from vit.vit import ViT  # noqa: E402

METHODS = ("rollout", "raw-last-layer", "gradient", "random")
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff"}


def sample_image_folder(root: Path, class_names: list[str], num_images: int,
                        seed: int) -> list[tuple[Path, int]]:
    """``num_images`` (path, class index) pairs drawn without replacement from an ImageFolder."""
    if not root.is_dir():
        raise SystemExit(f"--data {root}: not a directory")
    items: list[tuple[Path, int]] = []
    for folder in sorted(d for d in root.iterdir() if d.is_dir()):
        if folder.name not in class_names:
            raise SystemExit(f"--data {root}: class folder {folder.name!r} is not one of the checkpoint's "
                             f"classes {class_names}")
        label = class_names.index(folder.name)
        items += [(p, label) for p in sorted(folder.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES]
    if not items:
        raise SystemExit(f"--data {root}: no images in class folders")
    rng = np.random.default_rng(seed)
    chosen = rng.choice(len(items), size=min(num_images, len(items)), replace=False)
    return [items[i] for i in sorted(chosen)]


def relevance_maps(model: ViT, x: torch.Tensor, y: torch.Tensor, rng: np.random.Generator, *,
                   head_fusion: str, discard_ratio: float) -> dict[str, np.ndarray]:
    """Every method's map for a batch: name -> (B, Gh, Gw)."""
    _, weights = forward_with_attention(model, x)  # (B, L, H, N, N)
    layout = dict(num_prefix_tokens=model.num_prefix_tokens, grid=patch_grid(model, x),
                  pool=model.config.global_pool)
    return {
        "rollout": attention_rollout(weights, head_fusion=head_fusion, discard_ratio=discard_ratio, **layout),
        "raw-last-layer": raw_attention(weights, -1, None, **layout),
        "gradient": class_relevance(model, x, y.tolist()),
        "random": rng.random((x.shape[0], *layout["grid"])),
    }


def deletion_curves(model: ViT, x: torch.Tensor, y: torch.Tensor, relevance: np.ndarray, *,
                    steps: int, baseline: str, batch_size: int) -> np.ndarray:
    """True-class probability after removing the top ``k_s`` patches, k_s = round(s G / steps),
    s = 0..steps: (B, steps + 1)."""
    b, _, h, w = x.shape
    gh, gw = relevance.shape[1:]
    ph, pw = -(-h // gh), -(-w // gw)  # patch size in pixels
    order = np.argsort(-relevance.reshape(b, -1), axis=1, kind="stable")  # (B, G), most relevant first
    counts = np.round(np.linspace(0, gh * gw, steps + 1)).astype(int)
    fill = torch.zeros_like(x) if baseline == "zero" else x.mean(dim=(2, 3), keepdim=True).expand_as(x)
    variants = []
    for k in counts:
        keep = np.ones((b, gh * gw), dtype=np.float32)
        np.put_along_axis(keep, order[:, :k], 0.0, axis=1)
        mask = torch.from_numpy(keep).view(b, 1, gh, gw)  # (B, 1, Gh, Gw)
        mask = mask.repeat_interleave(ph, dim=2).repeat_interleave(pw, dim=3)[..., :h, :w]  # (B, 1, H, W)
        variants.append(x * mask + fill * (1 - mask))
    batch = torch.stack(variants, dim=1).flatten(0, 1)  # (B * (steps+1), C, H, W)
    probs = []
    with torch.inference_mode():
        for start in range(0, batch.shape[0], batch_size):
            probs.append(model(batch[start:start + batch_size]).softmax(dim=-1))
    probs = torch.cat(probs).view(b, steps + 1, -1)  # (B, steps+1, K)
    return probs.gather(2, y.view(b, 1, 1).expand(b, steps + 1, 1))[..., 0].double().numpy()


def area_under(curves: np.ndarray) -> np.ndarray:
    """Trapezoidal area under each curve over the fraction removed (0..1): (B, S+1) -> (B,)."""
    dx = 1.0 / (curves.shape[1] - 1)
    return dx * (curves[:, 1:] + curves[:, :-1]).sum(axis=1) / 2.0


def run(checkpoint: Path, data: Path, *, num_images: int, steps: int, baseline: str, head_fusion: str,
        discard_ratio: float, batch_size: int, seed: int) -> dict:
    model, record = load_vit(checkpoint)
    names = record.get("class_names")
    if not names or not record.get("preprocess"):
        raise SystemExit(f"{checkpoint}: no class names / preprocess record; use a checkpoint from vit-train")
    spec = Preprocess(**record["preprocess"])
    items = sample_image_folder(data, list(names), num_images, seed)
    rng = np.random.default_rng(seed)
    curves: dict[str, list[np.ndarray]] = {m: [] for m in METHODS}
    correct = 0
    start = time.perf_counter()
    chunk = max(1, batch_size // (steps + 1))
    for i in range(0, len(items), chunk):
        part = items[i:i + chunk]
        x = torch.from_numpy(np.stack([preprocess_image(Image.open(p), spec) for p, _ in part]))
        y = torch.tensor([label for _, label in part])
        with torch.inference_mode():
            correct += int((model(x).argmax(-1) == y).sum())
        maps = relevance_maps(model, x, y, rng, head_fusion=head_fusion, discard_ratio=discard_ratio)
        for method in METHODS:
            curves[method].append(deletion_curves(model, x, y, maps[method], steps=steps, baseline=baseline,
                                                  batch_size=batch_size))
    results = {"checkpoint": str(checkpoint), "data": str(data), "num_images": len(items), "steps": steps,
               "baseline": baseline, "rollout": {"head_fusion": head_fusion, "discard_ratio": discard_ratio},
               "accuracy": correct / len(items), "seconds": round(time.perf_counter() - start, 1),
               "methods": {}}
    for method in METHODS:
        c = np.concatenate(curves[method])  # (num_images, steps+1)
        auc = area_under(c)
        sem = float(auc.std(ddof=1) / np.sqrt(len(auc))) if len(auc) > 1 else 0.0
        results["methods"][method] = {"auc": float(auc.mean()), "auc_sem": sem,
                                      "mean_curve": c.mean(axis=0).round(4).tolist()}
    return results


def report(results: dict) -> str:
    lines = [f"deletion test: {results['num_images']} images from {results['data']}, baseline "
             f"{results['baseline']}, {results['steps']} steps; model accuracy {results['accuracy']:.1%}; "
             f"{results['seconds']} s",
             f"{'map':<16}{'AUC (lower is better)':>24}  true-class prob at 0/25/50% removed"]
    s = results["steps"]
    for method, r in sorted(results["methods"].items(), key=lambda kv: kv[1]["auc"]):
        curve = r["mean_curve"]
        at = "  ".join(f"{curve[round(f * s)]:.3f}" for f in (0.0, 0.25, 0.5))
        lines.append(f"{method:<16}{r['auc']:>16.4f} ± {r['auc_sem']:.4f}  {at}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--checkpoint", type=Path, required=True, help="vit-train .ckpt or project .safetensors")
    p.add_argument("--data", type=Path, required=True, help="ImageFolder of validation images")
    p.add_argument("--num-images", type=int, default=300)
    p.add_argument("--steps", type=int, default=16,
                   help="deletion steps (patches removed per step: G / steps)")
    p.add_argument("--baseline", choices=("zero", "image-mean"), default="zero",
                   help="what a removed patch becomes: 0 after normalization, or the image's mean colour")
    p.add_argument("--head-fusion", choices=("mean", "max", "min"), default="mean")
    p.add_argument("--discard-ratio", type=float, default=0.0)
    p.add_argument("--batch-size", type=int, default=256, help="images per forward pass")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", type=Path, help="also write the results as JSON")
    args = p.parse_args(argv)
    if args.steps < 1 or args.num_images < 1:
        p.error("--steps and --num-images must be positive")
    torch.manual_seed(args.seed)
    results = run(args.checkpoint, args.data, num_images=args.num_images, steps=args.steps,
                  baseline=args.baseline, head_fusion=args.head_fusion, discard_ratio=args.discard_ratio,
                  batch_size=args.batch_size, seed=args.seed)
    print(report(results))
    if args.output:
        tmp = args.output.with_name(args.output.name + ".tmp")
        tmp.write_text(json.dumps(results, indent=2) + "\n")
        tmp.replace(args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
