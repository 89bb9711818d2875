"""What the trainers share to stop and go on exactly: atomic ``torch.save``, the RNG states as plain types, and
reading a resume file without unpickling code.

A resume file is read back with ``torch.load(weights_only=True)``: tensors, dicts, lists, str, int, float, bool and
None only. So the RNG states are stored as such (numpy's MT19937 key as an int64 tensor, python's state as nested
lists of ints), not as the numpy arrays and tuples the RNG APIs hand out.
"""

from __future__ import annotations

import pickle
import random
import re
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..core.errors import EngineError
from ..core.files import atomic_write

RESUME_FILE = "resume.pt"  # in a run's folder: what a trainer needs to go on exactly


def save_torch(obj, path: Path) -> None:
    """``torch.save`` to a temporary file, renamed into place: a killed writer never leaves half a file."""
    with atomic_write(path, ".pt") as tmp:
        torch.save(obj, tmp)


def rng_state() -> dict:
    """The python, numpy and torch (CPU, and CUDA once used) RNG states, as tensors and plain types."""
    version, internal, gauss_next = random.getstate()
    kind, keys, pos, has_gauss, cached_gaussian = np.random.get_state(legacy=True)
    state = {
        "python": [int(version), [int(x) for x in internal], gauss_next],
        "numpy": {
            "kind": str(kind),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached_gaussian),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what :func:`rng_state` returned, exactly."""
    version, internal, gauss_next = state["python"]
    random.setstate((int(version), tuple(int(x) for x in internal), None if gauss_next is None else float(gauss_next)))
    numpy = state["numpy"]
    np.random.set_state(
        (
            numpy["kind"],
            numpy["keys"].numpy().astype(np.uint32),
            int(numpy["pos"]),
            int(numpy["has_gauss"]),
            float(numpy["cached_gaussian"]),
        )
    )
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda")
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


def load_resume_file(path: Path, fields: dict[str, type]) -> dict | None:
    """A resume state (None if ``path`` does not exist) read with ``weights_only=True``, so it cannot run code, and
    checked to hold ``fields`` (name -> type)."""
    if not path.is_file():
        return None
    try:
        resume = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(exc))
        what = f"a pickled {found[1]}" if found else "pickled data that is not tensors and plain types"
        raise EngineError(
            f"{path} holds {what}: refusing to load it, because unpickling arbitrary objects can run code. "
            "A resume file holds only tensors and plain types (resume files of engine versions before this "
            "format cannot be read); delete or move it to start the run afresh from its checkpoints"
        ) from exc
    except Exception as exc:  # truncated, damaged, not a torch file
        raise EngineError(f"{path} cannot be read as a resume file ({type(exc).__name__}); delete or move it") from exc
    if not isinstance(resume, dict):
        raise EngineError(f"{path} holds a {type(resume).__name__}, not a resume state: delete or move it")
    wrong = [
        name
        for name, kind in fields.items()
        if not isinstance(resume.get(name), kind) or isinstance(resume.get(name), bool)
    ]
    if wrong:
        raise EngineError(
            f"{path} is not a resume state of this version (missing or malformed: {', '.join(wrong)}): delete or move it"
        )
    return resume


def load_training_state(resume: dict, agent: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Load a resume state's agent, optimizer and RNG states exactly; a state that does not fit is an EngineError."""
    try:
        agent.load_state_dict(resume["agent"])
        optimizer.load_state_dict(resume["optimizer"])
        set_rng_state(resume["rng"])
    except (RuntimeError, ValueError, KeyError, TypeError, IndexError) as exc:
        raise EngineError(
            f"the resume state does not fit this run's configuration ({type(exc).__name__}: {exc})"
        ) from exc


def resume_of(
    run_dir: Path, load: Callable[[Path], dict | None], config: Any, may_change: frozenset[str]
) -> dict | None:
    """The resume state in ``run_dir`` (``load``: the trainer's reader of its ``resume.pt``; None: a new run),
    refused where it was trained with other settings than the dataclass ``config`` beyond ``may_change``
    (:func:`check_resume_settings`)."""
    resume = load(run_dir / RESUME_FILE)
    if resume is not None:
        check_resume_settings(run_dir, resume["config"], asdict(config), may_change)
    return resume


def check_resume_settings(run_dir: Path, held: dict, wanted: dict, may_change: frozenset[str]) -> None:
    """Refuse to resume the run in ``run_dir``, trained with the settings ``held`` (its resume file's), with other
    settings than ``may_change``: they would be ignored (the optimizer's own are restored with its state) or mix two
    runs in one (another seed in a sweep whose jobs share a run_dir). Keys the resume file lacks (an older version)
    are not compared."""
    changed = [
        f"{key} {held[key]!r} -> {value!r}"
        for key, value in wanted.items()
        if key in held and key not in may_change and held[key] != value
    ]
    if changed:
        raise EngineError(
            f"{run_dir} holds a run trained with other settings ({'; '.join(changed)}): resume it with its own (only "
            f"{', '.join(sorted(may_change))} may change), or use another run_dir (a sweep over seeds: a run_dir per "
            "seed, e.g. run_dir=runs/<name>_seed${seed})"
        )
