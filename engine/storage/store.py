"""Stores for long rollouts and their saliency: one zarr (v3) group per store, on disk, on object storage or in
memory.

A store's ``root`` is a local path, an fsspec URL (``s3://bucket/path``) or a :class:`zarr.storage.MemoryStore`
object (the stores of the in-memory main job: they live as long as that object, in this process only, and need
no clean-up; an object rather than a ``memory://`` URL, whose fsspec file system is global to the process and
keeps what is written there until deleted).

Layout (``xarray.open_zarr(root)`` opens either kind as one Dataset with named dimensions)::

    <root>/zarr.json            group; attribute "manifest" = {kind, format, identity, layout, extra}
    <root>/<array>/zarr.json    one array per field, chunked along time only
    <root>/<array>/c/<k>/0/...  chunk k of that array: zstd (Blosc+zstd for floats) and a crc32c checksum
    <root>/complete/c/<k>       the marker of logical chunk k, written after all of k's arrays

A rollout store holds ``frames`` (step, frame_y, frame_x, frame_rgb) uint8, ``observations`` (step, obs_channel,
obs_y, obs_x) uint8, ``logits`` (step, action), ``values``, ``actions``, ``rewards``, ``dones`` (step,), the agent's
state tuple as ``state_0`` .. ``state_{n-1}`` (step, state_i_axis_1, ...) (none for a feed-forward agent), and
per chunk ``sampler_state`` (chunk, sampler_byte) and ``complete`` (chunk,). A saliency store holds the maps
(frame, map_y, map_x) and score grids (frame, grid_y, grid_x) of its method, e.g. ``actor``, ``critic``,
``actor_scores``, ``critic_scores``, ``jacobian_actor``, and ``complete`` (chunk,).

Guarantees (local paths; see README for object storage):

- **Atomic chunks.** Every key is written to a temporary file and renamed; a logical chunk counts only once its
  ``complete`` marker is there, and the marker is written after all of the chunk's arrays. A job killed at any
  point is resumed at the first missing chunk and ends with the arrays of an uninterrupted run.
- **One manifest, written once.** The group (manifest and every array's metadata) is built in a temporary
  directory beside ``root`` and renamed into place, so of two concurrent creators exactly one wins and the other
  compares its identity with the winner's. Shard writers never rewrite it. A directory that is not empty but has
  no manifest is never adopted.
- **Refusal to mix.** The manifest's identity (environment, seed, checkpoint sha256, settings, chunk sizes, engine
  version, pipeline, state shapes, action names) must match exactly; a difference is named in the error.
- **Integrity.** Each array's shape, chunking and dtype are checked against the manifest when the store is opened;
  a chunk that fails its checksum, decodes to the wrong size or is absent under a set marker raises
  :class:`StoreIntegrityError` naming the array and chunk, and its marker is cleared so the next run recomputes it.
- Opening a store deletes nothing: another writer's in-progress chunk stays as it is. A killed writer's
  temporary files (``.<key>.*.partial``) stay too; no reader looks at them (delete them when no job writes).

A memory store has one process and nothing to race: it is built in place, and it alone may be cut short after its
creation (:meth:`ChunkStore.truncate`, a recording that ends with ``max_episodes``).

Memory: recording holds one chunk of steps; scoring holds one chunk of frames, its maps and one batch of
perturbations, whatever the rollout length.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
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
from zarr.core.buffer import Buffer, BufferPrototype
from zarr.core.sync import sync as zarr_sync
from zarr.storage import LocalStore, MemoryStore, WrapperStore

from ..core.batching import chunk_bounds
from ..core.errors import EngineError
from ..core.masks import grid_shape
from ..core.policy import Policy
from ..core.saliency import SaliencyConfig
from ..env.rollout import Rollout

if TYPE_CHECKING:
    from typing_extensions import TypeIs

FORMAT = 3  # 3: zarr v3 groups (2: chunked .npz files with manifest.json)
ROLLOUT_FIELDS = ("frames", "observations", "logits", "values", "actions", "rewards", "dones")
MARKER = "complete"
MANIFEST = "manifest"
CHUNK_AXIS = "chunk"

# what a store's ``root`` may be: a local path, an fsspec URL, or a memory store (module docstring)
StoreRoot: TypeAlias = str | os.PathLike[str] | MemoryStore


class StoreMismatchError(EngineError):
    """An existing store was written with other settings, another checkpoint or another engine version."""


class StoreIntegrityError(EngineError):
    """A store whose contents do not match its manifest: a corrupt, missing or misshapen chunk or array."""


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


# --- the key-value layer under zarr ------------------------------------------------------------------------------


class _Keys(WrapperStore[Store]):
    """The zarr store under a store. On local paths every key is written to a temporary file beside it and renamed
    (so a reader or a killed writer never sees half a key, whatever zarr version). In strict mode an absent chunk
    key is an error instead of zarr's silent fill value: under a set marker every chunk key must be there.
    ``reads`` (when a list) records every key read (tests use it to see that a slice loads only its chunks)."""

    def __init__(self, store: Store, local_root: Path | None = None) -> None:
        super().__init__(store)
        self.local_root = local_root
        self.strict = False
        self.reads: list[str] | None = None

    def _with_store(self, store: Store) -> Self:
        return type(self)(store, self.local_root)

    async def get(self, key: str, prototype: BufferPrototype, byte_range: ByteRequest | None = None) -> Buffer | None:
        if self.reads is not None:
            self.reads.append(key)
        value = await self._store.get(key, prototype, byte_range)
        if value is None and self.strict and "/c/" in key:
            raise _MissingChunk(key)
        return value

    async def set(self, key: str, value: Buffer) -> None:
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

        return _Keys(FsspecStore.from_url(root, storage_options=storage_options or {}, read_only=read_only))
    if is_memory(root):  # a view of the same keys: what one view writes, the others read
        return _Keys(root.with_read_only(read_only))
    return _Keys(LocalStore(Path(root), read_only=read_only), Path(root))


def _fs(root: str, storage_options: dict[str, Any] | None) -> tuple[Any, str]:
    import fsspec

    # fsspec has no type information here; it returns (file system, path within it)
    return cast("tuple[Any, str]", fsspec.core.url_to_fs(root, **(storage_options or {})))


def store_exists(root: StoreRoot, storage_options: dict[str, Any] | None = None) -> bool:
    """Whether a store (its group's ``zarr.json``) is at ``root`` (a path, an fsspec URL or a memory store)."""
    if is_memory(root):
        return root.get_sync("zarr.json") is not None
    if is_url(root):
        fs, path = _fs(root, storage_options)
        return bool(fs.exists(f"{path.rstrip('/')}/zarr.json"))
    return (Path(root) / "zarr.json").is_file()


# --- layout: which arrays a store holds, with their shapes, dtypes and dimension names ----------------------------


def _entry(tail: Iterable[int], dtype: npt.DTypeLike, dims: Iterable[str], per: str = "time") -> dict[str, Any]:
    return {"tail": [int(n) for n in tail], "dtype": np.dtype(dtype).str, "dims": list(dims), "per": per}


def _marker_entry() -> dict[str, Any]:
    return _entry([], np.bool_, (), per="chunk")


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
    """The arrays of a saliency store for ``saliency.method``: maps (H, W) of the observation, score grids."""
    size = cast("tuple[int, int]", tuple(agent.observation_shape[1:]))  # (H, W) of a (C, H, W) observation
    dtype = _torch_dtype_str(agent.dtype)
    layout: dict[str, dict[str, Any]] = {}
    if saliency.method in ("perturbation", "both"):
        for key in ("actor", "critic"):
            layout[key] = _entry(size, dtype, ("map_y", "map_x"))
        for key in ("actor_scores", "critic_scores"):
            layout[key] = _entry(grid_shape(saliency.density, size), dtype, ("grid_y", "grid_x"))
    if saliency.method in ("jacobian", "both"):
        prefix = "" if saliency.method == "jacobian" else "jacobian_"
        for key in ("actor", "critic"):
            layout[prefix + key] = _entry(size, dtype, ("map_y", "map_x"))
    return layout


def _compressors(dtype: np.dtype[Any]) -> tuple[BloscCodec | ZstdCodec, Crc32cCodec]:
    # floats compress far better byte-shuffled (Blosc); bytes and booleans (frames, observations) with plain zstd.
    # crc32c last: it checksums the stored bytes of every chunk.
    if dtype.kind == "f":
        return (BloscCodec(cname="zstd", clevel=3, shuffle="shuffle", typesize=dtype.itemsize), Crc32cCodec())
    return (ZstdCodec(level=3), Crc32cCodec())


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


def _jsonable(value: object) -> Any:
    return json.loads(json.dumps(value, default=str))  # as it reads back from the attributes


class ChunkStore:
    """One zarr group of arrays chunked along time, with a manifest and per-chunk markers (module docstring).

    ``root`` is a local path, an fsspec URL (``s3://bucket/path``; ``storage_options`` as fsspec takes them) or a
    :class:`zarr.storage.MemoryStore` (module docstring).
    """

    def __init__(self, root: StoreRoot, storage_options: dict[str, Any] | None = None, read_only: bool = False) -> None:
        self.root, self.storage_options, self.read_only = store_root(root), storage_options, read_only
        if not store_exists(self.root, storage_options):  # checked first: opening would create the directory
            raise EngineError(f"{self.root} is not a store (no zarr.json): record or score into it first")
        self.keys = _open_keys(self.root, storage_options, read_only)
        self.group = zarr.open_group(self.keys, mode="r" if read_only else "r+", use_consolidated=False)
        manifest = self.group.attrs.get(MANIFEST)
        if not isinstance(manifest, dict) or "identity" not in manifest or "layout" not in manifest:
            raise EngineError(
                f"{self.root} is a zarr group without a store manifest (attribute {MANIFEST!r}): not adopting it; "
                "delete it or use another path"
            )
        self.manifest: dict[str, Any] = manifest
        self._open_arrays()

    def _open_arrays(self) -> None:
        self.arrays: dict[str, zarr.Array[Any]] = {
            name: self._checked_array(name, entry) for name, entry in self.layout.items()
        }
        self.marker = self._checked_array(MARKER, _marker_entry())

    # manifest ---------------------------------------------------------------------------------------------
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
    def bounds(self) -> list[tuple[int, int]]:
        return chunk_bounds(self.length, self.chunk)

    def _expected(self, entry: Mapping[str, Any]) -> tuple[tuple[int, ...], tuple[int, ...]]:
        lead, step = (self.length, self.chunk) if entry["per"] == "time" else (len(self.bounds), 1)
        return (lead, *entry["tail"]), (step, *entry["tail"])

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
        shape, chunks = self._expected(entry)
        found = (tuple(array.shape), tuple(array.chunks), np.dtype(array.dtype).str)
        if found != (shape, chunks, np.dtype(entry["dtype"]).str):
            raise StoreIntegrityError(
                f"the store {self.root}: array {name!r} has shape {found[0]}, chunks {found[1]}, dtype {found[2]}, but its "
                f"manifest says shape {shape}, chunks {chunks}, dtype {entry['dtype']}: it is damaged; delete it and run again"
            )
        return array.with_config({"write_empty_chunks": True})  # every chunk stored, so an absent key is an error

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
        create it atomically (module docstring)."""
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
        store elsewhere writes once (another process may hold it already)."""
        if not is_memory(self.root):
            raise EngineError(f"the store {self.root} has its length in its manifest: only a memory store is truncated")
        if not 1 <= length <= self.length:
            raise ValueError(f"cannot truncate the store {self.root} of {self.length} steps to {length}")
        self.manifest = {**self.manifest, "length": int(length)}
        for name, entry in {**self.layout, MARKER: _marker_entry()}.items():
            self._array(name).resize(self._expected(entry)[0])
        self.group.attrs[MANIFEST] = self.manifest
        _consolidate(self.keys)
        self._open_arrays()

    @classmethod
    def open_kind(
        cls, root: StoreRoot, kind: str, storage_options: dict[str, Any] | None = None, read_only: bool = False
    ) -> ChunkStore:
        """Open an existing store and check that it holds ``kind`` ("rollout" or "saliency")."""
        _refuse_old_format(store_root(root), storage_options)
        store = cls(root, storage_options, read_only=read_only)
        if store.identity.get("kind") != kind:
            raise EngineError(f"{root} is a {store.identity.get('kind')} store, not a {kind} store")
        return store

    # chunks -------------------------------------------------------------------------------------------------
    def completed(self) -> np.ndarray:
        """(num_chunks,) bool: which logical chunks are marked complete."""
        try:
            return np.asarray(self.marker[:], dtype=bool)
        except Exception:  # a damaged marker counts as missing: read them one by one
            done = np.zeros(len(self.bounds), dtype=bool)
            for k in range(len(done)):
                try:
                    done[k] = bool(self.marker[k])
                except Exception:
                    done[k] = False
            return done

    def has(self, index: int) -> bool:
        try:
            return bool(self.marker[index])
        except Exception:
            return False

    def write(self, index: int, arrays: Mapping[str, npt.ArrayLike | torch.Tensor]) -> None:
        """Write logical chunk ``index``: every array of the layout (``(b - a, ...)`` per time step, one row per
        chunk), then its marker."""
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
        for name, value in data.items():
            if self.layout[name]["per"] == "time":
                self.arrays[name][a:b] = value
            else:
                self.arrays[name][index : index + 1] = value
        self.marker[index] = True

    def read(self, index: int, keys: tuple[str, ...] | None = None) -> dict[str, np.ndarray]:
        """Logical chunk ``index``: per-step arrays ``(b - a, ...)``; per-chunk ones as their row ``(...)``."""
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
        names = keys or tuple(k for k, e in self.layout.items() if e["per"] == "time")
        return {name: self._read(name, start, stop) for name in names}

    @contextmanager
    def _strict(self) -> Iterator[None]:
        self.keys.strict = True
        try:
            yield
        finally:
            self.keys.strict = False

    def _read(self, name: str, start: int, stop: int) -> np.ndarray:
        array = self.arrays[name]
        try:
            with self._strict():
                # zarr types a selection as any array-like or scalar: a slice of these arrays reads as an ndarray
                return cast("np.ndarray", array[start:stop])
        except Exception as first:
            # find which chunk failed (zarr's error does not say), unmark it so the next run recomputes it
            per_time = self.layout[name]["per"] == "time"
            chunks = [
                k for k, (a, b) in enumerate(self.bounds) if (a < stop and b > start if per_time else start <= k < stop)
            ]
            for k in chunks:
                a, b = self.bounds[k] if per_time else (k, k + 1)
                try:
                    with self._strict():
                        array[a:b]
                except Exception as exc:
                    reason = f"its key {exc.args[0]!r} is missing" if isinstance(exc, _MissingChunk) else str(exc)
                    cleared = self._unmark(k)
                    steps = f"steps {self.bounds[k][0]}..{self.bounds[k][1] - 1}"
                    raise StoreIntegrityError(
                        f"the store {self.root}: chunk {k} ({steps}) of {name!r} is damaged ({reason}); "
                        + (
                            "it is marked incomplete and will be recomputed by the next run"
                            if cleared
                            else "it could not be marked incomplete (read-only store): delete the store and run again"
                        )
                    ) from exc
            raise first

    def _unmark(self, index: int) -> bool:
        try:
            marker = self.marker if not self.read_only else ChunkStore(self.root, self.storage_options).marker
            marker[index] = False
            return True
        except Exception:
            return False


def _refuse_old_format(root: StoreRoot, storage_options: dict[str, Any] | None) -> None:
    if _is_local(root) and (Path(root) / "manifest.json").is_file():
        raise EngineError(
            f"{root} is a store of an older engine (format 2: .npz chunks and manifest.json): delete it or use "
            "another path; this engine writes zarr stores"
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
    num_chunks = len(chunk_bounds(length, chunk))
    time_dim = "step" if manifest["kind"] == "rollout" else "frame"
    entries = dict(manifest["layout"])
    entries[MARKER] = _marker_entry()
    for name, entry in entries.items():
        per_time = entry["per"] == "time"
        dtype = np.dtype(entry["dtype"])
        group.create_array(
            name,
            shape=((length if per_time else num_chunks), *entry["tail"]),
            chunks=((chunk if per_time else 1), *entry["tail"]),
            dtype=dtype,
            fill_value=False if dtype.kind == "b" else 0,
            compressors=_compressors(dtype),
            dimension_names=((time_dim if per_time else CHUNK_AXIS), *entry["dims"]),
        )
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
