"""A small convolutional network: the reference a ViT recipe has to beat and the teacher it
can distil from (#16). A plain stack without residual connections, in the manner of the fast
CIFAR-10 trainers: a 3x3 conv, then three stages of conv -> 2x2 max-pool -> BatchNorm -> GELU
-> conv -> BatchNorm -> GELU, a global max-pool and a linear head (widths 64, 256, 256: 2.0M
parameters, ~0.3 GFLOPs per 32x32 image). Trained by ``benchmarks/cnn_baseline.py``; the
model knows no file format (:mod:`training.teacher` reads its files).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch.nn.functional as F  # noqa: N812
from torch import Tensor, nn


@dataclass(frozen=True)
class CNNConfig:
    num_classes: int = 10
    widths: tuple[int, int, int] = (64, 256, 256)
    stem_width: int = 32

    def __post_init__(self) -> None:
        object.__setattr__(self, "widths", tuple(int(w) for w in self.widths))
        if self.num_classes < 1 or len(self.widths) != 3 or min(*self.widths, self.stem_width) < 1:
            raise ValueError(f"CNNConfig: num_classes >= 1 and three widths >= 1 needed, got {self}")

    def to_dict(self) -> dict:
        return {**asdict(self), "widths": list(self.widths)}


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


class SmallCNN(nn.Sequential):
    """(B, 3, H, W) normalized images -> (B, num_classes) logits."""

    def __init__(self, config: CNNConfig) -> None:
        w = config.widths
        super().__init__(
            nn.Conv2d(3, config.stem_width, 3, padding=1, bias=False), nn.BatchNorm2d(config.stem_width),
            nn.GELU(), Stage(config.stem_width, w[0]), Stage(w[0], w[1]), Stage(w[1], w[2]),
            nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Linear(w[2], config.num_classes, bias=False),
        )
        self.config = config
