"""Many games' stores under one root (``rollout.num_envs``): a root group whose manifest has kind ``games``
(:func:`games_manifest`: the store kind, environment, seeds), with one store per game in ``<root>/game_0000/``,
``<root>/game_0001/``, ... (:func:`engine.storage.layout.game_root`), created atomically like a store and checked
against the job's settings (:func:`open_games`). Every reader of one game's store works unchanged, and
``xarray.open_datatree(root, engine="zarr")`` opens them all."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, cast

import zarr

from ..core.errors import EngineError
from .keys import StoreRoot, is_memory, is_url, object_storage, open_keys, store_exists, store_root
from .layout import FORMAT, GAMES, MANIFEST, game_name
from .store import StoreMismatchError, create_atomically, difference, jsonable, refuse_foreign


def games_manifest(
    store: str, env_id: str, seed: int, num_envs: int, identity: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The root manifest of ``num_envs`` games of ``store`` kind ("rollout" or "saliency"): game ``i`` (group
    :func:`engine.storage.layout.game_name`) seeded ``seed + i``. ``identity`` adds what else must match for a job to reuse the root."""
    return cast(
        "dict[str, Any]",
        jsonable(
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
    with object_storage(root):
        group = zarr.open_group(open_keys(root, storage_options, True), mode="r", use_consolidated=False)
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
    wanted: dict[str, Any] = jsonable(dict(manifest))
    with object_storage(root):
        if not store_exists(root, storage_options):
            refuse_foreign(root, storage_options)
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
            f"the games root {root} was written with other settings ({difference(found, wanted)}): refusing to mix "
            "them; use another directory, or delete this one to start over"
        )
    return found


def _create_games(root: Path | str, manifest: Mapping[str, Any], storage_options: dict[str, Any] | None) -> None:
    if is_url(root):  # one PUT of zarr.json: nothing to hide
        zarr.create_group(open_keys(root, storage_options, False), zarr_format=3, attributes={MANIFEST: manifest})
        return
    create_atomically(Path(root), lambda keys: zarr.create_group(keys, zarr_format=3, attributes={MANIFEST: manifest}))
