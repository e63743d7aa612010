"""How faithful is each relevance map to what the model actually uses? Deletion and insertion
tests (Petsiuk et al. 2018, as in Chefer et al. 2021), on a checkpoint or an ONNX file.

Deletion: patches are blanked from most to least relevant according to a map (a blanked
patch is 0 after normalization, the dataset's mean colour; ``--baseline image-mean``: the
image's own mean) and the probability of the true class is recorded after each step; the
area under that curve (fraction blanked on the x axis, 0..1) is lower when the map puts
first what the model needs. Insertion: from the fully blanked image, patches are restored
most relevant first; the area is higher when the map is faithful. Maps compared, every one
the demo offers and the reference every map must beat:

    rollout          attention rollout (vit/rollout.py), --head-fusion / --discard-ratio
    contribution-rollout
                     rollout of the blocks' measured token contributions (ALTI), the final
                     tokens weighed by how much they move the logits (files exported with
                     the contributions output, and checkpoints)
    raw-last-layer   the last layer's attention to the patches, mean over heads
    rise             the true class's mean logit with each patch shown minus blanked, over
                     --num-masks copies with half of the patches blanked at random
                     (vit/rise.py), the demo's class-specific map (ONNX and PyTorch alike)
    occlusion        the true class's logit drop when each patch, alone and in 2x2 windows,
                     is blanked (vit/occlusion.py)
    class-rollout    each final token's share of the true class's logit, carried back along
                     rollout (files and checkpoints of average-pooling models)
    gradient         gradient-weighted rollout for the true class (checkpoints only)
    random           a random order

    python benchmarks/faithfulness.py --model models/cifar10_vit.onnx \\
        --data ../shared/data/cifar10/train --split val --num-images 500

``--data`` is an ImageFolder whose class folders are named as the model's classes.
``--split val`` draws from the validation images vit-train held out of that folder
(``--val-fraction``/``--split-seed`` as in the recipe), so that a model trained on the
folder is judged on images it never saw. Output: a table of AUCs with standard errors and
their change against random, and per class the deletion AUC of every map.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

if __package__ in (None, ""):  # run as a script from anywhere: make the project importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from export.backends import add_runtime_arguments  # noqa: E402
from vit.image_folder import scan_folder, split_indices  # noqa: E402
from vit.occlusion import masked, occluded, occlusion_map  # noqa: E402
from vit.preprocess import Preprocess, preprocess_image  # noqa: E402
from vit.rise import NUM_MASKS, random_masks, rise_map  # noqa: E402
from vit.rollout import attention_rollout, class_rollout, contribution_rollout, raw_attention  # noqa: E402

METHODS = ("rollout", "contribution-rollout", "raw-last-layer", "rise", "occlusion", "class-rollout",
           "gradient", "random")
Logits = Callable[[np.ndarray], np.ndarray]  # (B, 3, H, W) float32 -> (B, K)


class Subject:
    """The model under test, through PyTorch or an ONNX file: logits, and the outputs each
    map needs (attention (B, L, H, N, N), token_logits (B, Gh*Gw, K), contributions
    (B, L, N, N), gradient maps)."""

    def __init__(self, path: Path, backend: str, precision: str, providers: list[str] | None = None) -> None:
        self.path = path
        if path.suffix == ".onnx":
            from export.onnx_classifier import OnnxClassifier

            clf = OnnxClassifier(path, providers=providers, backend=backend, precision=precision)
            info = clf.info
            self.class_names, self.preprocess, self.grid = info.class_names, info.preprocess, info.grid
            self.num_prefix_tokens = info.num_prefix_tokens
            self.pool = info.config.get("global_pool", "token")
            self.runtime = clf.runtime
            self.outputs = set(info.outputs)
            self._run = lambda x, names: clf.predict_batch(x, names)
            self.gradient = None
        else:
            import torch

            from vit.checkpoint import load_vit
            from vit.relevance import class_relevance, forward_with_contributions, token_logits

            model, record = load_vit(path)
            if not record.get("class_names") or not record.get("preprocess"):
                raise SystemExit(f"{path}: no class names / preprocess record; use a vit-train checkpoint")
            self.class_names = list(record["class_names"])
            self.preprocess = Preprocess(**record["preprocess"])
            self.grid, self.num_prefix_tokens = model.grid_size, model.num_prefix_tokens
            self.pool, self.runtime = model.config.global_pool, "PyTorch fp32"
            self.outputs = {"logits", "attention", "contributions"}
            if self.pool == "avg":
                self.outputs.add("token_logits")

            def run(x: np.ndarray, names: list[str]) -> dict[str, np.ndarray]:
                with torch.inference_mode():
                    images = torch.from_numpy(x)
                    if "contributions" in names:
                        tokens, weights, contributions = forward_with_contributions(model, images)
                    else:
                        tokens, weights = model.forward_features(images, "attention" in names)
                    out = {"logits": model.forward_head(tokens).numpy()}
                    if "attention" in names:
                        out["attention"] = torch.stack(weights, dim=1).numpy()
                    if "contributions" in names:
                        out["contributions"] = contributions.numpy()
                    if "token_logits" in names:
                        out["token_logits"] = token_logits(model, tokens).numpy()
                return out

            self._run = run
            self.gradient = lambda x, y: class_relevance(model, torch.from_numpy(x), y.tolist())

    def logits(self, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
        return np.concatenate([self._run(x[i:i + batch_size], ["logits"])["logits"]
                               for i in range(0, len(x), batch_size)])

    def methods(self) -> list[str]:
        have = [m for m in METHODS if m not in ("class-rollout", "gradient")]
        if {"attention", "token_logits"} <= self.outputs:
            have.insert(have.index("occlusion") + 1, "class-rollout")
        if self.gradient is not None:
            have.insert(-1, "gradient")
        if "attention" not in self.outputs:
            have = [m for m in have if m not in ("rollout", "raw-last-layer")]
        if "contributions" not in self.outputs:
            have.remove("contribution-rollout")
        return have

    def maps(self, x: np.ndarray, y: np.ndarray, rng: np.random.Generator, *, head_fusion: str,
             discard_ratio: float, num_masks: int = NUM_MASKS) -> dict[str, np.ndarray]:
        """Every method's map for a batch, for the true classes ``y``: name -> (B, Gh, Gw)."""
        names = ["logits"] + [n for n in ("attention", "token_logits", "contributions") if n in self.outputs]
        out = self._run(x, names)
        layout = dict(num_prefix_tokens=self.num_prefix_tokens, grid=self.grid)
        maps: dict[str, np.ndarray] = {}
        if "attention" in out:
            w = out["attention"]
            maps["rollout"] = attention_rollout(w, head_fusion=head_fusion, discard_ratio=discard_ratio,
                                                pool=self.pool, **layout)
            maps["raw-last-layer"] = raw_attention(w, -1, None, pool=self.pool, **layout)
        if "contributions" in out:
            maps["contribution-rollout"] = contribution_rollout(out["contributions"], out.get("token_logits"),
                                                                pool=self.pool, **layout)
        if "token_logits" in out:
            maps["class-rollout"] = class_rollout(out["attention"], out["token_logits"], y, **layout)
        copies = np.concatenate([occluded(image, self.grid) for image in x])  # (B*G, 3, H, W)
        blanked = self.logits(copies).reshape(len(x), -1, out["logits"].shape[1])  # (B, W, K), W windows
        maps["occlusion"] = np.stack([occlusion_map(out["logits"][i], blanked[i], int(y[i]), self.grid)
                                      for i in range(len(x))])
        masks = random_masks(self.grid, num_masks)  # (M, Gh, Gw)
        copies = np.concatenate([masked(image, self.grid, masks) for image in x])  # (B*M, 3, H, W)
        shown = self.logits(copies).reshape(len(x), num_masks, -1)  # (B, M, K)
        maps["rise"] = np.stack([rise_map(shown[i], masks, int(y[i])) for i in range(len(x))])
        if self.gradient is not None:
            maps["gradient"] = self.gradient(x, y)
        maps["random"] = rng.random((len(x), *self.grid))
        return maps


def sample_images(root: Path, class_names: list[str], num_images: int, seed: int, *, split: str,
                  val_fraction: float, split_seed: int) -> list[tuple[Path, int]]:
    """``num_images`` (path, class index) pairs drawn without replacement from an ImageFolder,
    or from its validation split exactly as vit-train carves it (same scan, same split)."""
    if not root.is_dir():
        raise SystemExit(f"--data {root}: not a directory")
    try:
        found = scan_folder(root)
    except ValueError as exc:  # DataError: an empty folder, a class without images
        raise SystemExit(f"--data {exc}") from exc
    unknown = sorted(set(found.class_names) - set(class_names))
    if unknown:
        raise SystemExit(f"--data {root}: class folder {unknown[0]!r} is not one of the model's classes "
                         f"{class_names}")
    pool = list(range(len(found.files)))
    if split == "val":
        _, pool = split_indices(found.labels, val_fraction, split_seed)
    rng = np.random.default_rng(seed)
    chosen = rng.choice(len(pool), size=min(num_images, len(pool)), replace=False)
    return [(found.files[pool[i]], class_names.index(found.class_names[found.labels[pool[i]]]))
            for i in sorted(chosen)]


def curves(subject: Subject, x: np.ndarray, y: np.ndarray, relevance: np.ndarray, *, steps: int,
           baseline: str, insertion: bool) -> np.ndarray:
    """True-class probability with the ``k_s`` most relevant patches blanked (deletion) or
    the only ones shown (insertion), k_s = round(s G / steps), s = 0..steps: (B, steps + 1)."""
    b, _, h, w = x.shape
    gh, gw = relevance.shape[1:]
    ph, pw = -(-h // gh), -(-w // gw)  # patch size in pixels
    order = np.argsort(-relevance.reshape(b, -1), axis=1, kind="stable")  # (B, G), most relevant first
    counts = np.round(np.linspace(0, gh * gw, steps + 1)).astype(int)
    fill = np.zeros_like(x) if baseline == "zero" else x.mean(axis=(2, 3), keepdims=True)  # (B, C, 1, 1)
    variants = []
    for k in counts:
        chosen = np.zeros((b, gh * gw), dtype=np.float32)
        np.put_along_axis(chosen, order[:, :k], 1.0, axis=1)
        keep = chosen if insertion else 1.0 - chosen
        mask = keep.reshape(b, 1, gh, 1, gw, 1)  # (B, 1, Gh, 1, Gw, 1) -> pixels
        mask = np.broadcast_to(mask, (b, 1, gh, ph, gw, pw)).reshape(b, 1, gh * ph, gw * pw)[..., :h, :w]
        variants.append(x * mask + fill * (1.0 - mask))
    batch = np.stack(variants, axis=1).reshape(-1, *x.shape[1:]).astype(np.float32)  # (B*(S+1), C, H, W)
    logits = subject.logits(batch).reshape(b, steps + 1, -1).astype(np.float64)
    probs = np.exp(logits - logits.max(axis=2, keepdims=True))
    probs /= probs.sum(axis=2, keepdims=True)
    return probs[np.arange(b), :, y]  # (B, steps + 1)


def area_under(c: np.ndarray) -> np.ndarray:
    """Trapezoidal area under each curve over the fraction removed (0..1): (B, S+1) -> (B,)."""
    dx = 1.0 / (c.shape[1] - 1)
    return dx * (c[:, 1:] + c[:, :-1]).sum(axis=1) / 2.0


def _summary(auc: np.ndarray) -> dict[str, float]:
    sem = float(auc.std(ddof=1) / np.sqrt(len(auc))) if len(auc) > 1 else 0.0
    return {"auc": float(auc.mean()), "auc_sem": sem}


def run(subject: Subject, data: Path, *, num_images: int, steps: int, baseline: str, head_fusion: str,
        discard_ratio: float, batch_images: int, seed: int, split: str, val_fraction: float,
        split_seed: int, num_masks: int = NUM_MASKS) -> dict:
    items = sample_images(data, subject.class_names, num_images, seed, split=split,
                          val_fraction=val_fraction, split_seed=split_seed)
    rng = np.random.default_rng(seed)
    methods = subject.methods()
    dele: dict[str, list[np.ndarray]] = {m: [] for m in methods}
    ins: dict[str, list[np.ndarray]] = {m: [] for m in methods}
    labels, correct = [], 0
    start = time.perf_counter()
    for i in range(0, len(items), batch_images):
        part = items[i:i + batch_images]
        x = np.stack([preprocess_image_file(p, subject.preprocess) for p, _ in part])
        y = np.array([label for _, label in part])
        labels.append(y)
        correct += int((subject.logits(x).argmax(1) == y).sum())
        maps = subject.maps(x, y, rng, head_fusion=head_fusion, discard_ratio=discard_ratio,
                            num_masks=num_masks)
        for m in methods:
            dele[m].append(curves(subject, x, y, maps[m], steps=steps, baseline=baseline, insertion=False))
            ins[m].append(curves(subject, x, y, maps[m], steps=steps, baseline=baseline, insertion=True))
    y_all = np.concatenate(labels)
    results = {"model": str(subject.path), "runtime": subject.runtime, "data": str(data), "split": split,
               "num_images": len(items), "steps": steps, "baseline": baseline,
               "rollout": {"head_fusion": head_fusion, "discard_ratio": discard_ratio},
               "num_masks": num_masks,
               "accuracy": correct / len(items), "seconds": round(time.perf_counter() - start, 1),
               "methods": {}, "per_class": {}}
    for m in methods:
        d, n = np.concatenate(dele[m]), np.concatenate(ins[m])
        a_del, a_ins = area_under(d), area_under(n)
        results["methods"][m] = {"deletion": _summary(a_del), "insertion": _summary(a_ins),
                                 "deletion_curve": d.mean(axis=0).round(4).tolist(),
                                 "insertion_curve": n.mean(axis=0).round(4).tolist()}
        results["per_class"][m] = {subject.class_names[k]: float(a_del[y_all == k].mean())
                                   for k in sorted(set(y_all.tolist()))}
    return results


def preprocess_image_file(path: Path, spec: Preprocess) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as image:
        return preprocess_image(image, spec)


def report(results: dict) -> str:
    ref = results["methods"]["random"]
    lines = [f"{results['model']} ({results['runtime']}): {results['num_images']} images "
             f"({results['split']} split of {results['data']}), baseline {results['baseline']}, "
             f"{results['steps']} steps; accuracy {results['accuracy']:.1%}; {results['seconds']} s",
             f"{'map':<21}{'deletion AUC (lower better)':>30}{'vs random':>11}"
             f"{'insertion AUC (higher better)':>32}{'vs random':>11}"]
    rows = sorted(results["methods"].items(), key=lambda kv: kv[1]["deletion"]["auc"])
    for m, r in rows:
        d, n = r["deletion"], r["insertion"]
        lines.append(f"{m:<21}{d['auc']:>21.4f} ± {d['auc_sem']:.4f}"
                     f"{d['auc'] / ref['deletion']['auc'] - 1:>+11.0%}"
                     f"{n['auc']:>23.4f} ± {n['auc_sem']:.4f}"
                     f"{n['auc'] / ref['insertion']['auc'] - 1:>+11.0%}")
    classes = list(next(iter(results["per_class"].values())))
    lines.append("")
    lines.append("deletion AUC per class: " + " ".join(f"{c[:8]:>8}" for c in classes))
    for m, _ in rows:
        per = results["per_class"][m]
        lines.append(f"{m:<24}" + " ".join(f"{per[c]:>8.3f}" for c in classes))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--model", type=Path, help="an exported .onnx file (run without torch)")
    which.add_argument("--checkpoint", type=Path, help="vit-train .ckpt or project .safetensors")
    p.add_argument("--data", type=Path, required=True, help="ImageFolder of labelled images")
    p.add_argument("--split", choices=("all", "val"), default="all",
                   help="all images, or vit-train's validation split of --data (default all)")
    p.add_argument("--val-fraction", type=float, default=0.1, help="as the recipe's data.val_fraction (0.1)")
    p.add_argument("--split-seed", type=int, default=0, help="as the recipe's data.seed (0)")
    p.add_argument("--num-images", type=int, default=300)
    p.add_argument("--steps", type=int, default=16, help="steps (patches blanked per step: G / steps)")
    p.add_argument("--baseline", choices=("zero", "image-mean"), default="zero",
                   help="what a blanked patch becomes: 0 after normalization, or the image's mean colour")
    p.add_argument("--head-fusion", choices=("mean", "max", "min"), default="mean")
    p.add_argument("--discard-ratio", type=float, default=0.0)
    p.add_argument("--num-masks", type=int, default=NUM_MASKS,
                   help=f"copies per image for rise (default {NUM_MASKS})")
    add_runtime_arguments(p.add_argument_group("for --model (as vit-predict's)"))
    p.add_argument("--batch-images", type=int, default=16, help="images per step of the test")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", type=Path, help="also write the results as JSON")
    args = p.parse_args(argv)
    if args.steps < 1 or args.num_images < 1 or args.batch_images < 1:
        p.error("--steps, --num-images and --batch-images must be positive")
    if args.num_masks < 2 or args.num_masks % 2:
        p.error(f"--num-masks: expected an even number >= 2, got {args.num_masks}")
    subject = Subject(args.model or args.checkpoint, args.backend, args.precision, args.provider)
    results = run(subject, args.data, num_images=args.num_images, steps=args.steps, baseline=args.baseline,
                  head_fusion=args.head_fusion, discard_ratio=args.discard_ratio,
                  batch_images=args.batch_images, seed=args.seed, split=args.split,
                  val_fraction=args.val_fraction, split_seed=args.split_seed, num_masks=args.num_masks)
    print(report(results))
    if args.output:
        tmp = args.output.with_name(args.output.name + ".tmp")
        tmp.write_text(json.dumps(results, indent=2) + "\n")
        tmp.replace(args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
