"""Files: where the engine caches what it fetches or compiles, a file's sha256, and writing a file atomically.

Writing atomically: into a temporary file beside it, renamed over it once complete, so a reader or a
killed writer never sees half a file under the final name, and a failed write leaves an older file as it was.

The temporary files are named ``.<name>.<random><suffix>.partial`` (hidden, and readers of a folder or a store
skip ``.partial`` names); one that a killed process leaves behind is never read. This is the one place in the
engine that writes this way: arrays, checkpoints, movies, figures, report pages, downloads and store keys all use
:func:`atomic_write`. It sits in the core (no torch, no numpy) so every layer can import it.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["CACHE_HOME", "CHECKPOINT_CACHE", "PARTIAL", "atomic_path", "atomic_write", "sha256_of"]

PARTIAL = ".partial"
# the engine's caches, one folder each: checkpoints (engine.policies.registry; the Hub's agents in its huggingface/
# folder, engine.policies.hub) and compiled code (engine.core.compiled)
CACHE_HOME = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "atari-saliency"
CHECKPOINT_CACHE = CACHE_HOME / "checkpoints"


def sha256_of(path: str | os.PathLike[str]) -> str:
    """The hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def atomic_path(target: str | os.PathLike[str], suffix: str = "") -> Path:
    """A fresh temporary path in ``target``'s directory (same file system, so the rename is atomic), with the
    permissions a plain ``open`` would give (mkstemp's are owner-only). The caller renames or removes it;
    :func:`atomic_write` does both."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=suffix + PARTIAL)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    return Path(tmp)


@contextmanager
def atomic_write(target: str | os.PathLike[str], suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside ``target`` to write to; when the block ends normally it is renamed to
    ``target`` (replacing any file there), when the block raises (an error, Ctrl-C) it is removed and ``target`` is
    left as it was. ``suffix`` goes before ``.partial`` for writers that choose a format by extension
    (``.mp4``, ``.png``). The writer may replace the temporary file by its own rename (a download does)."""
    target = Path(target)
    tmp = atomic_path(target, suffix)
    try:
        yield tmp
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def check_writable_directory(path: str | os.PathLike[str], name: str) -> None:
    """Raise :class:`engine.core.errors.EngineError` in one line, before any work, unless ``path`` is or can be made
    a writable directory: not a file, not inside a file, in a place this process may write (probed by creating a
    temporary file in the nearest existing directory). ``name`` says what the path is (``output.dir``)."""
    from .errors import EngineError

    path = Path(path)
    if path.exists() and not path.is_dir():
        raise EngineError(f"{name} {path} is a file, not a directory: use another path")
    place = path
    while not place.exists() and place != place.parent:
        place = place.parent
    if not place.is_dir():
        raise EngineError(f"{name} {path} is inside a file ({place}): use another path")
    try:
        fd, probe = tempfile.mkstemp(dir=place, prefix=".write-probe-")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise EngineError(
            f"{name} {path} is not writable ({place}: {exc.strerror or exc}): use a writable path"
        ) from None
