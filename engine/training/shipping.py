"""Copy training checkpoints into the package as built-in agents, in half precision.

``python -m engine.training.shipping <run>/checkpoints/step_<frames>.pt ... --to engine/agents/<name>`` writes
``step_<frames>.pt`` (the state dict with every floating tensor rounded to float16: half the bytes, and the
agent is then exactly the shipped file, loaded into float32 by every loader) and a ``.json`` beside it (the
training metadata, the source's sha256 and the precision). ``builtin/<name>`` then names the most trained file
and ``builtin/<name>@<frames>`` each one (engine.policies.registry). The checkpoint is read as every loader reads a
file (:func:`engine.policies.checkpoint.read_state_dict`); a weight that is NaN or inf, or beyond float16's range,
and metadata that is not a JSON object naming the game (and, if it says, the same frames) are refused before
anything is written.
"""

from __future__ import annotations

import argparse
import json
import os
import re
from pathlib import Path

import torch

from ..core.errors import CheckpointError, EngineError
from ..core.files import atomic_write, sha256_of
from ..policies.checkpoint import check_layouts, parse_json, read_state_dict

_STEP = re.compile(r"step_(?P<frames>[0-9]+)\.pt")
MAX_METADATA_BYTES = 1 << 20  # the training writes a few hundred bytes


def half_precision(state_dict: dict[str, torch.Tensor], source: str = "state dict") -> dict[str, torch.Tensor]:
    """Every floating tensor of ``state_dict`` as float16; refuses weights that are NaN or inf, or beyond float16's
    range (they would become infinite), rather than shipping a broken agent."""
    for key, value in state_dict.items():
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(f"{source}: {key} is a {type(value).__name__}, not a tensor: ship a plain state dict")
    check_layouts(state_dict, source)  # before any arithmetic walks an expanded tensor's values
    floating = {key: value for key, value in state_dict.items() if value.is_floating_point()}
    bad = [
        f"{key} ({value.numel() - int(torch.isfinite(value).sum())} of {value.numel()})"
        for key, value in floating.items()
        if not bool(torch.isfinite(value).all())
    ]
    if bad:
        raise CheckpointError(
            f"{source}: NaN or inf weights in {', '.join(bad)}: the training diverged; ship an earlier checkpoint"
        )
    out = dict(state_dict)
    for key, value in floating.items():
        largest = float(value.abs().max()) if value.numel() else 0.0
        if largest > torch.finfo(torch.float16).max:
            raise CheckpointError(
                f"{source}: {key} holds {largest:g}, beyond float16's range: it cannot ship in half precision"
            )
        out[key] = value.to(torch.float16)
    return out


def read_metadata(path: Path, frames: int) -> dict:
    """The training's metadata beside a checkpoint: a JSON object naming the ``game`` (the environment id) whose
    ``frames``, if given, are the checkpoint's."""
    example = '{"game": "PongNoFrameskip-v4", "frames": ' + str(frames) + "}"
    if not path.is_file():
        raise CheckpointError(
            f"{path}: no metadata: the training writes it beside each checkpoint; ship the checkpoint with its .json "
            f"(at least {example})"
        )
    if path.stat().st_size > MAX_METADATA_BYTES:
        raise CheckpointError(f"{path}: {path.stat().st_size} bytes, not the training's metadata (a few hundred bytes)")
    meta = parse_json(path.read_bytes(), str(path), MAX_METADATA_BYTES)
    if not isinstance(meta, dict):
        kind = {list: "list", str: "string", int: "number", float: "number", bool: "boolean"}.get(type(meta), "null")
        raise CheckpointError(f"{path}: the metadata is a JSON {kind}, not an object like {example}")
    if not isinstance(meta.get("game"), str) or not meta["game"]:
        raise CheckpointError(
            f"{path}: the metadata has no 'game' (the environment id it was trained on, as in {example})"
        )
    if "frames" in meta and (type(meta["frames"]) is not int or meta["frames"] != frames):
        raise CheckpointError(
            f"{path}: the metadata says frames {meta['frames']!r} but the checkpoint is of {frames} frames: it belongs "
            "to another checkpoint"
        )
    return meta


def ship_checkpoint(source: str | os.PathLike, folder: str | os.PathLike, frames: int | None = None) -> Path:
    """Write ``source`` (a training checkpoint ``step_<frames>.pt``) into ``folder`` as ``step_<frames>.pt`` in half
    precision, with its metadata (``step_<frames>.json`` beside it); returns the written path. Everything is checked
    before anything is written."""
    return _write(*_prepare(source, folder, frames))


def _prepare(
    source: str | os.PathLike, folder: str | os.PathLike, frames: int | None = None
) -> tuple[Path, dict[str, torch.Tensor], dict]:
    """Everything :func:`ship_checkpoint` checks: the target path, the half-precision state dict and the metadata."""
    source, folder = Path(source), Path(folder)
    if folder.exists() and not folder.is_dir():
        raise CheckpointError(f"--to {folder} is a file: name the package folder, e.g. engine/agents/<name>")
    if frames is None:
        match = _STEP.fullmatch(source.name)
        if match is None:
            raise CheckpointError(f"{source}: name it step_<frames>.pt or give frames=")
        frames = int(match["frames"])
    half = half_precision(read_state_dict(source), str(source))
    meta = read_metadata(source.with_suffix(".json"), frames)
    meta.update(frames=frames, precision="float16", source_sha256=sha256_of(source))
    return folder / f"step_{frames}.pt", half, meta


def _write(target: Path, half: dict[str, torch.Tensor], meta: dict) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(target.with_suffix(".json"), ".json") as tmp:  # first: a checkpoint is never without it
        tmp.write_text(json.dumps(meta, indent=2) + "\n")
    with atomic_write(target, ".pt") as tmp:
        torch.save(half, tmp)
    return target


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m engine.training.shipping", description=__doc__.splitlines()[0])
    parser.add_argument("checkpoints", nargs="+", help="training checkpoints step_<frames>.pt")
    parser.add_argument("--to", required=True, help="the package folder, e.g. engine/agents/pong_ppo")
    args = parser.parse_args(argv)
    try:  # every checkpoint is checked before the first is written: a bad one ships none
        prepared = [_prepare(path, args.to) for path in args.checkpoints]
    except EngineError as exc:  # one line saying what is wrong, not a traceback
        parser.exit(2, f"{parser.prog}: error: {' '.join(str(exc).split())}\n")
    for path, shipping in zip(args.checkpoints, prepared):
        written = _write(*shipping)
        print(f"{path} -> {written} ({written.stat().st_size / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
