"""Saving saliency arrays with the settings that produced them, atomically (an interrupted write never
leaves a truncated file under the final name), so maps can be re-rendered without recomputing them. The
atomic-write helper (:func:`atomic_write`, from :mod:`engine.core.files`) is also importable from here.

The ``.npz`` files are zip-deflate compressed (``np.savez_compressed``): Atari frames and observations shrink
about 40 times (a 200-step rollout: 20.6 MB -> 0.5 MB); ``np.load`` reads them as before."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..core.files import atomic_path, atomic_write

__all__ = ["atomic_path", "atomic_write", "save_arrays", "load_arrays"]


def save_arrays(path: str | os.PathLike[str], arrays: Mapping[str, Any], settings: Mapping[str, Any]) -> Path:
    """Write ``arrays`` (tensors or numpy) and ``settings`` (JSON-able) to one compressed ``.npz``, atomically."""
    path = Path(path)
    data = {k: (v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else np.asarray(v)) for k, v in arrays.items()}
    data["settings_json"] = np.array(json.dumps(settings, sort_keys=True, default=str))
    with atomic_write(path, ".npz") as tmp, open(tmp, "wb") as f:
        np.savez_compressed(f, **data)  # type: ignore[arg-type]  # numpy's stub types **kwds as allow_pickle
    return path


def load_arrays(path: str | os.PathLike[str]) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Read back what :func:`save_arrays` wrote: ``(arrays, settings)``."""
    with np.load(path, allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files if k != "settings_json"}
        settings = json.loads(str(data["settings_json"])) if "settings_json" in data.files else {}
    return arrays, settings
