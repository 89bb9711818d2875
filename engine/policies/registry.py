"""Checkpoints by path or by short name (``baby-a3c/pong``, ``builtin/pong``), resolved locally, from a cache,
or downloaded.

``builtin/<game>`` names the project's own LSTM agents, shipped inside the package (``engine/agents/<game>/``,
written by ``python -m engine.training`` and copied there): ``builtin/pong`` is the most trained one,
``builtin/pong@<frames>`` an earlier checkpoint of the same run, for sweeps over training. They never download.

A built-in name is ``builtin/<game>`` or ``builtin/<game>@<frames>`` with ``<game>`` of ``[a-z0-9_]`` and
``<frames>`` of digits, nothing else; the file it names must resolve (symbolic links followed) to a
``step_<frames>.pt`` directly inside ``engine/agents/<game>/``, so no name reaches outside the package.

Resolution order for a baby-a3c name: each local directory (config ``agent.checkpoint_dirs`` and the
``ATARI_SALIENCY_CHECKPOINTS`` environment variable, a ``:``-separated list), then the download cache, then a
download from the public address. Wherever the file comes from, its sha256 must be the registry's: a local or
cached file that differs is reported (file, expected and found hash) and never used.

``hf://<owner>/<name>[@<revision>]`` names an RL Zoo agent on the Hugging Face Hub: :mod:`engine.policies.hub`
fetches it into ``<cache>/huggingface`` (the cache below, or ``agent.cache_dir``) with each file's sha256 recorded
and checked on every later load, and resolves to its model zip (offline: the cached copy; never without
``huggingface_hub``, the ``hub`` extra).

The game a checkpoint was trained on is known for registry names (the entry's ``env_id``), a registry checkpoint
given by its path (its sha256 is the entry's), built-in agents (their metadata's ``game``) and a user's file with
the training's metadata beside it (``<file>.json``, as
``python -m engine.training`` writes it): :func:`trained_game`. Games compare by their ALE name (:func:`ale_game`:
``Pong-v4``, ``PongNoFrameskip-v4`` and ``ALE/Pong-v5`` are all Pong).
"""

from __future__ import annotations

import functools
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

from ..core.errors import CheckpointError, EngineError
from ..core.files import CHECKPOINT_CACHE, atomic_write, sha256_of
from .checkpoint import parse_json
from .hub import fetch_hub_agent, hub_env_id

log = logging.getLogger(__name__)

ENV_VAR = "ATARI_SALIENCY_CHECKPOINTS"
_BABY_A3C_URL = (
    "https://github.com/greydanus/baby-a3c/raw/7f9734b96f5f89c27ddf87a642886d9a90883a35/{game}-v4/model.{frames}.tar"
)


@dataclass(frozen=True)
class KnownCheckpoint:
    name: str
    relative_path: str  # inside a checkpoint directory
    url: str
    sha256: str
    env_id: str


def _baby(game: str, frames: int, sha256: str, env_id: str) -> KnownCheckpoint:
    return KnownCheckpoint(
        name=f"baby-a3c/{game}@{frames}",
        relative_path=f"baby-a3c/{game}-v4/model.{frames}.tar",
        url=_BABY_A3C_URL.format(game=game, frames=frames),
        sha256=sha256,
        env_id=env_id,
    )


KNOWN = {
    c.name: c
    for c in (
        _baby("pong", 40, "7d9f2bfece0c1a16734bb42f920db65a09362cb53403985f927a9b1b2096a495", "Pong-v4"),
        _baby("pong", 80, "070942837671289755da61918afa47eef4cc24c60bc18e6cf03cfc07e4255bbd", "Pong-v4"),
        _baby("breakout", 40, "e82d5bc0d87d8e0da3772549b75efa6d486e7b47b8f7a914f0eabfb9441159b0", "Breakout-v4"),
        _baby("breakout", 80, "af6c793df878de5021e95af93028e11107b9840b7c92d81f770574af32f4df77", "Breakout-v4"),
        _baby(
            "spaceinvaders", 40, "01bd5946f34f51a9c8e285f89262c7d5cb53c29c373afec1fc4645750a3f7ea8", "SpaceInvaders-v4"
        ),
        _baby(
            "spaceinvaders", 80, "72ec71ee5aaf555ee5ed25ec54e2d3778393a47e7164d3211fee55dd4a7de33b", "SpaceInvaders-v4"
        ),
    )
}
# short names without "@frames" mean the published 40M-frame agent (Pong's best: 18.2 mean reward)
ALIASES = {name.split("@")[0]: name for name in KNOWN if name.endswith("@40")}


BUILTIN_PREFIX = "builtin/"
HF_PREFIX = "hf://"  # engine.policies.hub
BUILTIN_DIR = Path(__file__).resolve().parents[1] / "agents"


_GAME = re.compile(r"[a-z0-9_]+")
_BUILTIN_NAME = re.compile(r"(?P<game>[a-z0-9_]+)(?:@(?P<frames>[0-9]+))?")
_STEP_FILE = re.compile(r"step_(?P<frames>[0-9]+)\.pt")


def _game_folder(game: str, root: Path | None = None) -> Path:
    """``<root>/<game>``, resolved; ``game`` must be ``[a-z0-9_]+`` and the folder must lie directly in root."""
    base = (root or BUILTIN_DIR).resolve()
    if not _GAME.fullmatch(game):
        raise CheckpointError(f"{game!r} is not a built-in game name: use lowercase letters, digits and _ only")
    folder = (base / game).resolve()
    if folder.parent != base:
        raise CheckpointError(f"built-in game {game!r} resolves to {folder}, outside the package's {base}: refusing it")
    return folder


def builtin_checkpoints(game: str, root: Path | None = None) -> dict[int, Path]:
    """``{frames: path}`` of the packaged checkpoints of ``game`` (``engine/agents/<game>/step_<frames>.pt``).

    Only files that resolve (links followed) to a regular file directly inside that folder count."""
    folder = _game_folder(game, root)
    found = {}
    for path in folder.glob("step_*.pt"):
        match = _STEP_FILE.fullmatch(path.name)
        if match and path.resolve().parent == folder and path.resolve().is_file():
            found[int(match["frames"])] = folder / path.name
    return dict(sorted(found.items()))


def builtin_names(root: Path | None = None) -> list[str]:
    """Every ``builtin/...`` name that resolves: per game, the latest and each ``@frames``."""
    root = (root or BUILTIN_DIR).resolve()
    names = []
    for folder in sorted(p for p in root.glob("*") if p.is_dir() and _GAME.fullmatch(p.name)):
        if folder.resolve().parent != root:
            continue
        series = builtin_checkpoints(folder.name, root)
        if series:
            names += [f"{BUILTIN_PREFIX}{folder.name}"] + [f"{BUILTIN_PREFIX}{folder.name}@{f}" for f in series]
    return names


def resolve_builtin(name: str, root: Path | None = None) -> Path:
    """The packaged file of ``builtin/<game>`` (the most trained) or ``builtin/<game>@<frames>``."""
    match = _BUILTIN_NAME.fullmatch(name.removeprefix(BUILTIN_PREFIX))
    if match is None:
        raise CheckpointError(
            f"{name!r} is not a built-in agent name: use builtin/<game> or builtin/<game>@<frames> (game: lowercase "
            f"letters, digits and _; frames: digits); the package ships {', '.join(builtin_names(root)) or 'none'}"
        )
    game, frames = match["game"], match["frames"]
    series = builtin_checkpoints(game, root)
    if not series:
        raise CheckpointError(
            f"no built-in agent for {game!r}: the package ships {', '.join(builtin_names(root)) or 'none'}"
        )
    if frames is None:
        return series[max(series)]
    if int(frames) not in series:
        raise CheckpointError(
            f"{name!r}: the built-in {game} agent has checkpoints at {', '.join(map(str, series))} frames; "
            f"use builtin/{game}@<one of those> or builtin/{game} for the most trained"
        )
    return series[int(frames)]


MAX_METADATA_BYTES = 1 << 20  # the training's metadata is a few hundred bytes


@dataclass(frozen=True)
class TrainedGame:
    """The environment id a checkpoint was trained on, and who says so: ``"registry"`` (a registry name's entry),
    ``"builtin"`` (a built-in agent's metadata), ``"hub"`` (an ``hf://`` agent's model name, ``<algo>-<env>.zip``)
    or ``"metadata"`` (the training's metadata beside a user's file)."""

    env_id: str
    source: str


def ale_game(env_id: str) -> str:
    """The ALE game of a gymnasium id, for comparing games: ``Pong`` for ``Pong-v4``, ``PongNoFrameskip-v4``,
    ``ALE/Pong-v5`` and ``Pong-ramDeterministic-v4`` alike."""
    name = re.sub(r"-v[0-9]+$", "", env_id.rsplit("/", 1)[-1])
    for suffix in ("NoFrameskip", "Deterministic"):
        name = name.removesuffix(suffix)
    return name.removesuffix("-ram")


def same_game(env_id: str, other: str) -> bool:
    """Whether two gymnasium ids are one ALE game (case aside)."""
    return ale_game(env_id).lower() == ale_game(other).lower()


def metadata_game(checkpoint: str | os.PathLike) -> str | None:
    """The ``game`` of the training's metadata beside ``checkpoint`` (``step_<frames>.json`` beside
    ``step_<frames>.pt``), or None where there is none, it cannot be read or it names no game."""
    meta = Path(checkpoint).with_suffix(".json")
    try:
        if not meta.is_file() or meta.stat().st_size > MAX_METADATA_BYTES:
            return None
        data = parse_json(meta.read_bytes(), str(meta), MAX_METADATA_BYTES)
    except (OSError, EngineError):
        return None
    game = data.get("game") if isinstance(data, dict) else None
    return game if isinstance(game, str) and game else None


def trained_game(name_or_path: str, path: str | os.PathLike | None = None) -> TrainedGame | None:
    """The game the checkpoint ``name_or_path`` (resolved to ``path``) was trained on, where it is known (module
    docstring), else None."""
    entry = known_checkpoint(str(name_or_path))
    if entry is not None:
        return TrainedGame(entry.env_id, "registry")
    if str(name_or_path).startswith(HF_PREFIX):
        env_id = hub_env_id(str(name_or_path), path)
        return TrainedGame(env_id, "hub") if env_id else None
    builtin = str(name_or_path).startswith(BUILTIN_PREFIX)
    file = path if path is not None else (resolve_builtin(str(name_or_path)) if builtin else name_or_path)
    entry = None if builtin else known_by_contents(Path(file).expanduser())
    if entry is not None:
        return TrainedGame(entry.env_id, "registry")
    game = metadata_game(Path(file).expanduser())
    return TrainedGame(game, "builtin" if builtin else "metadata") if game else None


MAX_KNOWN_BYTES = 64 << 20  # the registry's files are 3 MB; a larger file is none of them, and is not hashed


def known_by_contents(path: Path) -> KnownCheckpoint | None:
    """The registry entry whose file has the bytes of ``path`` (a registry checkpoint given by its path), or None."""
    try:
        stat = path.stat()
    except OSError:
        return None
    if not path.is_file() or stat.st_size > MAX_KNOWN_BYTES:
        return None
    return _known_by_sha256(str(path.resolve()), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=64)
def _known_by_sha256(path: str, size: int, mtime_ns: int) -> KnownCheckpoint | None:
    """Keyed by the file's size and time too: a file written anew is hashed anew."""
    try:
        digest = sha256_of(path)
    except OSError:
        return None
    return next((entry for entry in KNOWN.values() if entry.sha256 == digest), None)


def known_checkpoint(name: str) -> KnownCheckpoint | None:
    """The registry entry of a short name (``baby-a3c/pong``, ``baby-a3c/pong@80``), or None."""
    return KNOWN.get(ALIASES.get(name, name))


def checkpoint_dirs(configured: list[str] | tuple[str, ...] | None = None) -> list[Path]:
    """Local checkpoint directories: the configured ones, then those of ``$ATARI_SALIENCY_CHECKPOINTS``."""
    dirs = [Path(d).expanduser() for d in (configured or []) if d]
    dirs += [Path(d).expanduser() for d in os.environ.get(ENV_VAR, "").split(os.pathsep) if d]
    return dirs


def download(url: str, target: Path, sha256: str, progress: bool = True) -> Path:
    """Download ``url`` to ``target`` (atomically) and check its sha256; a mismatch deletes it and raises."""
    from torch.hub import download_url_to_file

    try:
        with atomic_write(target) as partial:
            download_url_to_file(url, str(partial), hash_prefix=None, progress=progress)
            actual = sha256_of(partial)
            if actual != sha256:
                raise CheckpointError(f"download of {url} has sha256 {actual}, expected {sha256}: refusing to use it")
    except CheckpointError:
        raise
    except Exception as exc:  # network errors come in many types (URLError, HTTPError, OSError, ...)
        raise CheckpointError(f"could not download {url} ({type(exc).__name__}: {exc})") from exc
    return target


def resolve_checkpoint(
    name_or_path: str,
    dirs: list[str] | tuple[str, ...] | None = None,
    cache_dir: str | os.PathLike | None = None,
    allow_download: bool = True,
) -> Path:
    """A checkpoint file from a path or a registry name; raises :class:`CheckpointError` saying what to do."""
    if not name_or_path:
        raise CheckpointError(
            "no checkpoint given: set agent.checkpoint to a file path or a name such as baby-a3c/pong"
        )
    if str(name_or_path).startswith(BUILTIN_PREFIX):
        return resolve_builtin(str(name_or_path))
    if str(name_or_path).startswith(HF_PREFIX):
        return fetch_hub_agent(str(name_or_path), cache_dir=cache_dir, allow_download=allow_download).model
    path = Path(str(name_or_path)).expanduser()
    entry = known_checkpoint(str(name_or_path))
    if entry is None:
        if path.is_file():
            return path.resolve()
        run = str(name_or_path).split("@")[0]
        if "@" in str(name_or_path) and run in ALIASES:  # a known run, at frames it has no checkpoint of
            frames = sorted((n for n in KNOWN if n.split("@")[0] == run), key=lambda n: int(n.split("@")[1]))
            raise CheckpointError(
                f"checkpoint {name_or_path!r}: {run} has no checkpoint at those frames; its checkpoints are "
                f"{', '.join(frames)}"
            )
        known = ", ".join(sorted(ALIASES) + [n for n in builtin_names() if "@" not in n])
        missing = "no such file" if not path.exists() else "not a file"
        raise CheckpointError(
            f"checkpoint {name_or_path!r} is neither an existing file ({missing}) nor a known name ({known}; each "
            "with @<frames> for an earlier checkpoint of its run), nor an hf://<owner>/<name> agent on the Hugging "
            "Face Hub"
        )
    searched = checkpoint_dirs(dirs)
    for directory in searched:
        candidate = directory / entry.relative_path
        if candidate.is_file():
            found = _sha256_or_error(candidate)
            if found != entry.sha256:
                raise CheckpointError(
                    f"{candidate} (the local copy of {entry.name}) has sha256 {found}, expected {entry.sha256}: it is "
                    f"damaged or another file. Replace it with {entry.url}, or give its path as the checkpoint to "
                    "load it anyway"
                )
            return candidate.resolve()
    cache = Path(cache_dir).expanduser() if cache_dir else CHECKPOINT_CACHE
    cached = cache / entry.relative_path
    stale = None
    if cached.is_file():
        found = _sha256_or_error(cached)
        if found == entry.sha256:
            return cached
        stale = (
            f"the cached copy {cached} has sha256 {found}, expected {entry.sha256} (damaged or another file), "
            "so it was not used"
        )
    if allow_download:
        if stale:
            log.warning("%s; downloading %s again", stale, entry.name)
        try:
            return download(entry.url, cached, entry.sha256)  # replaces a stale cached copy only once it checks
        except CheckpointError as exc:
            reason = str(exc)
    else:
        reason = "downloads are disabled"
    where = ", ".join(str(d) for d in searched) or "none configured"
    cache_part = f"{stale}: delete it" if stale else f"it is not in the cache {cache}"
    raise CheckpointError(
        f"checkpoint {entry.name} was not found in the local directories ({where}); {cache_part}; "
        f"and {reason}. Fix: put {entry.relative_path} under a directory named in agent.checkpoint_dirs or "
        f"${ENV_VAR} (e.g. export {ENV_VAR}=/path/to/checkpoints), or download {entry.url} to {cached}"
    )


def _sha256_or_error(path: Path) -> str:
    try:
        return sha256_of(path)
    except OSError as exc:
        raise CheckpointError(f"checkpoint {path} cannot be read ({exc.strerror or exc})") from exc
