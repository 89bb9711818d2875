"""Saving saliency arrays with the settings that produced them, atomically (an interrupted write never
leaves a truncated file under the final name), so maps can be re-rendered without recomputing them.

The ``.npz`` files are zip-deflate compressed (``np.savez_compressed``): Atari frames and observations shrink
about 40 times (a 200-step rollout: 20.6 MB -> 0.5 MB); ``np.load`` reads them as before."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np
import torch


def atomic_path(target: str | os.PathLike, suffix: str = "") -> Path:
    """A fresh temporary path in ``target``'s directory (same file system, so ``os.replace`` is atomic),
    with the permissions a plain ``open`` would give (mkstemp's are owner-only)."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=suffix + ".partial")
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    return Path(tmp)


def save_arrays(path: str | os.PathLike, arrays: dict, settings: dict) -> Path:
    """Write ``arrays`` (tensors or numpy) and ``settings`` (JSON-able) to one compressed ``.npz``, atomically."""
    path = Path(path)
    data = {k: (v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else np.asarray(v)) for k, v in arrays.items()}
    data["settings_json"] = np.array(json.dumps(settings, sort_keys=True, default=str))
    tmp = atomic_path(path, ".npz")
    try:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, **data)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def load_arrays(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict]:
    """Read back what :func:`save_arrays` wrote: ``(arrays, settings)``."""
    with np.load(path, allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files if k != "settings_json"}
        settings = json.loads(str(data["settings_json"])) if "settings_json" in data.files else {}
    return arrays, settings
