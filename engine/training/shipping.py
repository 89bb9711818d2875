"""Copy training checkpoints into the package as built-in agents, in half precision.

``python -m engine.training.shipping <run>/checkpoints/step_<frames>.pt ... --to engine/agents/<name>`` writes
``step_<frames>.pt`` (the state dict with every floating tensor rounded to float16: half the bytes, and the
agent is then exactly the shipped file, loaded into float32 by every loader) and a ``.json`` beside it (the
training metadata, the source's sha256 and the precision). ``builtin/<name>`` then names the most trained file
and ``builtin/<name>@<frames>`` each one (engine.policies.registry).
"""

from __future__ import annotations

import argparse
import json
import os
import re
from pathlib import Path

import torch

from ..core.errors import CheckpointError
from ..core.files import atomic_write
from ..policies.registry import sha256_of

_STEP = re.compile(r"step_(?P<frames>[0-9]+)\.pt")


def half_precision(state_dict: dict[str, torch.Tensor], source: str = "state dict") -> dict[str, torch.Tensor]:
    """Every floating tensor of ``state_dict`` as float16; refuses values beyond float16's range (they would
    become infinite) rather than shipping a broken agent."""
    out = {}
    for key, value in state_dict.items():
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(f"{source}: {key} is a {type(value).__name__}, not a tensor: ship a plain state dict")
        if value.is_floating_point():
            largest = float(value.abs().max()) if value.numel() else 0.0
            if largest > torch.finfo(torch.float16).max:
                raise CheckpointError(f"{source}: {key} holds {largest:g}, beyond float16's range: it cannot ship in half precision")
            value = value.to(torch.float16)
        out[key] = value
    return out


def ship_checkpoint(source: str | os.PathLike, folder: str | os.PathLike, frames: int | None = None) -> Path:
    """Write ``source`` (a training checkpoint ``step_<frames>.pt``) into ``folder`` as ``step_<frames>.pt`` in half
    precision, with its metadata; returns the written path."""
    source, folder = Path(source), Path(folder)
    if frames is None:
        match = _STEP.fullmatch(source.name)
        if match is None:
            raise CheckpointError(f"{source}: name it step_<frames>.pt or give frames=")
        frames = int(match["frames"])
    try:
        state = torch.load(source, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"{source} cannot be read as a state dict ({type(exc).__name__}: {exc})") from exc
    if not isinstance(state, dict):
        raise CheckpointError(f"{source} holds a {type(state).__name__}, not a state dict")
    half = half_precision(state, str(source))
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"step_{frames}.pt"
    with atomic_write(target, ".pt") as tmp:
        torch.save(half, tmp)
    meta_source = source.with_suffix(".json")
    meta = json.loads(meta_source.read_text()) if meta_source.is_file() else {}
    meta.update(frames=frames, precision="float16", source_sha256=sha256_of(source))
    with atomic_write(target.with_suffix(".json"), ".json") as tmp:
        tmp.write_text(json.dumps(meta, indent=2) + "\n")
    return target


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m engine.training.shipping", description=__doc__.splitlines()[0])
    parser.add_argument("checkpoints", nargs="+", help="training checkpoints step_<frames>.pt")
    parser.add_argument("--to", required=True, help="the package folder, e.g. engine/agents/pong_ppo")
    args = parser.parse_args(argv)
    for path in args.checkpoints:
        written = ship_checkpoint(path, args.to)
        print(f"{path} -> {written} ({written.stat().st_size / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
