"""What a store holds, before any store is opened: its arrays (:func:`rollout_layout`, :func:`saliency_layout`:
shapes, dtypes, dimension names, per step or per chunk) and their codecs, the limits on its chunks (count, bytes,
memory) with the messages that name the fix, the structure a manifest must have (:func:`manifest_problem`) and its
hash, and the names of a group of games' stores (:func:`game_name`, :func:`game_root`)."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np
import numpy.typing as npt
import torch
from zarr.codecs import BloscCodec, Crc32cCodec, ZstdCodec

from ..core.errors import EngineError
from ..core.masks import grid_shape
from ..core.policy import Policy
from ..core.saliency import SaliencyConfig
from ..core.settings import map_names, map_prefix, occlusion_grid, sarfa_geometry, selected_methods
from .keys import StoreRoot, is_memory, is_url, sha256_digest

# 4: markers hold the manifest's hash and each chunk's content hash (3: boolean markers; 2: .npz chunks, manifest.json)
FORMAT = 4
ROLLOUT_FIELDS = ("frames", "observations", "logits", "values", "actions", "rewards", "dones")
MARKER = "complete"
MANIFEST = "manifest"
CHUNK_AXIS = "chunk"
DIGEST = 32  # bytes of a sha256
# A logical chunk (all its arrays) is held in memory whole by whoever writes or reads it, and zarr allocates a full
# chunk even for a store shorter than one: this bounds both.
MAX_CHUNK_BYTES = 1 << 30
# Every job reads all markers of a store (which chunks are complete) and walks its list of chunks.
MAX_CHUNKS = 100_000
# what the chunk size of each kind of store is called where it is set
CHUNK_SETTING = {"rollout": "chunk_steps", "saliency": "frames_per_chunk"}
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")


def manifest_hash(manifest: Mapping[str, Any]) -> bytes:
    """The sha256 of a manifest's canonical JSON (sorted keys, no spaces): what every marker of its store holds."""
    return sha256_digest(json.dumps(manifest, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode())


def size_text(n: float) -> str:
    """Bytes as people read them: ``1 GiB``, ``93.9 TiB``."""
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if n < 1024:
            return f"{n:.3g} {unit}"
        n /= 1024
    return f"{n:.3g} EiB"


def available_memory() -> int | None:
    """Bytes of memory this process may still take (Linux: MemAvailable, within its cgroup's limit), or None where
    that is not known."""
    try:
        with open("/proc/meminfo") as f:
            fields = dict(line.split(":", 1) for line in f if ":" in line)
        available = int(fields["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        try:
            available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError, AttributeError):
            return None
    try:  # a container's limit (cgroup v2)
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        used = int(Path("/sys/fs/cgroup/memory.current").read_text())
        if limit != "max":
            available = min(available, max(int(limit) - used, 0))
    except (OSError, ValueError):
        pass
    return available


def _entry(tail: Iterable[int], dtype: npt.DTypeLike, dims: Iterable[str], per: str = "time") -> dict[str, Any]:
    return {"tail": [int(n) for n in tail], "dtype": np.dtype(dtype).str, "dims": list(dims), "per": per}


def marker_entry(layout: Mapping[str, Any]) -> dict[str, Any]:
    return _entry([DIGEST * (1 + len(layout))], np.uint8, ("marker_byte",), per="chunk")


def _torch_dtype_str(dtype: torch.dtype) -> str:
    return np.dtype(torch.empty((), dtype=dtype).numpy().dtype).str


def rollout_layout(
    agent: Policy, frame_shape: Sequence[int], observation_shape: Sequence[int]
) -> dict[str, dict[str, Any]]:
    """The arrays of a rollout store: name -> {tail shape, dtype, dimension names, per time step or chunk}."""
    dtype = _torch_dtype_str(agent.dtype)
    layout = {
        "frames": _entry(frame_shape, np.uint8, ("frame_y", "frame_x", "frame_rgb")),
        "observations": _entry(observation_shape, np.uint8, ("obs_channel", "obs_y", "obs_x")),
        "logits": _entry([agent.num_actions], dtype, ("action",)),
        "values": _entry([], dtype, ()),
        "actions": _entry([], np.int64, ()),
        "rewards": _entry([], np.float32, ()),
        "dones": _entry([], np.bool_, ()),
    }
    for i, s in enumerate(agent.initial_state(1)):
        tail = list(s.shape[1:])
        layout[f"state_{i}"] = _entry(
            tail, _torch_dtype_str(s.dtype), [f"state_{i}_axis_{j + 1}" for j in range(len(tail))]
        )
    layout["sampler_state"] = _entry([torch.Generator().get_state().numel()], np.uint8, ("sampler_byte",), per="chunk")
    return layout


def saliency_layout(agent: Policy, saliency: SaliencyConfig) -> dict[str, dict[str, Any]]:
    """The arrays of a saliency store for the methods ``saliency.method`` selects (named as
    :func:`engine.core.saliency.compute_saliency` names them): maps (H, W) of the observation, and the score
    grids of the grid methods (the 2017 method's, occlusion's windows, SARFA's)."""
    size = cast("tuple[int, int]", tuple(agent.observation_shape[1:]))  # (H, W) of a (C, H, W) observation
    dtype = _torch_dtype_str(agent.dtype)
    methods = selected_methods(saliency.method)
    layout: dict[str, dict[str, Any]] = {}
    heads: tuple[str, ...]
    for method, names in map_names(methods).items():
        for name in names:
            layout[name] = _entry(size, dtype, ("map_y", "map_x"))
        prefix = map_prefix(method, methods)
        if method == "perturbation":
            grid, dims, heads = grid_shape(saliency.density, size), ("grid_y", "grid_x"), ("actor", "critic")
        elif method == "occlusion":
            o = saliency.occlusion
            grid, dims, heads = occlusion_grid(size, o.window, o.stride), ("window_y", "window_x"), ("actor", "critic")
        elif method == "sarfa":
            grid, dims, heads = grid_shape(sarfa_geometry(saliency)[1], size), ("sarfa_y", "sarfa_x"), ("actor",)
        else:
            continue
        for head in heads:
            layout[f"{prefix}{head}_scores"] = _entry(grid, dtype, dims)
    return layout


def compressors(dtype: np.dtype[Any]) -> tuple[BloscCodec | ZstdCodec, Crc32cCodec]:
    # floats compress far better byte-shuffled (Blosc); bytes and booleans (frames, observations) with plain zstd.
    # crc32c last: it checksums the stored bytes of every chunk.
    if dtype.kind == "f":
        return (BloscCodec(cname="zstd", clevel=3, shuffle="shuffle", typesize=dtype.itemsize), Crc32cCodec())
    return (ZstdCodec(level=3), Crc32cCodec())


def _entry_bytes(entry: Mapping[str, Any]) -> int:
    size = int(np.dtype(entry["dtype"]).itemsize)
    for n in entry["tail"]:
        size *= int(n)
    return size


def step_bytes(layout: Mapping[str, Mapping[str, Any]]) -> int:
    """Bytes of one step (frame) of a store's per-step arrays, uncompressed."""
    return sum(_entry_bytes(e) for e in layout.values() if e["per"] == "time")


def row_bytes(layout: Mapping[str, Mapping[str, Any]]) -> int:
    """Bytes of one chunk's per-chunk arrays and its marker."""
    return sum(_entry_bytes(e) for e in layout.values() if e["per"] == "chunk") + _entry_bytes(marker_entry(layout))


def num_chunks(length: int, chunk: int) -> int:
    return -(-length // chunk)


def check_chunk_count(kind: str, length: int, chunk: int, where: str) -> None:
    """Refuse (:class:`EngineError`) a store of more chunks than :data:`MAX_CHUNKS`, before it is made."""
    unit, setting = ("step", "chunk_steps") if kind == "rollout" else ("frame", CHUNK_SETTING.get(kind, "chunk"))
    n = num_chunks(length, chunk)
    if n > MAX_CHUNKS:
        raise EngineError(
            f"{where}: {length} {unit}s in chunks of {chunk} make {n} chunks, more than the {MAX_CHUNKS} a store may "
            f"have (every job reads all its chunk markers): at most {MAX_CHUNKS * chunk} {unit}s in chunks of "
            f"{chunk}; use fewer {unit}s or a larger {setting}"
        )


def size_problem(kind: str, layout: Mapping[str, Mapping[str, Any]], length: int, chunk: int) -> str | None:
    """Why a store of ``length`` steps in chunks of ``chunk`` may not be made, in numbers; None if it may."""
    unit, setting = ("step", "chunk_steps") if kind == "rollout" else ("frame", CHUNK_SETTING.get(kind, "chunk"))
    per_step, per_row = step_bytes(layout), row_bytes(layout)
    most = (MAX_CHUNK_BYTES - per_row) // per_step if per_step else MAX_CHUNKS * length
    if chunk * per_step + per_row > MAX_CHUNK_BYTES:
        return (
            f"a chunk of {chunk} {unit}s takes {size_text(chunk * per_step + per_row)} ({per_step} bytes a {unit}), more "
            f"than the {size_text(MAX_CHUNK_BYTES)} a chunk may take (it is held in memory whole): use {setting} <= {most}"
        )
    n = num_chunks(length, chunk)
    if n > MAX_CHUNKS:
        needed = -(-length // MAX_CHUNKS)
        fix = (
            f"use {setting} >= {needed}"
            if needed <= most
            else f"a store holds at most {MAX_CHUNKS * most} {unit}s ({MAX_CHUNKS} chunks of at most {most})"
        )
        return (
            f"{length} {unit}s in chunks of {chunk} make {n} chunks, more than the {MAX_CHUNKS} a store may have "
            f"(every job reads all its chunk markers): {fix}"
        )
    return None


def check_scoring_chunk(
    rollout: Mapping[str, Mapping[str, Any]], saliency: Mapping[str, Mapping[str, Any]], frames_per_chunk: int
) -> None:
    """Refuse (:class:`EngineError`) a ``frames_per_chunk`` whose chunk of frames (the recorded steps of
    ``rollout``'s layout and the maps of ``saliency``'s) would take more than :data:`MAX_CHUNK_BYTES`."""
    per_frame = step_bytes(rollout) + step_bytes(saliency) + 1  # + 1: never divide by zero
    if frames_per_chunk * per_frame > MAX_CHUNK_BYTES:
        raise EngineError(
            f"frames_per_chunk={frames_per_chunk}: scoring holds a chunk of frames with their recorded steps and "
            f"their maps, {size_text(frames_per_chunk * per_frame)} ({per_frame} bytes a frame), more than the "
            f"{size_text(MAX_CHUNK_BYTES)} a chunk may take: use frames_per_chunk <= {MAX_CHUNK_BYTES // per_frame}"
        )


def memory_bytes(layout: Mapping[str, Mapping[str, Any]], length: int, chunk: int) -> int:
    """Bytes a memory store of ``length`` steps in chunks of ``chunk`` holds at most, uncompressed (as a job reads
    its chunks back)."""
    return length * step_bytes(layout) + num_chunks(length, chunk) * row_bytes(layout)


def memory_problem(kind: str, layout: Mapping[str, Mapping[str, Any]], length: int, chunk: int) -> str | None:
    """Why a memory store of ``length`` steps does not fit the memory available; None if it does (or is not known)."""
    available = available_memory()
    unit = "step" if kind == "rollout" else "frame"
    per_step, per_row = step_bytes(layout), row_bytes(layout)
    total = memory_bytes(layout, length, chunk)
    if available is None or total <= available:
        return None
    fit = available // (per_step + -(-per_row // chunk)) if per_step or per_row else 0
    return (
        f"a memory store of {length} {unit}s holds up to {size_text(total)} ({per_step} bytes a {unit}, as a job reads "
        f"them back), more than the {size_text(available)} of memory available: at most {fit} {unit}s fit; use fewer, "
        "or a store on disk"
    )


def _is_int(value: object) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


def _a(value: object) -> str:
    name = type(value).__name__
    return f"an {name}" if name[:1] in "aeiou" else f"a {name}"


_MANIFEST_FIELDS: tuple[tuple[str, type, str], ...] = (
    ("kind", str, "a string"),
    ("identity", dict, "a mapping"),
    ("layout", dict, "a mapping"),
    ("length", int, "an integer"),
    ("chunk", int, "an integer"),
    ("extra", dict, "a mapping"),
)


# what RolloutStore.read takes from a rollout's identity
_ROLLOUT_IDENTITY: tuple[tuple[str, type, str], ...] = (
    ("env_id", str, "a string"),
    ("seed", int, "an integer"),
    ("greedy", bool, "a boolean"),
    ("action_names", list, "a list"),
    ("state_shapes", list, "a list"),
    ("pipeline", dict, "a mapping"),
)


def _entry_problem(name: object, entry: object) -> str | None:
    if not isinstance(name, str) or not _NAME.fullmatch(name) or name == MARKER:
        return f"layout entry {name!r} is not a plain array name"
    if not isinstance(entry, dict):
        return f"layout entry {name!r} is {_a(entry)}, not a mapping"
    for field in ("tail", "dtype", "dims", "per"):
        if field not in entry:
            return f"layout entry {name!r} has no {field!r} field"
    tail, dims = entry["tail"], entry["dims"]
    if not (isinstance(tail, list) and all(_is_int(n) and n >= 1 for n in tail)):
        return f"layout entry {name!r} has tail {tail!r}, not a list of sizes >= 1"
    if not (isinstance(dims, list) and len(dims) == len(tail) and all(isinstance(d, str) and d for d in dims)):
        return f"layout entry {name!r} has dims {dims!r}, not {len(tail)} dimension names"
    try:
        dtype = np.dtype(entry["dtype"]) if isinstance(entry["dtype"], str) else None
    except TypeError:
        dtype = None
    if dtype is None or dtype.kind not in "biuf":
        return f"layout entry {name!r} has dtype {entry['dtype']!r}, not a numeric dtype"
    if entry["per"] not in ("time", "chunk"):
        return f"layout entry {name!r} has per {entry['per']!r}, not 'time' or 'chunk'"
    return None


def manifest_problem(manifest: Mapping[str, Any]) -> str | None:
    """What is wrong with the structure of a manifest, for one line; None if nothing is."""
    for key, kind, what in _MANIFEST_FIELDS:
        if key not in manifest:
            return f"it has no {key!r}"
        value = manifest[key]
        if not isinstance(value, kind) or isinstance(value, bool):
            return f"its {key} is {_a(value)}, not {what}"
    if manifest["length"] < 1 or manifest["chunk"] < 1:
        return f"its length {manifest['length']} and chunk {manifest['chunk']} must be >= 1"
    identity, layout = manifest["identity"], manifest["layout"]
    if identity.get("kind") != manifest["kind"]:
        return f"its identity's kind {identity.get('kind')!r} is not its kind {manifest['kind']!r}"
    if not layout:
        return "its layout is empty"
    for name, entry in layout.items():
        problem = _entry_problem(name, entry)
        if problem:
            return problem
    if manifest["kind"] == "rollout":
        for key, wanted, what in _ROLLOUT_IDENTITY:
            if key not in identity:
                return f"its identity has no {key!r}"
            if not isinstance(identity[key], wanted) or (wanted is int and isinstance(identity[key], bool)):
                return f"its identity's {key} is {_a(identity[key])}, not {what}"
        if not all(isinstance(n, str) for n in identity["action_names"]):
            return "its identity's action_names are not all strings"
        fields = (*ROLLOUT_FIELDS, *(f"state_{i}" for i in range(len(identity["state_shapes"]))), "sampler_state")
        missing = [f for f in fields if f not in layout]
        if missing:
            return f"its layout lacks the rollout arrays {missing}"
    return None


GAMES = "games"  # the root manifest's kind: a group of games, one store each in game_0000/, game_0001/, ...


def game_name(index: int) -> str:
    """The group of game ``index`` under a games root: ``game_0000``, ``game_0001``, ..."""
    return f"game_{index:04d}"


def game_root(root: str | os.PathLike[str], index: int) -> Path | str:
    """The store of game ``index`` under the games root ``root`` (a path or an fsspec URL)."""
    if is_url(root):
        return f"{root.rstrip('/')}/{game_name(index)}"
    return Path(root) / game_name(index)


def games_refusal(root: StoreRoot, manifest: Mapping[str, Any]) -> str:
    n = manifest.get("num_envs")
    first = game_root(root, 0) if not is_memory(root) else game_name(0)
    return (
        f"{root} holds {n} games, one {manifest.get('store', '')} store each ({first}, ...): open one game's store "
        f"(or, in a job, set rollout.num_envs={n})"
    )
