"""Evaluate an exported ONNX classifier on the validation split of an ImageFolder and
write what a model card needs: overall and per-class accuracy, the confusion matrix as
JSON and as a PNG image.

    python -m export.evaluate --model models/cifar10_vit.onnx \
        --data ../shared/data/cifar10/train --val-fraction 0.1 --seed 0 --out models/

The split is the data module's own (:func:`vit.image_folder.split_indices`), so the numbers
are on images the model never trained on when the same ``val_fraction`` and ``seed`` are
given. Torch-free.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from vit.errors import DataError
from vit.image_folder import scan_folder, split_indices
from vit.preprocess import preprocess_image

from .onnx_classifier import OnnxClassifier

log = logging.getLogger(__name__)


def evaluate(model: OnnxClassifier, root: str | Path, val_fraction: float, seed: int,
             batch_size: int = 256) -> dict[str, Any]:
    """Accuracy, per-class accuracy and the confusion matrix (rows: true, columns: predicted)."""
    from PIL import Image

    index = scan_folder(root)
    if index.class_names != model.info.class_names:
        raise DataError(
            f"{root}: classes {index.class_names} differ from the model's {model.info.class_names}"
        )
    _, val = split_indices(index.labels, val_fraction, seed)
    k = len(index.class_names)
    confusion = np.zeros((k, k), dtype=np.int64)
    for start in range(0, len(val), batch_size):
        chunk = val[start:start + batch_size]
        batch = []
        for i in chunk:
            with Image.open(index.files[i]) as image:
                batch.append(preprocess_image(image, model.info.preprocess))
        logits = model.predict_batch(np.stack(batch), ["logits"])["logits"]  # (B, K)
        for i, pred in zip(chunk, logits.argmax(axis=1), strict=False):
            confusion[index.labels[i], pred] += 1
    per_class = confusion.diagonal() / confusion.sum(axis=1)
    return {
        "images": int(confusion.sum()),
        "accuracy": float(confusion.diagonal().sum() / confusion.sum()),
        "per_class": dict(zip(index.class_names, map(float, per_class), strict=False)),
        "confusion": confusion.tolist(),
        "class_names": index.class_names,
        "val_fraction": val_fraction,
        "seed": seed,
    }


def plot_confusion(result: dict[str, Any], path: Path) -> None:
    """Draw the row-normalised confusion matrix with counts to ``path`` (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts = np.asarray(result["confusion"])
    rates = counts / counts.sum(axis=1, keepdims=True)
    names = result["class_names"]
    fig, ax = plt.subplots(figsize=(7, 6), dpi=110)
    ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"validation confusion matrix ({result['images']} images, "
                 f"accuracy {result['accuracy']:.2%})")
    for (i, j), n in np.ndenumerate(counts):
        ax.text(j, i, str(n), ha="center", va="center", fontsize=7,
                color="white" if rates[i, j] > 0.5 else "black")
    fig.tight_layout()
    tmp = path.with_name(path.name + ".tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="an ONNX file written by vit-export")
    parser.add_argument("--data", required=True, help="the ImageFolder the model was trained on")
    parser.add_argument("--val-fraction", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("."),
                        help="folder for evaluation.json and confusion.png")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        result = evaluate(OnnxClassifier(args.model), args.data, args.val_fraction, args.seed)
    except (DataError, FileNotFoundError, ValueError) as exc:
        parser.exit(2, f"error: {exc}\n")
    args.out.mkdir(parents=True, exist_ok=True)
    tmp = args.out / "evaluation.json.tmp"
    tmp.write_text(json.dumps(result, indent=1) + "\n")
    os.replace(tmp, args.out / "evaluation.json")
    plot_confusion(result, args.out / "confusion.png")
    print(f"validation accuracy {result['accuracy']:.4f} on {result['images']} images")
    for name, acc in result["per_class"].items():
        print(f"  {name:12s} {acc:.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
