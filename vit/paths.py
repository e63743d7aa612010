"""Where the shipped models live (torch-free).

In a checkout (or an editable install) that is ``models/`` of the repository; after a
non-editable install (``pip install .``) the same files are installed as the data package
``vit_models`` (see ``pyproject.toml``) and found there.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
PACKAGED_MODELS = "vit_models"


def models_dir() -> Path:
    """``models/`` of the repository when this code runs from a checkout, else the
    installed ``vit_models`` package (else the repository path, for error messages)."""
    repo_models = REPO_ROOT / "models"
    if (REPO_ROOT / "pyproject.toml").is_file() and repo_models.is_dir():
        return repo_models
    spec = importlib.util.find_spec(PACKAGED_MODELS)
    if spec is not None and spec.submodule_search_locations:
        return Path(next(iter(spec.submodule_search_locations)))
    return repo_models


MODELS_DIR = models_dir()
DEFAULT_CLASSIFIER = MODELS_DIR / "cifar10_vit.onnx"
DEFAULT_TRANSLATOR = MODELS_DIR / "multi30k_translator"
