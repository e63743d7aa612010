"""What a model costs to serve, next to another: parameters, GFLOPs per image, and the
batch-1 latency and batch-64 throughput of each exported file as ``vit-predict`` runs it
(``OnnxClassifier`` with ``backend="auto"``, labels only), in one run, timed round-robin.

    python benchmarks/model_cost.py OLD.onnx NEW.onnx [--threads 1] [--rounds 10]

The first file is the reference of the ratios (e.g. the model being replaced: the model
card of a new default states its cost next to the old one's, #16). Parameters and FLOPs
come from the architecture recorded in each file's metadata (``torch.utils.flop_counter``
on a model of that config, forward, a multiply-add counted as 2); times from the files
themselves on the same preprocessed images. Set OMP_NUM_THREADS to ``--threads`` and
pause other work first.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from inference import DEFAULT_IMAGES, flops_per_image, load_images, measure  # noqa: E402

from export.onnx_classifier import OnnxClassifier  # noqa: E402
from vit.vit import ViT, ViTConfig  # noqa: E402


def architecture(clf: OnnxClassifier) -> tuple[int, float]:
    """(parameters, FLOPs per image) of the file's recorded architecture."""
    model = ViT(ViTConfig(**clf.info.config)).eval()
    return sum(p.numel() for p in model.parameters()), flops_per_image(model)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("models", type=Path, nargs="+", help="exported .onnx files; the first is the reference")
    p.add_argument("--images", type=Path, default=DEFAULT_IMAGES,
                   help="image folder (random inputs if absent)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=10, help="round-robin rounds")
    args = p.parse_args(argv)
    for path in args.models:
        if not path.is_file():
            print(f"model_cost: {path}: no such file", file=sys.stderr)
            return 2
    classifiers = {path: OnnxClassifier(path, intra_op_threads=args.threads) for path in args.models}
    first = classifiers[args.models[0]].info
    if any(c.info.input_size != first.input_size for c in classifiers.values()):
        print("model_cost: the models take different input sizes; compare like with like", file=sys.stderr)
        return 2
    _, x, _, source = load_images(args.images, 64, first.preprocess, list(first.class_names),
                                  tuple(first.input_size))
    engines = {str(path): (lambda batch, c=c: c.predict_batch(batch, ["logits"])["logits"])
               for path, c in classifiers.items()}
    times = measure(engines, np.ascontiguousarray(x[:1]), x, args.rounds)
    omp = os.environ.get("OMP_NUM_THREADS", "-")
    print(f"serving cost, {args.threads} thread(s) (OMP_NUM_THREADS={omp}), {source}, "
          f"{args.rounds} rounds; ratios against {args.models[0]}")
    print("| model | served by | parameters | GFLOPs/image | b1 p50 ms | b1 p95 ms | b64 img/s "
          "| b1 latency vs ref | b64 throughput vs ref |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    ref = times[str(args.models[0])]
    for path, clf in classifiers.items():
        params, flops = architecture(clf)
        t = times[str(path)]
        print(f"| {path} | {clf.runtime} | {params:,} | {flops / 1e9:.3f} | {t['latency_ms_p50']:.2f} "
              f"| {t['latency_ms_p95']:.2f} | {t['throughput_img_s']:.0f} "
              f"| {t['latency_ms_p50'] / ref['latency_ms_p50']:.2f}x "
              f"| {t['throughput_img_s'] / ref['throughput_img_s']:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
