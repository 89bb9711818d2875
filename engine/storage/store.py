"""Stores for long rollouts and their saliency: one zarr (v3) group per store, on disk, on object storage or in
memory.

A store's ``root`` is a local path, an fsspec URL (``s3://bucket/path``) or a :class:`zarr.storage.MemoryStore`
object (the stores of the in-memory main job: they live as long as that object, in this process only, and need
no clean-up; an object rather than a ``memory://`` URL, whose fsspec file system is global to the process and
keeps what is written there until deleted).

Layout (``xarray.open_zarr(root)`` opens either kind as one Dataset with named dimensions)::

    <root>/zarr.json              group; attribute "manifest" = {kind, format, identity, layout, length, chunk, extra}
    <root>/<array>/zarr.json      one array per field, chunked along time only
    <root>/<array>/c/<k>/0/...    chunk k of that array: zstd (Blosc+zstd for floats) and a crc32c checksum
    <root>/complete/c/<k>/0       the marker of logical chunk k, written after all of k's arrays

Many games (``rollout.num_envs``) are a root group whose manifest has kind ``games`` (:func:`games_manifest`), with one
store per game in ``<root>/game_0000/``, ``<root>/game_0001/``, ... (:func:`open_games`, :func:`game_root`).

A rollout store holds ``frames`` (step, frame_y, frame_x, frame_rgb) uint8, ``observations`` (step, obs_channel,
obs_y, obs_x) uint8, ``logits`` (step, action), ``values``, ``actions``, ``rewards``, ``dones`` (step,), the agent's
state tuple as ``state_0`` .. ``state_{n-1}`` (step, state_i_axis_1, ...) (none for a feed-forward agent), and
per chunk ``sampler_state`` (chunk, sampler_byte) and ``complete`` (chunk, marker_byte). A saliency store holds the
maps (frame, map_y, map_x) and score grids (frame, grid_y, grid_x) of its method, e.g. ``actor``, ``critic``,
``actor_scores``, ``critic_scores``, ``jacobian_actor``, and ``complete`` (chunk, marker_byte).

The marker of chunk k (format 4) is ``32 * (1 + n)`` bytes for the ``n`` arrays of the layout: the sha256 of the
manifest (its canonical JSON: sorted keys, no spaces), then for each array in layout order
``sha256(manifest sha256 + name + NUL + k as 8 little-endian bytes + sha256(the stored bytes of its chunk k))``.
All zeros (or absent) is a chunk not yet complete; a marker that names another manifest is not this store's.

Guarantees (local paths; see docs/stores.md for object storage):

- **Atomic chunks.** Every key is written to a temporary file and renamed; a logical chunk counts only once its
  ``complete`` marker is there, and the marker is written after all of the chunk's arrays. A job killed at any
  point is resumed at the first missing chunk and ends with the arrays of an uninterrupted run.
- **One manifest, written once.** The group (manifest and every array's metadata) is built in a temporary
  directory beside ``root`` and renamed into place, so of two concurrent creators exactly one wins and the other
  compares its identity with the winner's. Shard writers never rewrite it. A directory that is not empty but has
  no manifest is never adopted.
- **Refusal to mix.** The manifest's identity (environment, seed, checkpoint sha256, settings, chunk sizes, engine
  version, pipeline, state shapes, action names) must match exactly; a difference is named in the error.
- **Integrity.** At open: the manifest's structure, the chunk count and a chunk's bytes (at most
  :data:`MAX_CHUNKS` and :data:`MAX_CHUNK_BYTES`), and each array's metadata (shape, chunking, dtype with its byte
  order, codecs, fill value; in the group's consolidated copy too, which xarray reads) against what the manifest
  implies; and the markers against the manifest: one edited after chunks were written names none of them and is
  refused (a rollout cannot be recomputed without replaying it). At read: a chunk that fails its checksum, decodes
  to the wrong size, is absent under a set marker, or whose stored bytes are not what its marker recorded (moved
  from another position, copied from another store) raises :class:`StoreIntegrityError` naming the array, chunk
  and steps, and its marker is cleared so the next run recomputes it. A marker written under another manifest (a
  chunk copied with its marker from another store) counts as not complete, and is named and cleared when the store
  is opened for writing. The hashes find accidents (copies, edits, moves), not forgery: anyone who can write the
  store can write consistent markers.
- Opening a store deletes nothing: another writer's in-progress chunk stays as it is. A killed writer's
  temporary files (``.<key>.*.partial``) stay too; no reader looks at them (delete them when no job writes).

A memory store has one process and nothing to race: it is built in place, and it alone may be cut short after its
creation (:meth:`ChunkStore.truncate`, a recording that ends with ``max_episodes``: its markers are signed again
under the new manifest). Its arrays must fit the memory available when it is created.

Memory: recording holds one chunk of steps; scoring holds one chunk of frames, its maps and one batch of
perturbations, whatever the rollout length; a chunk is at most :data:`MAX_CHUNK_BYTES`.
"""

from __future__ import annotations

import errno
import functools
import hashlib
import json
import os
import re
import shutil
import tempfile
import threading
import uuid
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self, TypeAlias, TypeGuard, cast

import numpy as np
import numpy.typing as npt
import torch
import zarr
from zarr.abc.store import ByteRequest, Store
from zarr.codecs import BloscCodec, Crc32cCodec, ZstdCodec
from zarr.core.buffer import Buffer, BufferPrototype, default_buffer_prototype
from zarr.core.metadata import ArrayV3Metadata
from zarr.core.sync import sync as zarr_sync
from zarr.storage import LocalStore, MemoryStore, WrapperStore

from ..core.batching import chunk_bounds
from ..core.errors import EngineError, MissingDependencyError
from ..core.masks import grid_shape
from ..core.policy import Policy
from ..core.saliency import SaliencyConfig
from ..core.settings import identity_view, map_names, map_prefix, occlusion_grid, sarfa_geometry, selected_methods
from ..env.rollout import Rollout

if TYPE_CHECKING:
    from typing_extensions import TypeIs

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

# what a store's ``root`` may be: a local path, an fsspec URL, or a memory store (module docstring)
StoreRoot: TypeAlias = str | os.PathLike[str] | MemoryStore


class StoreMismatchError(EngineError):
    """An existing store was written with other settings, another checkpoint or another engine version."""


class StoreIntegrityError(EngineError):
    """A store whose contents do not match its manifest: a corrupt, missing, misplaced or misshapen chunk or array,
    an edited or malformed manifest."""


def engine_version() -> str:
    try:
        return version("atari-saliency-engine")
    except PackageNotFoundError:
        return "unknown"


def is_url(root: object) -> TypeGuard[str]:
    """Whether ``root`` names object storage through fsspec (``s3://bucket/path``, ``gs://...``)."""
    return isinstance(root, str) and "://" in root


def is_memory(root: object) -> TypeIs[MemoryStore]:
    """Whether ``root`` is a store in memory (a :class:`zarr.storage.MemoryStore`)."""
    return isinstance(root, MemoryStore)


def _is_local(root: StoreRoot) -> TypeGuard[str | os.PathLike[str]]:
    return not (is_url(root) or is_memory(root))


def store_root(root: StoreRoot) -> Path | str | MemoryStore:
    """``root`` as the stores take it: a local path as a :class:`~pathlib.Path`; a URL or a memory store as it is."""
    if is_url(root) or is_memory(root):
        return root
    return Path(root)


def _sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def manifest_hash(manifest: Mapping[str, Any]) -> bytes:
    """The sha256 of a manifest's canonical JSON (sorted keys, no spaces): what every marker of its store holds."""
    return _sha256(json.dumps(manifest, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode())


def _size(n: float) -> str:
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


# --- object storage: fsspec, its packages and its credentials ------------------------------------------------------


def _missing_package(root: str, exc: ImportError) -> MissingDependencyError:
    protocol = root.split("://", 1)[0]
    package = "fsspec"
    try:
        from fsspec.registry import known_implementations

        package = str(known_implementations[protocol]["class"]).split(".")[0]
    except (ImportError, KeyError):
        pass
    extra = " (or the engine's [store] extra: pip install 'atari-saliency-engine[store]')" if package == "s3fs" else ""
    return MissingDependencyError(
        f"the store {root} is on {protocol}://, which needs the package {package} ({exc}): pip install {package}{extra}"
    )


_CREDENTIAL_ERRORS = ("NoCredentialsError", "PartialCredentialsError", "CredentialRetrievalError")


def _credentials_error(exc: BaseException) -> bool:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if any(cls.__name__ in _CREDENTIAL_ERRORS for cls in type(current).__mro__):
            return True
        current = current.__cause__ or current.__context__
    return False


@contextmanager
def _object_storage(root: StoreRoot, resume: bool = False) -> Iterator[None]:
    """What the user must fix about object storage as one line: a missing fsspec package, missing credentials
    (with ``resume``, around writes of a run under way: also that the run resumes where it stopped)."""
    try:
        yield
    except ImportError as exc:
        if not is_url(root):
            raise
        raise _missing_package(root, exc) from None
    except Exception as exc:
        if not (is_url(root) and _credentials_error(exc)):
            raise
        raise EngineError(
            f"no credentials for the store {root} ({type(exc).__name__}: {exc}): set AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY (or AWS_PROFILE, or key and secret in storage_options)"
            + (
                "; the chunks written so far are kept: rerun the same command with fresh credentials to resume"
                if resume
                else ""
            )
        ) from None


# --- the key-value layer under zarr ------------------------------------------------------------------------------


def _is_chunk_key(key: str) -> bool:
    return "/c/" in key


class _Keys(WrapperStore[Store]):
    """The zarr store under a store. On local paths every key is written to a temporary file beside it and renamed
    (so a reader or a killed writer never sees half a key, whatever zarr version). In strict mode an absent chunk
    key is an error instead of zarr's silent fill value: under a set marker every chunk key must be there.
    ``seen`` and ``written`` (when dicts) take the sha256 of every chunk key's stored bytes as it is read or written:
    what the markers hold, without reading a key twice. ``reads`` (when a list) records every key read (tests use it
    to see that a slice loads only its chunks)."""

    def __init__(self, store: Store, local_root: Path | None = None) -> None:
        super().__init__(store)
        self.local_root = local_root
        self.strict = False
        self.reads: list[str] | None = None
        self.seen: dict[str, bytes] | None = None
        self.written: dict[str, bytes] | None = None

    def _with_store(self, store: Store) -> Self:
        return type(self)(store, self.local_root)

    async def get(self, key: str, prototype: BufferPrototype, byte_range: ByteRequest | None = None) -> Buffer | None:
        if self.reads is not None:
            self.reads.append(key)
        value = await self._store.get(key, prototype, byte_range)
        if value is None and self.strict and _is_chunk_key(key):
            raise _MissingChunk(key)
        if value is not None and self.seen is not None and byte_range is None and _is_chunk_key(key):
            self.seen[key] = _sha256(value.to_bytes())
        return value

    async def set(self, key: str, value: Buffer) -> None:
        if self.written is not None and _is_chunk_key(key):
            self.written[key] = _sha256(value.to_bytes())
        if self.local_root is None:  # object storage: one PUT is atomic already
            return await self._store.set(key, value)
        from ..core.files import atomic_write

        self._check_writable()
        with atomic_write(self.local_root / key) as tmp:
            tmp.write_bytes(value.to_bytes())


class _MissingChunk(KeyError):
    pass


def _open_keys(root: StoreRoot, storage_options: dict[str, Any] | None, read_only: bool) -> _Keys:
    if is_url(root):
        from zarr.storage import FsspecStore

        with _object_storage(root):
            return _Keys(FsspecStore.from_url(root, storage_options=storage_options or {}, read_only=read_only))
    if is_memory(root):  # a view of the same keys: what one view writes, the others read
        return _Keys(root.with_read_only(read_only))
    return _Keys(LocalStore(Path(root), read_only=read_only), Path(root))


def _fs(root: str, storage_options: dict[str, Any] | None) -> tuple[Any, str]:
    with _object_storage(root):
        import fsspec

        # fsspec has no type information here; it returns (file system, path within it)
        return cast("tuple[Any, str]", fsspec.core.url_to_fs(root, **(storage_options or {})))


def store_exists(root: StoreRoot, storage_options: dict[str, Any] | None = None) -> bool:
    """Whether a store (its group's ``zarr.json``) is at ``root`` (a path, an fsspec URL or a memory store)."""
    if is_memory(root):
        return root.get_sync("zarr.json") is not None
    if is_url(root):
        fs, path = _fs(root, storage_options)
        with _object_storage(root):
            return bool(fs.exists(f"{path.rstrip('/')}/zarr.json"))
    return (Path(root) / "zarr.json").is_file()


# --- layout: which arrays a store holds, with their shapes, dtypes and dimension names ----------------------------


def _entry(tail: Iterable[int], dtype: npt.DTypeLike, dims: Iterable[str], per: str = "time") -> dict[str, Any]:
    return {"tail": [int(n) for n in tail], "dtype": np.dtype(dtype).str, "dims": list(dims), "per": per}


def _marker_entry(layout: Mapping[str, Any]) -> dict[str, Any]:
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


def _compressors(dtype: np.dtype[Any]) -> tuple[BloscCodec | ZstdCodec, Crc32cCodec]:
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


def _row_bytes(layout: Mapping[str, Mapping[str, Any]]) -> int:
    """Bytes of one chunk's per-chunk arrays and its marker."""
    return sum(_entry_bytes(e) for e in layout.values() if e["per"] == "chunk") + _entry_bytes(_marker_entry(layout))


def _num_chunks(length: int, chunk: int) -> int:
    return -(-length // chunk)


def check_chunk_count(kind: str, length: int, chunk: int, where: str) -> None:
    """Refuse (:class:`EngineError`) a store of more chunks than :data:`MAX_CHUNKS`, before it is made."""
    unit, setting = ("step", "chunk_steps") if kind == "rollout" else ("frame", CHUNK_SETTING.get(kind, "chunk"))
    n = _num_chunks(length, chunk)
    if n > MAX_CHUNKS:
        raise EngineError(
            f"{where}: {length} {unit}s in chunks of {chunk} make {n} chunks, more than the {MAX_CHUNKS} a store may "
            f"have (every job reads all its chunk markers): at most {MAX_CHUNKS * chunk} {unit}s in chunks of "
            f"{chunk}; use fewer {unit}s or a larger {setting}"
        )


def _size_problem(kind: str, layout: Mapping[str, Mapping[str, Any]], length: int, chunk: int) -> str | None:
    """Why a store of ``length`` steps in chunks of ``chunk`` may not be made, in numbers; None if it may."""
    unit, setting = ("step", "chunk_steps") if kind == "rollout" else ("frame", CHUNK_SETTING.get(kind, "chunk"))
    per_step, per_row = step_bytes(layout), _row_bytes(layout)
    most = (MAX_CHUNK_BYTES - per_row) // per_step if per_step else MAX_CHUNKS * length
    if chunk * per_step + per_row > MAX_CHUNK_BYTES:
        return (
            f"a chunk of {chunk} {unit}s takes {_size(chunk * per_step + per_row)} ({per_step} bytes a {unit}), more "
            f"than the {_size(MAX_CHUNK_BYTES)} a chunk may take (it is held in memory whole): use {setting} <= {most}"
        )
    n = _num_chunks(length, chunk)
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
            f"their maps, {_size(frames_per_chunk * per_frame)} ({per_frame} bytes a frame), more than the "
            f"{_size(MAX_CHUNK_BYTES)} a chunk may take: use frames_per_chunk <= {MAX_CHUNK_BYTES // per_frame}"
        )


def _memory_problem(kind: str, layout: Mapping[str, Mapping[str, Any]], length: int, chunk: int) -> str | None:
    """Why a memory store of ``length`` steps does not fit the memory available; None if it does (or is not known)."""
    available = available_memory()
    unit = "step" if kind == "rollout" else "frame"
    per_step, per_row = step_bytes(layout), _row_bytes(layout)
    total = length * per_step + _num_chunks(length, chunk) * per_row
    if available is None or total <= available:
        return None
    fit = available // (per_step + -(-per_row // chunk)) if per_step or per_row else 0
    return (
        f"a memory store of {length} {unit}s holds up to {_size(total)} ({per_step} bytes a {unit}, as a job reads "
        f"them back), more than the {_size(available)} of memory available: at most {fit} {unit}s fit; use fewer, "
        "or a store on disk"
    )


# --- the manifest ------------------------------------------------------------------------------------------------


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


def _manifest_problem(manifest: Mapping[str, Any]) -> str | None:
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


# --- the store ---------------------------------------------------------------------------------------------------


def _flat(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _difference(existing: Mapping[str, Any], wanted: Mapping[str, Any]) -> str:
    a, b = _flat(existing), _flat(wanted)
    keys = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
    return "; ".join(f"{k}: store has {a.get(k)!r}, this job {b.get(k)!r}" for k in keys)


def _metadata_difference(found: Mapping[str, Any], wanted: Mapping[str, Any], source: str) -> str:
    def text(value: object) -> str:
        return json.dumps(value, separators=(",", ":"), default=str)

    keys = [k for k in wanted if found.get(k) != wanted[k]] + [k for k in found if k not in wanted]
    return "; ".join(f"{k}: store has {text(found.get(k))}, {source} {text(wanted.get(k))}" for k in keys)


def _jsonable(value: object) -> Any:
    return json.loads(json.dumps(value, default=str))  # as it reads back from the attributes


def _array_spec(entry: Mapping[str, Any], length: int, chunk: int, time_dim: str) -> dict[str, Any]:
    """How the array of a layout entry is made (:func:`_build`), and so what its metadata must say."""
    per_time = entry["per"] == "time"
    dtype = np.dtype(entry["dtype"])
    return dict(
        shape=((length if per_time else _num_chunks(length, chunk)), *entry["tail"]),
        chunks=(chunk if per_time else 1, *entry["tail"]),
        dtype=dtype,
        fill_value=False if dtype.kind == "b" else 0,
        compressors=_compressors(dtype),
        dimension_names=((time_dim if per_time else CHUNK_AXIS), *entry["dims"]),
    )


@functools.lru_cache(maxsize=256)
def _made_metadata(spec_json: str) -> str:
    spec = json.loads(spec_json)
    dtype = np.dtype(spec["dtype"])
    array = zarr.create_array(
        MemoryStore(),
        shape=tuple(spec["shape"]),
        chunks=tuple(spec["chunks"]),
        dtype=dtype,
        fill_value=spec["fill_value"],
        compressors=_compressors(dtype),
        dimension_names=tuple(spec["dimension_names"]),
    )
    return json.dumps(array.metadata.to_dict(), default=list)


def _expected_metadata(spec: Mapping[str, Any]) -> dict[str, Any]:
    """The metadata (``to_dict``, as JSON reads it back) zarr writes for an array made as ``spec`` says."""
    key = {k: (v.str if isinstance(v, np.dtype) else v) for k, v in spec.items() if k != "compressors"}
    return cast("dict[str, Any]", json.loads(_made_metadata(json.dumps(key, default=list))))


def _as_json(metadata: Mapping[str, Any]) -> dict[str, Any]:
    return cast("dict[str, Any]", json.loads(json.dumps(metadata, default=list)))


class ChunkStore:
    """One zarr group of arrays chunked along time, with a manifest and per-chunk markers (module docstring).

    ``root`` is a local path, an fsspec URL (``s3://bucket/path``; ``storage_options`` as fsspec takes them) or a
    :class:`zarr.storage.MemoryStore` (module docstring).
    """

    def __init__(self, root: StoreRoot, storage_options: dict[str, Any] | None = None, read_only: bool = False) -> None:
        self.root, self.storage_options, self.read_only = store_root(root), storage_options, read_only
        # truncate() rewrites the manifest and signs the markers again: a reader in another thread (a games job
        # scoring while it records) must see the store before or after, never between
        self._lock = threading.RLock()
        with _object_storage(self.root):
            self._open()

    def _open(self) -> None:
        if not store_exists(self.root, self.storage_options):  # checked first: opening would create the directory
            raise EngineError(f"{self.root} is not a store (no zarr.json): record or score into it first")
        self.keys = _open_keys(self.root, self.storage_options, self.read_only)
        self.group = zarr.open_group(self.keys, mode="r" if self.read_only else "r+", use_consolidated=False)
        manifest = self.group.attrs.get(MANIFEST)
        if isinstance(manifest, dict) and manifest.get("kind") == GAMES:
            raise EngineError(_games_refusal(self.root, manifest))
        if not isinstance(manifest, dict) or "identity" not in manifest or "layout" not in manifest:
            raise EngineError(
                f"{self.root} is a zarr group without a store manifest (attribute {MANIFEST!r}): not adopting it; "
                "delete it or use another path"
            )
        _refuse_other_format(self.root, manifest)
        problem = _manifest_problem(manifest)
        if problem:
            raise StoreIntegrityError(
                f"the store {self.root} has a malformed manifest ({problem}): it is damaged or not an engine store; "
                "delete it and run again"
            )
        self.manifest: dict[str, Any] = manifest
        problem = _size_problem(self.kind, self.layout, self.length, self.chunk)
        if problem:
            raise StoreIntegrityError(
                f"the store {self.root}: its manifest claims more than a store may hold ({problem}): it is damaged; "
                "delete it and run again"
            )
        self._open_arrays()
        self._check_markers()

    def _open_arrays(self) -> None:
        self.hash = manifest_hash(self.manifest)
        self._bounds = chunk_bounds(self.length, self.chunk)
        self.arrays: dict[str, zarr.Array[Any]] = {
            name: self._checked_array(name, entry) for name, entry in self.layout.items()
        }
        self.marker = self._checked_array(MARKER, _marker_entry(self.layout))
        self._check_consolidated()

    # manifest ---------------------------------------------------------------------------------------------
    @property
    def kind(self) -> str:
        return str(self.manifest["kind"])

    @property
    def identity(self) -> dict[str, Any]:
        return cast("dict[str, Any]", self.manifest["identity"])

    @property
    def layout(self) -> dict[str, dict[str, Any]]:
        return cast("dict[str, dict[str, Any]]", self.manifest["layout"])

    @property
    def length(self) -> int:
        return int(self.manifest["length"])

    @property
    def chunk(self) -> int:
        return int(self.manifest["chunk"])

    @property
    def num_chunks(self) -> int:
        return _num_chunks(self.length, self.chunk)

    @property
    def bounds(self) -> list[tuple[int, int]]:
        return self._bounds

    def _steps(self, k: int) -> str:
        a, b = self._bounds[k]
        return f"steps {a}..{b - 1}"

    def _spec(self, entry: Mapping[str, Any]) -> dict[str, Any]:
        return _array_spec(entry, self.length, self.chunk, "step" if self.kind == "rollout" else "frame")

    def _array(self, name: str) -> zarr.Array[Any]:
        """The group's array ``name``; a missing one, or a group in its place, is a damaged store."""
        try:
            node = self.group[name]
        except KeyError as exc:
            raise StoreIntegrityError(
                f"the store {self.root} lacks its array {name!r}: it is damaged; delete it and run again"
            ) from exc
        if not isinstance(node, zarr.Array):
            raise StoreIntegrityError(
                f"the store {self.root}: {name!r} is a group, not an array: it is damaged; delete it and run again"
            )
        return node

    def _checked_array(self, name: str, entry: Mapping[str, Any]) -> zarr.Array[Any]:
        array = self._array(name)
        spec = self._spec(entry)
        shape, chunks = spec["shape"], spec["chunks"]
        found = (tuple(array.shape), tuple(array.chunks), np.dtype(array.dtype).str)
        if found != (shape, chunks, np.dtype(entry["dtype"]).str):
            raise StoreIntegrityError(
                f"the store {self.root}: array {name!r} has shape {found[0]}, chunks {found[1]}, dtype {found[2]}, but its "
                f"manifest says shape {shape}, chunks {chunks}, dtype {entry['dtype']}: it is damaged; delete it and run again"
            )
        # byte order, codecs, fill value, attributes: a difference decodes every chunk to other numbers
        wanted, metadata = _expected_metadata(spec), _as_json(array.metadata.to_dict())
        if metadata != wanted:
            raise StoreIntegrityError(
                f"the store {self.root}: array {name!r} has metadata other than its manifest implies "
                f"({_metadata_difference(metadata, wanted, 'the manifest implies')}): it is damaged; delete it and "
                "run again"
            )
        return array.with_config({"write_empty_chunks": True})  # every chunk stored, so an absent key is an error

    def _check_consolidated(self) -> None:
        """The group's consolidated metadata (what xarray reads instead of each array's own) must say the same."""
        raw = zarr_sync(self.keys.get("zarr.json", default_buffer_prototype()))
        try:
            document = json.loads(raw.to_bytes()) if raw is not None else {}
            consolidated = document.get("consolidated_metadata") or {}
            copies = consolidated.get("metadata") or {}
        except (ValueError, AttributeError):
            copies = {}
        for name in (*self.layout, MARKER):
            if not isinstance(copies, dict) or name not in copies:
                continue  # none: xarray reads the arrays' own
            own = _as_json((self.arrays[name] if name != MARKER else self.marker).metadata.to_dict())
            try:
                copy = _as_json(ArrayV3Metadata.from_dict(dict(copies[name])).to_dict())
            except Exception as exc:
                copy = {"unreadable": str(exc)}
            if copy != own:
                raise StoreIntegrityError(
                    f"the store {self.root}: the consolidated metadata of array {name!r} in its zarr.json (what xarray "
                    f"reads) differs from the array's own ({_metadata_difference(copy, own, 'the array says')}): it is "
                    "damaged; delete it and run again"
                )

    # markers ----------------------------------------------------------------------------------------------
    def _marker_rows(self, start: int, stop: int) -> np.ndarray:
        """Markers ``start..stop-1`` as ``(n, width)`` bytes; a damaged one reads as zeros (not complete)."""
        width = _marker_entry(self.layout)["tail"][0]
        try:
            return np.asarray(self.marker[start:stop], dtype=np.uint8).reshape(-1, width)
        except Exception:
            rows = np.zeros((max(stop - start, 0), width), dtype=np.uint8)
            for k in range(start, stop):
                try:
                    rows[k - start] = self.marker[k]
                except Exception:
                    pass
            return rows

    def _ours(self, rows: np.ndarray) -> np.ndarray:
        """Which marker rows are set under this store's manifest."""
        return cast("np.ndarray", (rows[:, :DIGEST] == np.frombuffer(self.hash, dtype=np.uint8)).all(axis=1))

    def _bind(self, digest: bytes, name: str, k: int, content: bytes) -> bytes:
        """The hash a marker holds for chunk ``k`` of array ``name``: its content bound to its place and manifest."""
        return _sha256(digest + name.encode() + b"\0" + k.to_bytes(8, "little") + content)

    def _chunk_key(self, name: str, k: int) -> str:
        tail = self.layout[name]["tail"] if name != MARKER else [0]
        return f"{name}/c/{k}" + "/0" * len(tail)

    def _stored_digest(self, key: str) -> bytes | None:
        value = zarr_sync(self.keys.get(key, default_buffer_prototype()))
        return None if value is None else _sha256(value.to_bytes())

    def _row(self, k: int, contents: Mapping[str, bytes | None], digest: bytes | None = None) -> np.ndarray:
        """The marker of chunk ``k`` whose arrays' stored bytes hash to ``contents`` (by array name)."""
        digest = self.hash if digest is None else digest
        parts = [digest]
        for name in self.layout:
            content = contents.get(name)
            if content is None:
                raise StoreIntegrityError(
                    f"the store {self.root}: chunk {k} ({self._steps(k)}) of {name!r} is absent right after its write"
                )
            parts.append(self._bind(digest, name, k, content))
        return np.frombuffer(b"".join(parts), dtype=np.uint8)

    def _check_markers(self) -> None:
        """Markers name the manifest they were written under: none of this one, an edited manifest (refused); some of
        another, chunks copied from another store (named and cleared by a writer, so the next run recomputes them)."""
        rows = self._marker_rows(0, self.num_chunks)
        written, ours = rows.any(axis=1), self._ours(rows)
        if written.any() and not ours.any():
            theirs = bytes(rows[np.flatnonzero(written)[0], :DIGEST])
            redo = (
                "a rollout cannot be recomputed without replaying it: delete the store and record the game again"
                if self.kind == "rollout"
                else f"delete the store and {'score' if self.kind == 'saliency' else 'run'} again"
            )
            raise StoreIntegrityError(
                f"the manifest of the {self.kind} store {self.root} is not the one its chunks were written under "
                f"(it hashes to {self.hash[:6].hex()}, their markers name {theirs[:6].hex()}): it was edited, or the "
                f"chunks come from another store, so its identity (seed, checkpoint, settings) cannot be trusted; "
                f"{redo}"
            )
        foreign = [int(k) for k in np.flatnonzero(written & ~ours)]
        if foreign and not self.read_only:  # read-only, they count as not complete (completed); a writer names them
            cleared = all(self._unmark(k) for k in foreign)
            others = f" (and chunks {foreign[1:10]})" if len(foreign) > 1 else ""
            raise StoreIntegrityError(
                f"the store {self.root}: chunk {foreign[0]} ({self._steps(foreign[0])}){others} is damaged (its marker "
                "was written under another manifest: copied from another store); "
                + (
                    "it is marked incomplete and will be recomputed by the next run"
                    if cleared
                    else "it could not be marked incomplete: delete the store and run again"
                )
            )

    # creation ---------------------------------------------------------------------------------------------
    @classmethod
    def open_or_create(
        cls,
        root: StoreRoot,
        identity: dict[str, Any],
        layout: Mapping[str, Mapping[str, Any]],
        length: int,
        chunk: int,
        extra: dict[str, Any] | None = None,
        storage_options: dict[str, Any] | None = None,
    ) -> ChunkStore:
        """Open the store at ``root`` if its identity equals ``identity`` (else :class:`StoreMismatchError`), or
        create it atomically (module docstring). A store of more than :data:`MAX_CHUNKS` chunks, of chunks over
        :data:`MAX_CHUNK_BYTES`, or (in memory) over the memory available is refused before anything is written."""
        manifest: dict[str, Any] = _jsonable(
            dict(
                kind=identity["kind"],
                format=FORMAT,
                identity=identity,
                layout=layout,
                length=length,
                chunk=chunk,
                extra=extra or {},
            )
        )
        root = store_root(root)
        problem = _manifest_problem(manifest)
        if problem:
            raise EngineError(f"cannot make the store {root}: its manifest would be malformed ({problem})")
        kind = manifest["kind"]
        problem = _size_problem(kind, manifest["layout"], length, chunk) or (
            _memory_problem(kind, manifest["layout"], length, chunk) if is_memory(root) else None
        )
        if problem:
            raise EngineError(f"the {kind} store {root}: {problem}")
        with _object_storage(root):
            if not store_exists(root, storage_options):
                _refuse_foreign(root, storage_options)
                try:
                    _create(root, manifest, storage_options)
                except OSError as exc:
                    raise EngineError(f"cannot create the store {root}: {exc.strerror or exc}") from exc
        store = cls(root, storage_options)
        if store.identity != manifest["identity"]:
            raise StoreMismatchError(
                f"the store {root} was written with other settings ({_difference(store.identity, manifest['identity'])}): "
                "refusing to mix them; use another directory, or delete this one to start over"
            )
        if (store.layout, store.length, store.chunk) != (manifest["layout"], manifest["length"], manifest["chunk"]):
            raise StoreMismatchError(
                f"the store {root} holds arrays of other shapes than this job makes: use another directory"
            )
        return store

    def truncate(self, length: int) -> None:
        """Keep steps ``0..length-1`` only: a recording that ended early (``max_episodes``) ends its store there.
        Chunks past the new end must not be written yet. Memory stores only: this rewrites the manifest, which a
        store elsewhere writes once (another process may hold it already); the markers of the chunks kept are
        signed again under the new manifest."""
        if not is_memory(self.root):
            raise EngineError(f"the store {self.root} has its length in its manifest: only a memory store is truncated")
        if not 1 <= length <= self.length:
            raise ValueError(f"cannot truncate the store {self.root} of {self.length} steps to {length}")
        with self._lock:
            self._truncate(length)

    def _truncate(self, length: int) -> None:
        old_hash, done = self.hash, self.completed()
        self.manifest = {**self.manifest, "length": int(length)}
        for name, entry in {**self.layout, MARKER: _marker_entry(self.layout)}.items():
            self._array(name).resize(self._spec(entry)["shape"])
        self.group.attrs[MANIFEST] = self.manifest
        _consolidate(self.keys)
        self._open_arrays()
        for k in np.flatnonzero(done[: self.num_chunks]):
            contents = {name: self._stored_digest(self._chunk_key(name, int(k))) for name in self.layout}
            if np.array_equal(self._row(int(k), contents, old_hash), self._marker_rows(int(k), int(k) + 1)[0]):
                self.marker[int(k)] = self._row(int(k), contents)
            else:  # not what its marker recorded: recomputed rather than signed
                self._unmark(int(k))

    @classmethod
    def open_kind(
        cls, root: StoreRoot, kind: str, storage_options: dict[str, Any] | None = None, read_only: bool = False
    ) -> ChunkStore:
        """Open an existing store and check that it holds ``kind`` ("rollout" or "saliency")."""
        _refuse_old_format(store_root(root), storage_options)
        store = cls(root, storage_options, read_only=read_only)
        if store.kind != kind:
            raise EngineError(f"{root} is a {store.kind} store, not a {kind} store")
        return store

    # chunks -------------------------------------------------------------------------------------------------
    def completed(self) -> np.ndarray:
        """(num_chunks,) bool: which logical chunks are marked complete under this store's manifest."""
        with self._lock:
            return self._ours(self._marker_rows(0, self.num_chunks))

    def has(self, index: int) -> bool:
        with self._lock:
            return bool(self._ours(self._marker_rows(index, index + 1))[0])

    def write(self, index: int, arrays: Mapping[str, npt.ArrayLike | torch.Tensor]) -> None:
        """Write logical chunk ``index``: every array of the layout (``(b - a, ...)`` per time step, one row per
        chunk), then its marker (the hashes of what was stored)."""
        a, b = self.bounds[index]
        missing, extra = set(self.layout) - set(arrays), set(arrays) - set(self.layout)
        if missing or extra:
            raise EngineError(
                f"chunk {index} of {self.root}: missing arrays {sorted(missing)}, unexpected {sorted(extra)}"
            )
        data: dict[str, np.ndarray] = {}
        for name, entry in self.layout.items():
            given = arrays[name]
            value = given.detach().cpu().numpy() if isinstance(given, torch.Tensor) else np.asarray(given)
            want = ((b - a) if entry["per"] == "time" else 1, *entry["tail"])
            value = value.reshape(want) if entry["per"] == "chunk" and value.size == int(np.prod(want)) else value
            if value.shape != want or value.dtype.str != np.dtype(entry["dtype"]).str:
                raise EngineError(
                    f"chunk {index} of {self.root}: {name!r} is {value.shape} {value.dtype}, the store holds {want} "
                    f"{np.dtype(entry['dtype'])}: the agent or settings differ from the store's manifest"
                )
            data[name] = value
        written: dict[str, bytes] = {}
        self.keys.written = written
        try:
            with _object_storage(self.root, resume=True):
                for name, value in data.items():
                    if self.layout[name]["per"] == "time":
                        self.arrays[name][a:b] = value
                    else:
                        self.arrays[name][index : index + 1] = value
        except OSError as exc:
            if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            raise EngineError(self._full_disk(index, data)) from None
        finally:
            self.keys.written = None
        contents = {}
        for name in self.layout:
            key = self._chunk_key(name, index)
            contents[name] = written.get(key) or self._stored_digest(key)
        self.marker[index] = self._row(index, contents)

    def _full_disk(self, index: int, data: Mapping[str, np.ndarray]) -> str:
        """What to do when the disk holding the store filled up while chunk ``index`` was written (chunk files are
        written atomically and its marker after them, so the chunk simply stays missing)."""
        done = int(self.completed().sum())
        left = sum(value.nbytes for value in data.values()) * (self.num_chunks - done)
        free = f" ({_size(shutil.disk_usage(self.root).free)} free)" if _is_local(self.root) else ""
        return (
            f"the disk holding the store {self.root} is full{free}: chunk {index} was not written; the {done} "
            f"complete chunk(s) are kept. Free up to {_size(left)} (the {self.num_chunks - done} missing chunks, "
            "uncompressed) or move the store, then rerun the same command: it resumes at the missing chunks"
        )

    def read(self, index: int, keys: tuple[str, ...] | None = None) -> dict[str, np.ndarray]:
        """Logical chunk ``index``: per-step arrays ``(b - a, ...)``; per-chunk ones as their row ``(...)``."""
        with self._lock:
            a, b = self.bounds[index]
            out: dict[str, np.ndarray] = {}
            for name in keys or tuple(self.layout):
                if self.layout[name]["per"] == "time":
                    out[name] = self._read(name, a, b)
                else:
                    out[name] = self._read(name, index, index + 1)[0]
            return out

    def read_range(self, start: int, stop: int, keys: tuple[str, ...] | None = None) -> dict[str, np.ndarray]:
        """Steps ``start..stop-1`` of the per-step arrays, loading only the chunks that hold them."""
        with self._lock:
            names = keys or tuple(k for k, e in self.layout.items() if e["per"] == "time")
            return {name: self._read(name, start, stop) for name in names}

    @contextmanager
    def _strict(self, seen: dict[str, bytes] | None = None) -> Iterator[None]:
        self.keys.strict, self.keys.seen = True, seen
        try:
            yield
        finally:
            self.keys.strict, self.keys.seen = False, None

    def _chunks_of(self, name: str, start: int, stop: int) -> range:
        """The logical chunks that hold rows ``start..stop-1`` of array ``name``."""
        if stop <= start:
            return range(0)
        if self.layout[name]["per"] == "time":
            return range(max(start, 0) // self.chunk, min(_num_chunks(stop, self.chunk), self.num_chunks))
        return range(max(start, 0), min(stop, self.num_chunks))

    def _read(self, name: str, start: int, stop: int) -> np.ndarray:
        array = self.arrays[name]
        per_time = self.layout[name]["per"] == "time"
        chunks = self._chunks_of(name, start, stop)
        rows = self._marker_rows(chunks.start, chunks.stop) if chunks else np.zeros((0, 0), np.uint8)
        marked = [k for k, ours in zip(chunks, self._ours(rows) if chunks else []) if ours]
        seen: dict[str, bytes] = {}
        try:
            with self._strict(seen):
                # zarr types a selection as any array-like or scalar: a slice of these arrays reads as an ndarray
                value = cast("np.ndarray", array[start:stop])
        except Exception as first:
            # find which chunk failed (zarr's error does not say), unmark it so the next run recomputes it
            for k in chunks:
                a, b = self.bounds[k] if per_time else (k, k + 1)
                try:
                    with self._strict():
                        array[a:b]
                except Exception as exc:
                    reason = f"its key {exc.args[0]!r} is missing" if isinstance(exc, _MissingChunk) else str(exc)
                    raise self._damaged(name, k, reason) from exc
            raise first
        width = DIGEST * (1 + list(self.layout).index(name))
        for k in marked:
            key = self._chunk_key(name, k)
            content = seen.get(key) or self._stored_digest(key)
            recorded = bytes(rows[k - chunks.start, width : width + DIGEST])
            if content is None or self._bind(self.hash, name, k, content) != recorded:
                raise self._damaged(
                    name,
                    k,
                    "its content is not what its marker recorded: moved from another position or copied from another "
                    "store",
                )
        return value

    def _damaged(self, name: str, k: int, reason: str) -> StoreIntegrityError:
        cleared = self._unmark(k)
        return StoreIntegrityError(
            f"the store {self.root}: chunk {k} ({self._steps(k)}) of {name!r} is damaged ({reason}); "
            + (
                "it is marked incomplete and will be recomputed by the next run"
                if cleared
                else "it could not be marked incomplete (read-only store): delete the store and run again"
            )
        )

    def _unmark(self, index: int) -> bool:
        width = _marker_entry(self.layout)["tail"][0]
        try:
            if self.read_only:
                keys = _open_keys(self.root, self.storage_options, read_only=False)
                marker = zarr.open_array(keys, path=MARKER, mode="r+", zarr_format=3)
            else:
                marker = self.marker
            marker[index] = np.zeros(width, dtype=np.uint8)
            return True
        except Exception:
            return False


def _refuse_old_format(root: StoreRoot, storage_options: dict[str, Any] | None) -> None:
    if _is_local(root) and (Path(root) / "manifest.json").is_file():
        raise EngineError(
            f"{root} is a store of an older engine (format 2: .npz chunks and manifest.json): delete it or use "
            "another path; this engine writes zarr stores"
        )


def _refuse_other_format(root: StoreRoot, manifest: Mapping[str, Any]) -> None:
    found = manifest.get("format")
    if found == FORMAT:
        return
    if isinstance(found, int) and 3 <= found < FORMAT:  # format 2 has no group manifest (_refuse_old_format)
        raise EngineError(
            f"{root} is a store of an older engine (format {found}: chunk markers without content hashes): delete it "
            f"or use another path; this engine writes format {FORMAT}"
        )
    if isinstance(found, int) and found > FORMAT:
        raise EngineError(
            f"{root} is a store of a newer engine (format {found}; this one reads format {FORMAT}): upgrade the engine"
        )
    raise StoreIntegrityError(
        f"the store {root} has a malformed manifest (its format is {found!r}, not {FORMAT}): it is damaged or not an "
        "engine store; delete it and run again"
    )


def _refuse_foreign(root: StoreRoot, storage_options: dict[str, Any] | None) -> None:
    """A path that holds something but no store is never adopted."""
    _refuse_old_format(root, storage_options)
    if is_memory(root):
        if not zarr_sync(root.is_empty("")):
            raise EngineError(
                f"{root} holds keys but no store manifest (zarr.json): not adopting them; use an empty memory store"
            )
        return
    if is_url(root):
        fs, path = _fs(root, storage_options)
        if fs.exists(path) and fs.ls(path):
            raise EngineError(
                f"{root} holds objects but no store manifest (zarr.json): not adopting them; delete them or use another path"
            )
        return
    root = Path(root)
    if root.exists() and not root.is_dir():
        raise EngineError(f"the store path {root} is a file, not a directory: use another path")
    if root.is_dir() and any(root.iterdir()):
        raise EngineError(
            f"{root} is not empty but has no store manifest (zarr.json with {MANIFEST!r}): not adopting its files; "
            "delete it or use another path"
        )


def _build(keys: Store, manifest: Mapping[str, Any]) -> None:
    group = zarr.create_group(keys, zarr_format=3, attributes={MANIFEST: manifest})
    length, chunk = manifest["length"], manifest["chunk"]
    time_dim = "step" if manifest["kind"] == "rollout" else "frame"
    entries = dict(manifest["layout"])
    entries[MARKER] = _marker_entry(manifest["layout"])
    for name, entry in entries.items():
        group.create_array(name, **_array_spec(entry, length, chunk, time_dim))
    _consolidate(keys)


def _consolidate(keys: Store) -> None:
    with warnings.catch_warnings():  # "consolidated metadata is not part of the v3 spec": xarray reads it
        warnings.simplefilter("ignore")
        zarr.consolidate_metadata(keys)


def _create(root: StoreRoot, manifest: Mapping[str, Any], storage_options: dict[str, Any] | None) -> None:
    if is_memory(root):  # built in place: a memory store has one process and no half-written state to hide
        _build(_Keys(root), manifest)
        return
    if is_url(root):
        # no atomic rename on object storage: built in memory, then uploaded with the group's zarr.json (the
        # manifest) last, so a store whose manifest is visible has all its arrays. Two creators can still both
        # upload (each PUT wins alone): the identity check after creation catches most, not all, such races.
        keys: dict[str, Buffer] = {}
        _build(zarr.storage.MemoryStore(store_dict=keys), manifest)
        fs, path = _fs(root, storage_options)
        path = path.rstrip("/")
        fs.pipe({f"{path}/{k}": v.to_bytes() for k, v in keys.items() if k != "zarr.json"})
        fs.pipe_file(f"{path}/zarr.json", keys["zarr.json"].to_bytes())
        fs.invalidate_cache()
        return
    root = Path(root)
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=root.parent, prefix=f".{root.name}.creating-{uuid.uuid4().hex[:8]}-"))
    try:
        os.chmod(tmp, 0o777 & ~_umask())
        _build(_Keys(LocalStore(tmp), tmp), manifest)
        try:
            os.rename(tmp, root)  # atomic; replaces only an absent or empty directory
        except OSError as exc:
            if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                raise
            # another creator won: the caller opens its store and compares identities
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def check_writable(root: StoreRoot, storage_options: dict[str, Any] | None = None) -> None:
    """Fail with one line, before any work, if ``root`` cannot hold a store that this job writes to: a file,
    something inside a file, or a read-only place. Local paths are probed by writing a temporary file."""
    if is_memory(root):
        if root.read_only:
            raise EngineError(f"the store {root} is a read-only memory store: pass a writable one")
        return
    if is_url(root):
        return  # object storage: credentials and permissions show at the first write
    root = Path(root)
    if root.exists() and not root.is_dir():
        raise EngineError(f"the store path {root} is a file, not a directory: use another path")
    place = root
    while not place.exists():
        place = place.parent
    if not place.is_dir():
        raise EngineError(f"the store path {root} is inside a file ({place}): use another path")
    try:
        fd, probe = tempfile.mkstemp(dir=place, prefix=".write-probe-")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise EngineError(
            f"the store path {root} is not writable ({place}: {exc.strerror or exc}): use a writable path"
        ) from None


def writing_needed(root: StoreRoot, kind: str, storage_options: dict[str, Any] | None) -> bool:
    """Whether a job would write to the store at ``root``: it is absent or not complete."""
    if not store_exists(root, storage_options):
        return True
    try:
        store = ChunkStore.open_kind(root, kind, storage_options, read_only=True)
    except EngineError:
        return True  # the open proper reports it
    return not store.completed().all()


# --- games: one store per game under a root group ----------------------------------------------------------------

GAMES = "games"  # the root manifest's kind: a group of games, one store each in game_0000/, game_0001/, ...


def game_name(index: int) -> str:
    """The group of game ``index`` under a games root: ``game_0000``, ``game_0001``, ..."""
    return f"game_{index:04d}"


def game_root(root: str | os.PathLike[str], index: int) -> Path | str:
    """The store of game ``index`` under the games root ``root`` (a path or an fsspec URL)."""
    if is_url(root):
        return f"{root.rstrip('/')}/{game_name(index)}"
    return Path(root) / game_name(index)


def _games_refusal(root: StoreRoot, manifest: Mapping[str, Any]) -> str:
    n = manifest.get("num_envs")
    first = game_root(root, 0) if not is_memory(root) else game_name(0)
    return (
        f"{root} holds {n} games, one {manifest.get('store', '')} store each ({first}, ...): open one game's store "
        f"(or, in a job, set rollout.num_envs={n})"
    )


def games_manifest(
    store: str, env_id: str, seed: int, num_envs: int, identity: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The root manifest of ``num_envs`` games of ``store`` kind ("rollout" or "saliency"): game ``i`` (group
    :func:`game_name`) seeded ``seed + i``. ``identity`` adds what else must match for a job to reuse the root."""
    return cast(
        "dict[str, Any]",
        _jsonable(
            dict(
                kind=GAMES,
                format=FORMAT,
                store=store,
                env_id=env_id,
                num_envs=num_envs,
                seeds=[seed + i for i in range(num_envs)],
                games=[game_name(i) for i in range(num_envs)],
                identity=dict(identity or {}),
            )
        ),
    )


def root_manifest(root: StoreRoot, storage_options: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """The manifest of the group at ``root`` (a games root's or a store's), None where there is no group or no
    manifest. Reads the group's ``zarr.json`` only."""
    if is_memory(root) or not store_exists(root, storage_options):
        return None
    with _object_storage(root):
        group = zarr.open_group(_open_keys(root, storage_options, True), mode="r", use_consolidated=False)
        manifest = group.attrs.get(MANIFEST)
    return cast("dict[str, Any]", manifest) if isinstance(manifest, dict) else None


def open_games(
    root: str | os.PathLike[str], manifest: Mapping[str, Any], storage_options: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The games root at ``root`` with ``manifest`` (:func:`games_manifest`): created (atomically on a local path:
    built beside it and renamed, like a store) where absent, else checked against it (:class:`StoreMismatchError`
    naming the difference). The root group has no consolidated metadata, so readers list its games:
    ``xarray.open_datatree(root, engine="zarr")`` opens every game as a node."""
    root = cast("Path | str", store_root(root))
    wanted: dict[str, Any] = _jsonable(dict(manifest))
    with _object_storage(root):
        if not store_exists(root, storage_options):
            _refuse_foreign(root, storage_options)
            try:
                _create_games(root, wanted, storage_options)
            except OSError as exc:
                raise EngineError(f"cannot create the games root {root}: {exc.strerror or exc}") from exc
    found = root_manifest(root, storage_options)
    if found is None or found.get("kind") != GAMES:
        kind = (found or {}).get("kind", "no engine")
        raise StoreMismatchError(f"{root} is a {kind} store of one game, not a group of games: use another directory")
    if found != wanted:
        raise StoreMismatchError(
            f"the games root {root} was written with other settings ({_difference(found, wanted)}): refusing to mix "
            "them; use another directory, or delete this one to start over"
        )
    return found


def _create_games(root: Path | str, manifest: Mapping[str, Any], storage_options: dict[str, Any] | None) -> None:
    if is_url(root):  # one PUT of zarr.json: nothing to hide
        zarr.create_group(_open_keys(root, storage_options, False), zarr_format=3, attributes={MANIFEST: manifest})
        return
    root = Path(root)
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=root.parent, prefix=f".{root.name}.creating-{uuid.uuid4().hex[:8]}-"))
    try:
        os.chmod(tmp, 0o777 & ~_umask())
        zarr.create_group(_Keys(LocalStore(tmp), tmp), zarr_format=3, attributes={MANIFEST: manifest})
        try:
            os.rename(tmp, root)  # atomic; replaces only an absent or empty directory
        except OSError as exc:
            if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


# --- rollouts ------------------------------------------------------------------------------------------------------


@dataclass
class RolloutStore:
    """A recorded rollout on disk; :meth:`read` gives the same :class:`Rollout` an in-memory rollout gives."""

    store: ChunkStore

    @classmethod
    def open(cls, root: StoreRoot, storage_options: dict[str, Any] | None = None) -> RolloutStore:
        return cls(ChunkStore.open_kind(root, "rollout", storage_options))

    @property
    def identity(self) -> dict[str, Any]:
        return self.store.identity

    @property
    def num_steps(self) -> int:
        return self.store.length

    @property
    def bounds(self) -> list[tuple[int, int]]:
        return self.store.bounds

    def completed_chunks(self) -> int:
        """How many leading chunks are finished."""
        done = self.store.completed()
        return int(np.argmin(done)) if not done.all() else len(done)

    @property
    def complete(self) -> bool:
        return self.completed_chunks() == len(self.bounds)

    def read(self, start: int = 0, stop: int | None = None) -> Rollout:
        """Steps ``start..stop-1`` as a :class:`Rollout`, loading only the chunks that hold them."""
        stop = self.num_steps if stop is None else stop
        if not 0 <= start < stop <= self.num_steps:
            raise ValueError(f"steps {start}..{stop} are outside the store's 0..{self.num_steps}")
        done = self.store.completed()
        needed = [k for k, (a, b) in enumerate(self.bounds) if a < stop and b > start]
        missing = [k for k in needed if not done[k]]
        if missing:
            raise EngineError(
                f"the rollout store {self.store.root} is incomplete (chunk {missing[0]} missing): resume recording first"
            )
        n_states = len(self.identity["state_shapes"])
        cat = self.store.read_range(start, stop, ROLLOUT_FIELDS + tuple(f"state_{i}" for i in range(n_states)))
        states = tuple(torch.from_numpy(cat[f"state_{i}"]) for i in range(n_states))
        fields = {name: torch.from_numpy(cat[name]) for name in ROLLOUT_FIELDS}
        return Rollout(
            states=states,
            env_id=self.identity["env_id"],
            seed=self.identity["seed"],
            greedy=self.identity["greedy"],
            action_names=tuple(self.identity["action_names"]),
            pipeline=self.identity["pipeline"],
            frames=fields["frames"],
            observations=fields["observations"],
            logits=fields["logits"],
            values=fields["values"],
            actions=fields["actions"],
            rewards=fields["rewards"],
            dones=fields["dones"],
        )


# --- saliency ------------------------------------------------------------------------------------------------------

# settings that do not change a single bit of the maps (tested) and so may differ between resumed runs
RESULT_NEUTRAL = ("perturbations_per_eval", "memory_budget_mb", "frames_per_batch")


def identity_settings(saliency: dict[str, Any]) -> dict[str, Any]:
    """The saliency settings a store's identity records: all but the :data:`RESULT_NEUTRAL` ones, and ``compile``
    and ``precision`` only where they are not the default (they change maps by rounding, so a resumed run must
    use them too; left out at their defaults, a store written before they existed still resumes); ``method`` in its
    canonical form, with the settings of the selected methods only (:func:`engine.core.settings.identity_view`)."""
    defaults = {"compile": False, "precision": "exact"}
    return {
        k: v
        for k, v in identity_view(saliency).items()
        if k not in RESULT_NEUTRAL and not (k in defaults and v == defaults[k])
    }


@dataclass
class SaliencyStore:
    """Maps and score grids of a rollout store, chunk by chunk (``actor``, ``critic``, ``actor_scores``, ...)."""

    store: ChunkStore

    @classmethod
    def open(cls, root: StoreRoot, storage_options: dict[str, Any] | None = None) -> SaliencyStore:
        return cls(ChunkStore.open_kind(root, "saliency", storage_options))

    @property
    def bounds(self) -> list[tuple[int, int]]:
        return self.store.bounds

    def missing(self) -> list[int]:
        return [int(k) for k in np.flatnonzero(~self.store.completed())]

    @property
    def complete(self) -> bool:
        return not self.missing()

    def read(self, start: int = 0, stop: int | None = None) -> dict[str, np.ndarray]:
        """Frames ``start..stop-1`` of every map and score grid (all by default), loading only their chunks; the
        chunks must be complete."""
        stop = self.store.length if stop is None else stop
        needed = {k for k, (a, b) in enumerate(self.bounds) if a < stop and b > start}
        missing = [k for k in self.missing() if k in needed]
        if missing:
            raise EngineError(
                f"the saliency store {self.store.root} lacks chunks {missing[:10]}: run the missing shards"
            )
        return self.store.read_range(start, stop)
