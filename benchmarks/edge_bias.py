"""Where does a ViT's attention go, averaged over many images? A test for maps that show the
model's wiring rather than the image (#19: rollout's bottom-edge hot spot).

For each checkpoint: the attention each patch receives in the first and the last layer
(mean over images, heads and queries), the mean rollout and contribution rollout ("contrib.")
maps and what each patch actually does to the answer (occlusion: the mean |drop| of the
predicted class's logit when the patch alone is blanked), each scaled so that a uniform map
is 1, summarized by its top/bottom rows, left/right columns and centre; then the same after
interventions that separate the suspects:

    images flipped     upside down / left-right: a bias that stays put is not in the images
    pos 180            position embeddings rotated by 180 degrees: a bias that follows them
                       lives in the learned positions
    pos zero           no position embeddings at all

A bias that survives all of them and is already there in layer 0 comes from the tokenizer
(see ``vit.vit.ConvStem``: ``stem_pool=3`` shifts the token grid up-left). Attention a row
receives that its occlusion effect does not match is attention the answer does not use.

    python benchmarks/edge_bias.py CKPT [CKPT ...] --data ../shared/data/cifar10/train --split val
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

if __package__ in (None, ""):  # run as a script from anywhere: make the project importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from faithfulness import preprocess_image_file, sample_images  # noqa: E402

from vit.checkpoint import load_vit  # noqa: E402
from vit.preprocess import Preprocess  # noqa: E402
from vit.relevance import forward_with_contributions, occlusion_relevance, token_logits  # noqa: E402
from vit.rollout import attention_rollout, contribution_rollout  # noqa: E402
from vit.vit import ViT  # noqa: E402


def profile(grid_map: np.ndarray) -> dict[str, float]:
    """A (Gh, Gw) map scaled to mean 1 -> its edges and centre."""
    m = grid_map / grid_map.mean()
    gh, gw = m.shape
    return {"top": m[0].mean(), "bottom": m[-1].mean(), "left": m[:, 0].mean(), "right": m[:, -1].mean(),
            "centre": m[gh // 4:gh - gh // 4, gw // 4:gw - gw // 4].mean()}


def attention_profiles(model: ViT, x: torch.Tensor, occlusion: bool = True) -> dict[str, dict[str, float]]:
    """Received attention in layer 0 and the last layer, the mean rollout and contribution
    rollout maps and (with ``occlusion``) the mean |occlusion| map of the predicted class."""
    p, grid, pool = model.num_prefix_tokens, model.grid_size, model.config.global_pool
    with torch.inference_mode():
        tokens, weights, contributions = forward_with_contributions(model, x)
        logits = model.forward_head(tokens)
        shares = token_logits(model, tokens).numpy() if pool == "avg" else None
    w = torch.stack(weights, dim=1).numpy()  # (B, L, H, N, N)
    received = lambda layer: w[:, layer, :, p:, p:].mean(axis=(0, 1, 2)).reshape(grid)  # (Gh, Gw)
    rollout = attention_rollout(w, num_prefix_tokens=p, grid=grid, pool=pool).mean(0)
    contribution = contribution_rollout(contributions.numpy(), shares, num_prefix_tokens=p, grid=grid,
                                        pool=pool).mean(0)
    maps = {"layer 0": profile(received(0)), "last layer": profile(received(-1)), "rollout": profile(rollout),
            "contrib.": profile(contribution)}
    if occlusion:
        one_patch = occlusion_relevance(model, x, logits.argmax(1).tolist(), sizes=(1,))  # (B, Gh, Gw)
        effect = np.abs(one_patch).mean(0)  # (Gh, Gw)
        maps["occlusion"] = profile(effect)
    return maps


def interventions(model: ViT, x: torch.Tensor) -> dict[str, dict[str, dict[str, float]]]:
    rows = {"images as they are": attention_profiles(model, x),
            "images upside down": attention_profiles(model, x.flip(2)),
            "images left-right": attention_profiles(model, x.flip(3), occlusion=False)}
    pos = model.pos_embed.data.clone()
    n = 0 if model.config.no_embed_class else model.num_prefix_tokens
    grid = pos[:, n:].reshape(1, *model.grid_size, -1)  # (1, Gh, Gw, D)
    try:
        model.pos_embed.data = torch.cat([pos[:, :n], grid.flip(1, 2).reshape(1, -1, pos.shape[-1])], dim=1)
        rows["pos 180"] = attention_profiles(model, x, occlusion=False)
        model.pos_embed.data = torch.cat([pos[:, :n], torch.zeros_like(pos[:, n:])], dim=1)
        rows["pos zero"] = attention_profiles(model, x, occlusion=False)
    finally:
        model.pos_embed.data = pos
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("checkpoints", type=Path, nargs="+", help="vit-train .ckpt or project .safetensors")
    p.add_argument("--data", type=Path, required=True, help="ImageFolder named as the model's classes")
    p.add_argument("--split", choices=("all", "val"), default="val")
    p.add_argument("--num-images", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    with torch.no_grad():  # not set_grad_enabled: main() is also called in-process (tests)
        for path in args.checkpoints:
            model, record = load_vit(path)
            spec = Preprocess(**record["preprocess"]) if record.get("preprocess") else Preprocess()
            names = record.get("class_names") or []
            items = sample_images(args.data, names, args.num_images, args.seed, split=args.split,
                                  val_fraction=0.1, split_seed=0)
            x = torch.from_numpy(np.stack([preprocess_image_file(f, spec) for f, _ in items]))
            cfg = model.config
            stem = f"conv (pool {cfg.stem_pool})" if cfg.stem == "conv" else cfg.stem
            print(f"\n{path}: stem {stem}, {cfg.reg_tokens} registers, {len(items)} images; "
                  "attention received per patch (occlusion: effect of blanking it), 1 = uniform")
            print(f"{'':<20}{'map':<12}{'top':>7}{'bottom':>8}{'left':>7}{'right':>7}{'centre':>8}")
            for name, maps in interventions(model, x).items():
                for kind, prof in maps.items():
                    print(f"{name:<20}{kind:<12}" + "".join(f"{prof[k]:>{w}.2f}" for k, w in
                          (("top", 7), ("bottom", 8), ("left", 7), ("right", 7), ("centre", 8))))
                    name = ""
    return 0


if __name__ == "__main__":
    sys.exit(main())
