"""Evaluation preprocessing (vit/preprocess.py): equal to torchvision's v2 pipeline."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import photo

from vit.preprocess import Preprocess, preprocess_image


@pytest.mark.parametrize("size,spec", [((48, 40), Preprocess()), ((37, 61), Preprocess(resize_size=36)),
                                       ((64, 64), Preprocess(resize_size=40, interpolation="bicubic")),
                                       ((32, 32), Preprocess())])
def test_preprocessing_equals_torchvision_v2(size: tuple[int, int], spec: Preprocess) -> None:
    import torch
    from torchvision.transforms import InterpolationMode, v2

    mode = {"bilinear": InterpolationMode.BILINEAR, "bicubic": InterpolationMode.BICUBIC}[spec.interpolation]
    tv = v2.Compose([v2.Resize(spec.resize_size, interpolation=mode, antialias=True),
                     v2.CenterCrop(spec.crop_size), v2.PILToTensor(), v2.ToDtype(torch.float32, scale=True),
                     v2.Normalize(spec.mean, spec.std)])
    image = photo(size)
    ours = preprocess_image(image, spec)
    theirs = tv(image).numpy()
    assert ours.shape == theirs.shape == (3, spec.crop_size, spec.crop_size)
    np.testing.assert_allclose(ours, theirs, atol=1e-5)  # same PIL resize: rounding-level only


