"""What training does across DDP ranks: a random stream of its own for every rank and epoch,
and gathering per-rank results (plain Python objects) so that every logged figure is global.
Both work unchanged in a single process."""

from __future__ import annotations

import os
import random
from typing import Any

import numpy as np
import torch
import torch.distributed as dist


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order, on every rank (``[obj]`` in a single process)."""
    if world_size() == 1:
        return [obj]
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def seed_epoch(rank: int, epoch: int, seed: int | None = None) -> None:
    """Seed torch, numpy and ``random`` from (``seed``, rank, epoch): augmentation, dropout and
    drop-path masks then differ between ranks and epochs, and a run resumed at an epoch
    boundary draws what the uninterrupted run drew. ``seed`` defaults to the one
    ``seed_everything`` set (``PL_GLOBAL_SEED``); without one nothing is seeded. Model
    initialisation, which happens before, stays identical on every rank."""
    if seed is None:
        if "PL_GLOBAL_SEED" not in os.environ:
            return
        seed = int(os.environ["PL_GLOBAL_SEED"])
    state = np.random.SeedSequence([seed, rank, epoch]).generate_state(2)
    torch.manual_seed(int(state[0]))
    np.random.seed(int(state[1]))
    random.seed(int(state[0]))
