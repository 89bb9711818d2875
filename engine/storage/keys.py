"""Where a store lives, and the keys under it: a store's root (a local path, an fsspec URL or a memory store), what
object storage needs (its fsspec package, credentials) said in one line, and the key-value layer under zarr
(:class:`Keys`: atomic writes of every key on local paths, absent chunks as errors in strict mode, the sha256 of
every chunk's stored bytes as it is read or written). :mod:`engine.storage.store` builds the stores on it."""

from __future__ import annotations

import hashlib
import logging
import os
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self, TypeAlias, TypeGuard, cast

from zarr.abc.store import ByteRequest, Store
from zarr.core.buffer import Buffer, BufferPrototype
from zarr.storage import LocalStore, MemoryStore, WrapperStore

from ..core.errors import EngineError, MissingDependencyError

if TYPE_CHECKING:
    from typing_extensions import TypeIs


# what a store's ``root`` may be: a local path, an fsspec URL, or a memory store (module docstring)
StoreRoot: TypeAlias = str | os.PathLike[str] | MemoryStore
log = logging.getLogger(__name__)


def is_url(root: object) -> TypeGuard[str]:
    """Whether ``root`` names object storage through fsspec (``s3://bucket/path``, ``gs://...``)."""
    return isinstance(root, str) and "://" in root


def is_memory(root: object) -> TypeIs[MemoryStore]:
    """Whether ``root`` is a store in memory (a :class:`zarr.storage.MemoryStore`)."""
    return isinstance(root, MemoryStore)


def is_local(root: StoreRoot) -> TypeGuard[str | os.PathLike[str]]:
    return not (is_url(root) or is_memory(root))


def place(root: StoreRoot) -> str:
    """Where a store lies, for the log: its path or URL, or ``memory`` (a memory store's own name is an object id)."""
    return "memory" if is_memory(root) else str(root)


def store_root(root: StoreRoot) -> Path | str | MemoryStore:
    """``root`` as the stores take it: a local path as a :class:`~pathlib.Path`; a URL or a memory store as it is."""
    if is_url(root) or is_memory(root):
        return root
    return Path(root)


def _outermost_group(path: Path) -> Path:
    """``path``, or the outermost zarr group or store among the folders that hold it (a games job's stores are
    groups of one; a store may also lie in a plain folder inside another): a file beside a store must not lie inside
    another store."""
    outer = path
    for folder in path.parents:
        if (folder / "zarr.json").is_file():
            outer = folder
    return outer


def sidecar_path(root: StoreRoot, suffix: str) -> Path | None:
    """A file of a local store's own (``.<name>.<suffix>``) beside it, or beside the outermost zarr group that
    holds it (named after the store's path inside the group): never inside a store. None for a memory store or
    object storage.

    >>> str(sidecar_path("/data/pong/saliency", "metrics.pt"))
    '/data/pong/.saliency.metrics.pt'
    """
    if not is_local(root):
        return None
    path = Path(root).absolute()
    outer = _outermost_group(path)
    return outer.parent / ".".join(["", outer.name, *path.relative_to(outer).parts, suffix])


# the recording locks this process holds, each with its holder (a second flock of one would wait forever); a holder
# dropped unreleased closes its files, which frees their locks, and its entry with it
_held_here: dict[Path, weakref.ref[RecordingLocks]] = {}


class RecordingLocks:
    """One recorder at a time for each local rollout store: an advisory lock (``flock``) on a file beside each store
    (``.<name>.recording.lock``; beside the group that holds it, for a games job's stores), held from before the
    store is opened until its recording ends. Jobs of a parallel sweep that share ``store.rollout`` would otherwise
    both record the game into it, chunk over chunk; the second waits instead, then finds the store recorded (and
    replays it). The operating system releases a lock whose process dies, so a killed recorder leaves none held.
    Memory stores and object storage take no lock; nor does a system without ``fcntl``, nor a file system that
    refuses the lock file or ``flock`` (a warning says so: concurrent jobs must then not record one store)."""

    def __init__(self, roots: list[StoreRoot]) -> None:
        paths = {_outermost_group(Path(r).absolute()) for r in roots if is_local(r)}
        self.paths = sorted(p.parent / f".{p.name}.recording.lock" for p in paths)  # one order: no deadlock
        self._files: list[Any] = []
        self._held: list[Path] = []

    def acquire(self, waiting: Callable[[Path], None] | None = None) -> None:
        """Take every lock, waiting for each one another process holds (``waiting(store)`` is called first)."""
        try:
            import fcntl
        except ImportError:  # not a POSIX system
            return
        try:
            for path in self.paths:
                store = path.parent / path.name[1 : -len(".recording.lock")]
                holder = _held_here.get(path)
                if holder is not None and holder() is not None:
                    raise EngineError(
                        f"this process is already recording into {store} (a recording opened and not yet run or "
                        "closed): run or close it before recording there again"
                    )
                f = self._lock(fcntl, path, store, waiting)
                if f is None:
                    continue
                self._files.append(f)
                _held_here[path] = weakref.ref(self)
                self._held.append(path)
        except BaseException:
            self.release()
            raise

    @staticmethod
    def _lock(fcntl: Any, path: Path, store: Path, waiting: Callable[[Path], None] | None) -> Any:
        """The lock file ``path``, open and locked; None (with a warning) where the file system refuses either. Its
        holder removes the file while it still holds the lock, so a lock taken on a file that is no longer at
        ``path`` is let go and taken again on the file there now."""
        while True:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                f = open(path, "a")
            except OSError as exc:
                log.warning("no recording lock for %s (%s): concurrent jobs must not record it", store, exc)
                return None
            try:
                try:
                    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    if waiting is not None:
                        waiting(store)
                        waiting = None  # said once, however often the file is replaced
                    fcntl.flock(f, fcntl.LOCK_EX)
            except OSError as exc:  # a file system without flock (some NFS, Lustre or FUSE mounts)
                f.close()
                with suppress(OSError):
                    path.unlink()
                log.warning("no recording lock for %s (%s): concurrent jobs must not record it", store, exc)
                return None
            except BaseException:
                f.close()
                raise
            try:
                if os.stat(path).st_ino == os.fstat(f.fileno()).st_ino:
                    return f
            except FileNotFoundError:
                pass
            f.close()  # the holder before removed it: lock the file at the path now

    def release(self) -> None:
        """Let every lock go, removing its file first (while still held: see :meth:`_lock`)."""
        for path in self._held:
            _held_here.pop(path, None)
            with suppress(OSError):  # kept where it cannot go: a later holder locks it as it is
                path.unlink()
        for f in self._files:
            f.close()  # closing the file releases its lock
        self._files, self._held = [], []


def sha256_digest(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


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
def object_storage(root: StoreRoot, resume: bool = False) -> Iterator[None]:
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


def _is_chunk_key(key: str) -> bool:
    return "/c/" in key


class Keys(WrapperStore[Store]):
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
            raise MissingChunk(key)
        if value is not None and self.seen is not None and byte_range is None and _is_chunk_key(key):
            self.seen[key] = sha256_digest(value.to_bytes())
        return value

    async def set(self, key: str, value: Buffer) -> None:
        if self.written is not None and _is_chunk_key(key):
            self.written[key] = sha256_digest(value.to_bytes())
        if self.local_root is None:  # object storage: one PUT is atomic already
            return await self._store.set(key, value)
        from ..core.files import atomic_write

        self._check_writable()
        with atomic_write(self.local_root / key) as tmp:
            tmp.write_bytes(value.to_bytes())


class MissingChunk(KeyError):
    pass


def open_keys(root: StoreRoot, storage_options: dict[str, Any] | None, read_only: bool) -> Keys:
    if is_url(root):
        from zarr.storage import FsspecStore

        with object_storage(root):
            return Keys(FsspecStore.from_url(root, storage_options=storage_options or {}, read_only=read_only))
    if is_memory(root):  # a view of the same keys: what one view writes, the others read
        return Keys(root.with_read_only(read_only))
    return Keys(LocalStore(Path(root), read_only=read_only), Path(root))


def file_system(root: str, storage_options: dict[str, Any] | None) -> tuple[Any, str]:
    with object_storage(root):
        import fsspec

        # fsspec has no type information here; it returns (file system, path within it)
        return cast("tuple[Any, str]", fsspec.core.url_to_fs(root, **(storage_options or {})))


def store_exists(root: StoreRoot, storage_options: dict[str, Any] | None = None) -> bool:
    """Whether a store (its group's ``zarr.json``) is at ``root`` (a path, an fsspec URL or a memory store)."""
    if is_memory(root):
        return root.get_sync("zarr.json") is not None
    if is_url(root):
        fs, path = file_system(root, storage_options)
        with object_storage(root):
            return bool(fs.exists(f"{path.rstrip('/')}/zarr.json"))
    return (Path(root) / "zarr.json").is_file()
