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

Many games (``rollout.num_envs``) are a root group whose manifest has kind ``games`` (:mod:`engine.storage.games`), with one
store per game in ``<root>/game_0000/``, ``<root>/game_0001/``, ....

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
  version, pipeline, state shapes, action names; for a saliency store, the id of the recording it scored,
  :attr:`RolloutStore.recording`) must match exactly; a difference is named in the error.
- **Integrity.** At open: the manifest's structure, the chunk count and a chunk's bytes (at most
  :data:`~engine.storage.layout.MAX_CHUNKS` and :data:`~engine.storage.layout.MAX_CHUNK_BYTES`), and each array's metadata (shape, chunking, dtype with its byte
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
perturbations, whatever the rollout length; a chunk is at most :data:`~engine.storage.layout.MAX_CHUNK_BYTES`.
"""

from __future__ import annotations

import errno
import functools
import json
import os
import shutil
import tempfile
import threading
import uuid
import warnings
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import numpy.typing as npt
import torch
import zarr
from zarr.abc.store import Store
from zarr.core.buffer import Buffer, default_buffer_prototype
from zarr.core.metadata import ArrayV3Metadata
from zarr.core.sync import sync as zarr_sync
from zarr.storage import LocalStore, MemoryStore

from ..core.batching import chunk_bounds
from ..core.errors import EngineError
from ..core.files import check_writable_directory
from ..core.settings import identity_view
from ..core.version import VERSION
from ..env.rollout import Rollout
from .keys import (
    Keys,
    MissingChunk,
    StoreRoot,
    file_system,
    is_local,
    is_memory,
    is_url,
    object_storage,
    open_keys,
    sha256_digest,
    store_exists,
    store_root,
)
from .layout import (
    CHUNK_AXIS,
    DIGEST,
    FORMAT,
    GAMES,
    MANIFEST,
    MARKER,
    ROLLOUT_FIELDS,
    compressors,
    games_refusal,
    manifest_hash,
    manifest_problem,
    marker_entry,
    memory_problem,
    num_chunks,
    size_problem,
    size_text,
)


class StoreMismatchError(EngineError):
    """An existing store was written with other settings, another checkpoint or another engine version."""


class StoreIntegrityError(EngineError):
    """A store whose contents do not match its manifest: a corrupt, missing, misplaced or misshapen chunk or array,
    an edited or malformed manifest."""


def engine_version() -> str:
    """The engine's version, as a store's identity records it: the package's own (:data:`engine.core.version.VERSION`),
    never the installed distribution's metadata, so a run from a source tree and an installed run agree."""
    return VERSION


def _flat(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def difference(existing: Mapping[str, Any], wanted: Mapping[str, Any]) -> str:
    a, b = _flat(existing), _flat(wanted)

    def value(d: dict[str, Any], k: str) -> Any:
        return d.get(k, IDENTITY_DEFAULTS.get(k))

    keys = sorted(k for k in set(a) | set(b) if value(a, k) != value(b, k))
    return "; ".join(f"{k}: store has {value(a, k)!r}, this job {value(b, k)!r}" for k in keys)


def _metadata_difference(found: Mapping[str, Any], wanted: Mapping[str, Any], source: str) -> str:
    def text(value: object) -> str:
        return json.dumps(value, separators=(",", ":"), default=str)

    keys = [k for k in wanted if found.get(k) != wanted[k]] + [k for k in found if k not in wanted]
    return "; ".join(f"{k}: store has {text(found.get(k))}, {source} {text(wanted.get(k))}" for k in keys)


def jsonable(value: object) -> Any:
    return json.loads(json.dumps(value, default=str))  # as it reads back from the attributes


def _array_spec(entry: Mapping[str, Any], length: int, chunk: int, time_dim: str) -> dict[str, Any]:
    """How the array of a layout entry is made (:func:`_build`), and so what its metadata must say."""
    per_time = entry["per"] == "time"
    dtype = np.dtype(entry["dtype"])
    return dict(
        shape=((length if per_time else num_chunks(length, chunk)), *entry["tail"]),
        chunks=(chunk if per_time else 1, *entry["tail"]),
        dtype=dtype,
        fill_value=False if dtype.kind == "b" else 0,
        compressors=compressors(dtype),
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
        compressors=compressors(dtype),
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
        with object_storage(self.root):
            self._open()

    def _open(self) -> None:
        if not store_exists(self.root, self.storage_options):  # checked first: opening would create the directory
            raise EngineError(f"{self.root} is not a store (no zarr.json): record or score into it first")
        self.keys = open_keys(self.root, self.storage_options, self.read_only)
        try:
            self.group = zarr.open_group(self.keys, mode="r" if self.read_only else "r+", use_consolidated=False)
        except (ValueError, TypeError, KeyError) as exc:  # zarr.json cut short, not JSON, or not zarr's metadata
            raise StoreIntegrityError(
                f"the store {self.root}: its zarr.json cannot be read ({type(exc).__name__}: {exc}): it is damaged; "
                "delete it and run again"
            ) from exc
        manifest = self.group.attrs.get(MANIFEST)
        if isinstance(manifest, dict) and manifest.get("kind") == GAMES:
            raise EngineError(games_refusal(self.root, manifest))
        if not isinstance(manifest, dict) or "identity" not in manifest or "layout" not in manifest:
            raise EngineError(
                f"{self.root} is a zarr group without a store manifest (attribute {MANIFEST!r}): not adopting it; "
                "delete it or use another path"
            )
        _refuse_other_format(self.root, manifest)
        problem = manifest_problem(manifest)
        if problem:
            raise StoreIntegrityError(
                f"the store {self.root} has a malformed manifest ({problem}): it is damaged or not an engine store; "
                "delete it and run again"
            )
        self.manifest: dict[str, Any] = manifest
        problem = size_problem(self.kind, self.layout, self.length, self.chunk)
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
        self.marker = self._checked_array(MARKER, marker_entry(self.layout))
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
        return num_chunks(self.length, self.chunk)

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
        except (ValueError, TypeError) as exc:  # its zarr.json cut short, not JSON, or naming no zarr data type
            raise StoreIntegrityError(
                f"the store {self.root}: {name}/zarr.json cannot be read ({type(exc).__name__}: {exc}): it is "
                "damaged; delete it and run again"
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
        width = marker_entry(self.layout)["tail"][0]
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
        return sha256_digest(digest + name.encode() + b"\0" + k.to_bytes(8, "little") + content)

    def _chunk_key(self, name: str, k: int) -> str:
        tail = self.layout[name]["tail"] if name != MARKER else [0]
        return f"{name}/c/{k}" + "/0" * len(tail)

    def _stored_digest(self, key: str) -> bytes | None:
        value = zarr_sync(self.keys.get(key, default_buffer_prototype()))
        return None if value is None else sha256_digest(value.to_bytes())

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
        shortened: bool = False,
    ) -> ChunkStore:
        """Open the store at ``root`` if its identity equals ``identity`` (else :class:`StoreMismatchError`), or
        create it atomically (module docstring). A store of more than :data:`MAX_CHUNKS` chunks, of chunks over
        :data:`MAX_CHUNK_BYTES`, or (in memory) over the memory available is refused before anything is written.
        ``shortened``: a memory store may hold fewer than ``length`` steps, where :meth:`truncate` ended it (a
        recording that stopped after ``max_episodes``)."""
        manifest: dict[str, Any] = jsonable(
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
        problem = manifest_problem(manifest)
        if problem:
            raise EngineError(f"cannot make the store {root}: its manifest would be malformed ({problem})")
        kind = manifest["kind"]
        problem = size_problem(kind, manifest["layout"], length, chunk) or (
            memory_problem(kind, manifest["layout"], length, chunk) if is_memory(root) else None
        )
        if problem:
            raise EngineError(f"the {kind} store {root}: {problem}")
        with object_storage(root):
            if not store_exists(root, storage_options):
                refuse_foreign(root, storage_options)
                try:
                    _create(root, manifest, storage_options)
                except OSError as exc:
                    raise EngineError(f"cannot create the store {root}: {exc.strerror or exc}") from exc
        store = cls(root, storage_options)
        if store.identity != manifest["identity"]:
            recorded_by = store.manifest.get("extra", {}).get("checkpoint")
            by = (  # a bare sha256 says little: the store names the file it was written with
                f"; the store's was written with {recorded_by}"
                if recorded_by
                and store.identity.get("checkpoint_sha256") != manifest["identity"].get("checkpoint_sha256")
                else ""
            )
            raise StoreMismatchError(
                f"the store {root} was written with other settings ({difference(store.identity, manifest['identity'])}"
                f"{by}): refusing to mix them; use another directory, or delete this one to start over"
            )
        length_fits = store.length == length or (shortened and is_memory(root) and store.length < length)
        if (store.layout, store.chunk) != (manifest["layout"], manifest["chunk"]) or not length_fits:
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
        for name, entry in {**self.layout, MARKER: marker_entry(self.layout)}.items():
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
    def completed(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """(stop - start,) bool: which logical chunks ``start..stop-1`` (all by default) are marked complete under
        this store's manifest (reading their markers only)."""
        with self._lock:
            return self._ours(self._marker_rows(start, self.num_chunks if stop is None else stop))

    def markers(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """The markers of chunks ``start..stop-1`` (all by default) as ``(n, width)`` uint8 rows, as stored: each
        binds every array's stored bytes of its chunk to the chunk's place and this store's manifest, so a row is
        the same only while its chunk holds the same bytes in a store of the same identity (zeros: not complete)."""
        with self._lock:
            return self._marker_rows(start, self.num_chunks if stop is None else stop)

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
            with object_storage(self.root, resume=True):
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
        free = f" ({size_text(shutil.disk_usage(self.root).free)} free)" if is_local(self.root) else ""
        return (
            f"the disk holding the store {self.root} is full{free}: chunk {index} was not written; the {done} "
            f"complete chunk(s) are kept. Free up to {size_text(left)} (the {self.num_chunks - done} missing chunks, "
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
            return range(max(start, 0) // self.chunk, min(num_chunks(stop, self.chunk), self.num_chunks))
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
                    reason = f"its key {exc.args[0]!r} is missing" if isinstance(exc, MissingChunk) else str(exc)
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
        width = marker_entry(self.layout)["tail"][0]
        try:
            if self.read_only:
                keys = open_keys(self.root, self.storage_options, read_only=False)
                marker = zarr.open_array(keys, path=MARKER, mode="r+", zarr_format=3)
            else:
                marker = self.marker
            marker[index] = np.zeros(width, dtype=np.uint8)
            return True
        except Exception:
            return False


def _refuse_old_format(root: StoreRoot, storage_options: dict[str, Any] | None) -> None:
    if is_local(root) and (Path(root) / "manifest.json").is_file():
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


def refuse_foreign(root: StoreRoot, storage_options: dict[str, Any] | None) -> None:
    """A path that holds something but no store is never adopted."""
    _refuse_old_format(root, storage_options)
    if is_memory(root):
        if not zarr_sync(root.is_empty("")):
            raise EngineError(
                f"{root} holds keys but no store manifest (zarr.json): not adopting them; use an empty memory store"
            )
        return
    if is_url(root):
        fs, path = file_system(root, storage_options)
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
    entries[MARKER] = marker_entry(manifest["layout"])
    for name, entry in entries.items():
        group.create_array(name, **_array_spec(entry, length, chunk, time_dim))
    _consolidate(keys)


def _consolidate(keys: Store) -> None:
    with warnings.catch_warnings():  # "consolidated metadata is not part of the v3 spec": xarray reads it
        warnings.simplefilter("ignore")
        zarr.consolidate_metadata(keys)


def _create(root: StoreRoot, manifest: Mapping[str, Any], storage_options: dict[str, Any] | None) -> None:
    if is_memory(root):  # built in place: a memory store has one process and no half-written state to hide
        _build(Keys(root), manifest)
        return
    if is_url(root):
        # no atomic rename on object storage: built in memory, then uploaded with the group's zarr.json (the
        # manifest) last, so a store whose manifest is visible has all its arrays. Two creators can still both
        # upload (each PUT wins alone): the identity check after creation catches most, not all, such races.
        keys: dict[str, Buffer] = {}
        _build(zarr.storage.MemoryStore(store_dict=keys), manifest)
        fs, path = file_system(root, storage_options)
        path = path.rstrip("/")
        fs.pipe({f"{path}/{k}": v.to_bytes() for k, v in keys.items() if k != "zarr.json"})
        fs.pipe_file(f"{path}/zarr.json", keys["zarr.json"].to_bytes())
        fs.invalidate_cache()
        return
    create_atomically(Path(root), lambda keys: _build(keys, manifest))


def create_atomically(root: Path, build: Callable[[Keys], object]) -> None:
    """A group at the local path ``root``, ``build`` (given the keys of an empty directory) writing it: built in a
    temporary directory beside ``root`` and renamed into place, atomically, where ``root`` is absent or empty. Of two
    creators exactly one wins; the other returns, and its caller opens the winner's group and compares."""
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=root.parent, prefix=f".{root.name}.creating-{uuid.uuid4().hex[:8]}-"))
    try:
        os.chmod(tmp, 0o777 & ~_umask())
        build(Keys(LocalStore(tmp), tmp))
        try:
            os.rename(tmp, root)  # atomic; replaces only an absent or empty directory
        except OSError as exc:
            if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def check_writable(root: StoreRoot, storage_options: dict[str, Any] | None = None) -> None:
    """Fail with one line, before any work, if ``root`` cannot hold a store that this job writes to: a file,
    something inside a file, or a read-only place. Local paths are probed by writing a temporary file."""
    if is_memory(root):
        if root.read_only:
            raise EngineError(f"the store {root} is a read-only memory store: pass a writable one")
        return
    if is_url(root):
        return  # object storage: credentials and permissions show at the first write
    check_writable_directory(root, "the store path")


def writing_needed(root: StoreRoot, kind: str, storage_options: dict[str, Any] | None) -> bool:
    """Whether a job would write to the store at ``root``: it is absent or not complete."""
    if not store_exists(root, storage_options):
        return True
    try:
        store = ChunkStore.open_kind(root, kind, storage_options, read_only=True)
    except EngineError:
        return True  # the open proper reports it
    return not store.completed().all()


RECORDING = "recording"  # the key of a rollout store's manifest ``extra`` that holds its recording id


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

    @classmethod
    def open_or_create(
        cls,
        root: StoreRoot,
        identity: dict[str, Any],
        layout: Mapping[str, Mapping[str, Any]],
        length: int,
        chunk: int,
        extra: Mapping[str, Any] | None = None,
        storage_options: dict[str, Any] | None = None,
        shortened: bool = False,
    ) -> RolloutStore:
        """:meth:`ChunkStore.open_or_create` for a recording: a store made here gets a fresh recording id in its
        manifest's ``extra`` (one that exists keeps the id it was made with)."""
        extra = {**(extra or {}), RECORDING: uuid.uuid4().hex}
        return cls(ChunkStore.open_or_create(root, identity, layout, length, chunk, extra, storage_options, shortened))

    @property
    def recording(self) -> str | None:
        """The id this recording was given when its store was made (None in stores made before there were ids): a
        saliency store records it, so one scored from a recording that was deleted and made again is refused."""
        value = self.store.manifest["extra"].get(RECORDING)
        return value if isinstance(value, str) else None

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
        needed = [k for k, (a, b) in enumerate(self.bounds) if a < stop and b > start]
        done = self.store.completed(needed[0], needed[-1] + 1)  # the markers of these chunks only
        missing = [k for k, held in zip(needed, done) if not held]
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


# settings that do not change a single bit of the maps (tested) and so may differ between resumed runs
RESULT_NEUTRAL = ("perturbations_per_eval", "memory_budget_mb", "frames_per_batch")
# settings a saliency store's identity records only where they are not these defaults (identity_settings), and
# the same by their place in an identity, where a refusal names the value left out
SALIENCY_IDENTITY_DEFAULTS = {"compile": False, "precision": "exact"}
IDENTITY_DEFAULTS = {f"saliency.{k}": v for k, v in SALIENCY_IDENTITY_DEFAULTS.items()}


def identity_settings(saliency: dict[str, Any]) -> dict[str, Any]:
    """The saliency settings a store's identity records: all but the :data:`RESULT_NEUTRAL` ones, and ``compile``
    and ``precision`` only where they are not the default (they change maps by rounding, so a resumed run must
    use them too; left out at their defaults, a store written before they existed still resumes); ``method`` in its
    canonical form, with the settings of the selected methods only (:func:`engine.core.settings.identity_view`)."""
    defaults = SALIENCY_IDENTITY_DEFAULTS
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
        needed = [k for k, (a, b) in enumerate(self.bounds) if a < stop and b > start]
        done = self.store.completed(needed[0], needed[-1] + 1) if needed else np.ones(0, dtype=bool)
        missing = [k for k, held in zip(needed, done) if not held]
        if missing:
            raise EngineError(
                f"the saliency store {self.store.root} lacks chunks {missing[:10]}: run the missing shards"
            )
        return self.store.read_range(start, stop)
