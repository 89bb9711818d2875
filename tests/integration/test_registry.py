"""Checkpoint names resolve through local directories, the cache, then a download, and every file that stands for
a registry name has the registry's sha256 (downloads tested against a loopback HTTP server: there is no network
here). ``builtin/...`` names resolve only to files inside the package's ``engine/agents``."""

import functools
import hashlib
import http.server
import logging
import os
import shutil
import threading
from pathlib import Path

import pytest

from engine import CheckpointError
from engine.core.files import sha256_of
from engine.policies import registry
from engine.policies.registry import known_checkpoint, resolve_checkpoint
from tests.conftest import checkpoint, checkpoint_root


def test_known_names_and_real_hashes():
    entry = known_checkpoint("baby-a3c/pong")
    assert entry.name == "baby-a3c/pong@40" and entry.env_id == "Pong-v4"
    assert known_checkpoint("baby-a3c/breakout@80").relative_path == "baby-a3c/breakout-v4/model.80.tar"
    for entry in registry.KNOWN.values():  # the registry's hashes are those of the real files
        game, frames = entry.name.split("/")[1].split("@")
        assert sha256_of(checkpoint(game, int(frames))) == entry.sha256


def test_resolves_path_local_dir_and_env_var(monkeypatch):
    monkeypatch.delenv(registry.ENV_VAR, raising=False)
    root = checkpoint_root("pong", 40)
    given = root / "baby-a3c/pong-v4/model.40.tar"
    real = given.resolve()  # ../shared may be a symlink
    assert resolve_checkpoint(str(given)).resolve() == real
    assert resolve_checkpoint("baby-a3c/pong", [str(root)], allow_download=False).resolve() == real
    monkeypatch.setenv(registry.ENV_VAR, str(checkpoint_root("pong", 80)))
    found = resolve_checkpoint("baby-a3c/pong@80", allow_download=False)
    assert found.resolve() == checkpoint("pong", 80).resolve()


def test_unresolvable_names_say_what_to_do(tmp_path, monkeypatch):
    monkeypatch.delenv(registry.ENV_VAR, raising=False)
    with pytest.raises(
        CheckpointError, match=r"neither an existing file \(no such file\) nor a known name \(baby-a3c/breakout"
    ):
        resolve_checkpoint("baby-a3c/tetris")
    with pytest.raises(
        CheckpointError, match=r"not found in the local directories .*export ATARI_SALIENCY_CHECKPOINTS="
    ):
        resolve_checkpoint("baby-a3c/pong", [str(tmp_path)], cache_dir=tmp_path / "cache", allow_download=False)


def _place(root: Path, data: bytes, entry_name: str = "baby-a3c/pong@40") -> Path:
    path = root / registry.KNOWN[entry_name].relative_path
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def test_local_copy_with_another_hash_is_refused(tmp_path, monkeypatch):
    """A registry name found in a local directory is sha256-checked like a download: a file that differs (damaged,
    or another checkpoint under the name) is refused with its path, the expected and the found hash."""
    monkeypatch.delenv(registry.ENV_VAR, raising=False)
    data = b"not the published agent"
    local = _place(tmp_path / "local", data)
    _place(tmp_path / "later", data)  # a later directory does not hide the problem with the first
    expected = registry.KNOWN["baby-a3c/pong@40"].sha256
    found = hashlib.sha256(data).hexdigest()
    pattern = rf"{local} \(the local copy of baby-a3c/pong@40\) has sha256 {found}, expected {expected}: it is damaged"
    with pytest.raises(CheckpointError, match=pattern):
        resolve_checkpoint("baby-a3c/pong", [str(tmp_path / "local"), str(tmp_path / "later")], allow_download=False)
    monkeypatch.setenv(registry.ENV_VAR, str(tmp_path / "local"))  # the environment variable's directories too
    with pytest.raises(CheckpointError, match=pattern):
        resolve_checkpoint("baby-a3c/pong", cache_dir=tmp_path / "cache", allow_download=False)


@pytest.fixture
def loopback_server(tmp_path):
    """Serves tmp_path/www over http://127.0.0.1:<port>/ for the duration of a test."""
    root = tmp_path / "www"
    root.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()


def _point_registry_at(monkeypatch, base_url: str, sha256: str):
    entry = registry.KNOWN["baby-a3c/pong@40"]
    patched = registry.KnownCheckpoint(
        entry.name, entry.relative_path, f"{base_url}/model.40.tar", sha256, entry.env_id
    )
    monkeypatch.setitem(registry.KNOWN, entry.name, patched)
    return patched


def test_cached_file_with_another_hash_says_so_and_is_not_used(loopback_server, tmp_path, monkeypatch, caplog):
    monkeypatch.delenv(registry.ENV_VAR, raising=False)
    root, url = loopback_server
    published = b"the published checkpoint" * 100
    (root / "model.40.tar").write_bytes(published)
    entry = _point_registry_at(monkeypatch, url, hashlib.sha256(published).hexdigest())
    cache = tmp_path / "cache"
    stale = _place(cache, b"a partial or damaged download")
    found = hashlib.sha256(stale.read_bytes()).hexdigest()
    with pytest.raises(
        CheckpointError,
        match=rf"the cached copy {stale} has sha256 {found}, expected {entry.sha256} \(damaged or another file\), so "
        r"it was not used: delete it; and downloads are disabled",
    ):
        resolve_checkpoint("baby-a3c/pong", [], cache_dir=cache, allow_download=False)
    assert stale.read_bytes() == b"a partial or damaged download"
    # with downloads allowed it says so in the log, downloads the file again and uses that
    with caplog.at_level(logging.WARNING, logger=registry.__name__):
        path = resolve_checkpoint("baby-a3c/pong", [], cache_dir=cache)
    assert path == stale and path.read_bytes() == published
    assert (
        f"the cached copy {stale} has sha256 {found}" in caplog.text
        and "downloading baby-a3c/pong@40 again" in caplog.text
    )


def test_download_checks_sha256_and_caches(loopback_server, tmp_path, monkeypatch):
    monkeypatch.delenv(registry.ENV_VAR, raising=False)
    root, url = loopback_server
    shutil.copy(checkpoint("pong", 40), root / "model.40.tar")
    entry = _point_registry_at(monkeypatch, url, registry.KNOWN["baby-a3c/pong@40"].sha256)
    cache = tmp_path / "cache"
    path = resolve_checkpoint("baby-a3c/pong", [], cache_dir=cache)
    assert path == cache / entry.relative_path and sha256_of(path) == entry.sha256
    (root / "model.40.tar").unlink()  # the second time comes from the cache, no server needed
    assert resolve_checkpoint("baby-a3c/pong", [], cache_dir=cache) == path
    assert not list(path.parent.glob("*.partial"))


def test_download_with_wrong_hash_is_refused_and_not_cached(loopback_server, tmp_path, monkeypatch):
    monkeypatch.delenv(registry.ENV_VAR, raising=False)
    root, url = loopback_server
    (root / "model.40.tar").write_bytes(b"tampered")
    entry = _point_registry_at(monkeypatch, url, registry.KNOWN["baby-a3c/pong@40"].sha256)
    cache = tmp_path / "cache"
    with pytest.raises(CheckpointError, match="has sha256 .* expected .*refusing"):
        resolve_checkpoint("baby-a3c/pong", [], cache_dir=cache)
    assert not (cache / entry.relative_path).exists()
    assert not list((cache / entry.relative_path).parent.glob("*"))


def test_unreachable_download_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.delenv(registry.ENV_VAR, raising=False)
    _point_registry_at(monkeypatch, "http://127.0.0.1:9", registry.KNOWN["baby-a3c/pong@40"].sha256)
    with pytest.raises(CheckpointError, match=r"could not download .*Fix: put baby-a3c/pong-v4/model.40.tar"):
        resolve_checkpoint("baby-a3c/pong", [], cache_dir=tmp_path / "cache")


def test_builtin_names_resolve_inside_the_package(tmp_path, monkeypatch):
    monkeypatch.setattr(registry, "BUILTIN_DIR", tmp_path)
    (tmp_path / "pong").mkdir()
    for frames in (250000, 1000000, 3500000):
        (tmp_path / "pong" / f"step_{frames}.pt").write_bytes(b"x")
    (tmp_path / "pong" / "step_1000000.json").write_text("{}")  # metadata files are not checkpoints
    assert resolve_checkpoint("builtin/pong", allow_download=False) == tmp_path / "pong" / "step_3500000.pt"
    assert resolve_checkpoint("builtin/pong@250000") == tmp_path / "pong" / "step_250000.pt"
    assert registry.builtin_names() == [
        "builtin/pong",
        "builtin/pong@250000",
        "builtin/pong@1000000",
        "builtin/pong@3500000",
    ]
    with pytest.raises(CheckpointError, match=r"checkpoints at 250000, 1000000, 3500000 frames"):
        resolve_checkpoint("builtin/pong@2000000")
    with pytest.raises(CheckpointError, match=r"no built-in agent for 'breakout': the package ships builtin/pong"):
        resolve_checkpoint("builtin/breakout")


def test_builtin_names_cannot_leave_the_package(tmp_path, monkeypatch):
    """``builtin/<name>`` is ``[a-z0-9_]+`` with an optional ``@<frames>``, and resolves (links followed) only to a
    file directly in ``engine/agents/<name>/``: no name reaches another folder's step_N.pt."""
    agents = tmp_path / "engine" / "agents"
    (agents / "pong").mkdir(parents=True)
    (agents / "pong" / "step_100.pt").write_bytes(b"packaged")
    for outside in (tmp_path / "engine" / "elsewhere", tmp_path / "x", tmp_path):
        outside.mkdir(parents=True, exist_ok=True)
        (outside / "step_5.pt").write_bytes(b"not packaged")
    monkeypatch.setattr(registry, "BUILTIN_DIR", agents)
    for name in (
        "builtin/../elsewhere",
        "builtin/../../x",
        "builtin/../agents/pong",
        "builtin/pong/../pong",
        "builtin/..",
        "builtin/./pong",
        "builtin//pong",
        "builtin/" + str(tmp_path / "x"),
        "builtin/",
        "builtin/Pong",
        "builtin/pong@",
        "builtin/pong@5x",
        "builtin/pong@-1",
        "builtin/pong@100/..",
        "builtin/po ng",
        "builtin/pong\n",
        "builtin/pong@１００",
    ):
        with pytest.raises(
            CheckpointError, match=r"is not a built-in agent name: use builtin/<game> or builtin/<game>@"
        ):
            resolve_checkpoint(name, allow_download=False)
    # links inside the package that point outside it are not followed
    os.symlink(tmp_path / "x", agents / "linked")
    os.symlink(tmp_path / "x" / "step_5.pt", agents / "pong" / "step_5.pt")
    with pytest.raises(
        CheckpointError, match=r"built-in game 'linked' resolves to .*/x, outside the package's .*agents"
    ):
        resolve_checkpoint("builtin/linked", allow_download=False)
    with pytest.raises(CheckpointError, match=r"the built-in pong agent has checkpoints at 100 frames"):
        resolve_checkpoint("builtin/pong@5", allow_download=False)
    assert registry.builtin_names() == ["builtin/pong", "builtin/pong@100"]
    assert resolve_checkpoint("builtin/pong", allow_download=False) == agents.resolve() / "pong" / "step_100.pt"


def test_builtin_resolves_in_the_real_package():
    path = resolve_checkpoint("builtin/pong", allow_download=False)
    assert path.parent.parent == registry.BUILTIN_DIR.resolve() and path.is_file()
    assert Path(registry.__file__).resolve().parents[1] / "agents" == registry.BUILTIN_DIR


def test_games_compare_by_their_ale_name():
    for env_id in ("Pong-v4", "PongNoFrameskip-v4", "ALE/Pong-v5", "PongDeterministic-v4", "Pong-ramNoFrameskip-v4"):
        assert registry.ale_game(env_id) == "Pong" and registry.same_game(env_id, "ALE/pong-v5")
    assert registry.ale_game("ALE/SpaceInvaders-v5") == "SpaceInvaders"
    assert not registry.same_game("Pong-v4", "SpaceInvaders-v4")


def test_the_game_a_checkpoint_was_trained_on(tmp_path):
    """Registry names by their entry, built-in agents by their metadata, a user's file by the training's metadata
    beside it; where nothing says, None."""
    assert registry.trained_game("baby-a3c/spaceinvaders@80") == registry.TrainedGame("SpaceInvaders-v4", "registry")
    assert registry.trained_game("builtin/pong") == registry.TrainedGame("Pong-v4", "builtin")
    assert registry.trained_game("builtin/breakout_ppo").env_id == "BreakoutNoFrameskip-v4"
    mine = tmp_path / "step_100.pt"
    mine.write_bytes(b"weights")
    assert registry.trained_game(str(mine)) is None
    for unreadable in ("not json", "[" * 10000, '{"frames": 100}', '["Pong-v4"]', '{"game": ""}'):
        mine.with_suffix(".json").write_text(unreadable)
        assert registry.trained_game(str(mine)) is None
    mine.with_suffix(".json").write_text('{"game": "ALE/Breakout-v5", "frames": 100}')
    assert registry.trained_game(str(mine)) == registry.TrainedGame("ALE/Breakout-v5", "metadata")


def test_a_registry_checkpoint_given_by_its_path_is_known_by_its_bytes(tmp_path):
    """The README's own paths (``.../baby-a3c/pong-v4/model.40.tar``) and a renamed copy are the registry's Pong
    agent: on SpaceInvaders, whose 6 actions the action count cannot tell from Pong's, the job refuses it."""
    from engine.cli.app import ConfigError, precheck

    pong = checkpoint("pong", 40)
    copy = tmp_path / "my_agent.tar"
    shutil.copyfile(pong, copy)
    for path in (pong, copy):
        assert registry.trained_game(str(path)) == registry.TrainedGame("Pong-v4", "registry")
    with pytest.raises(ConfigError, match=r"my_agent.tar was trained on Pong \(Pong-v4\), but env.id is Space"):
        precheck(["env=spaceinvaders", f"agent.checkpoint={copy}", "rollout.steps=2"])
    copy.write_bytes(copy.read_bytes()[:-1] + b"\0")  # other bytes: hashed anew, no longer the registry's
    assert registry.trained_game(str(copy)) is None
