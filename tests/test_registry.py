"""Checkpoint names resolve through local directories, the cache, then a sha256-checked download
(tested against a loopback HTTP server: there is no network here)."""

import functools
import http.server
import shutil
import threading
from pathlib import Path

import pytest

from engine import CheckpointError
from engine import registry
from engine.registry import known_checkpoint, resolve_checkpoint, sha256_of
from tests.conftest import CHECKPOINTS


def test_known_names_and_real_hashes():
    entry = known_checkpoint("baby-a3c/pong")
    assert entry.name == "baby-a3c/pong@40" and entry.env_id == "Pong-v4"
    assert known_checkpoint("baby-a3c/breakout@80").relative_path == "baby-a3c/breakout-v4/model.80.tar"
    for entry in registry.KNOWN.values():  # the registry's hashes are those of the real files
        assert sha256_of(CHECKPOINTS / entry.relative_path) == entry.sha256


def test_resolves_path_local_dir_and_env_var(tmp_path, monkeypatch):
    monkeypatch.delenv(registry.ENV_VAR, raising=False)
    given = CHECKPOINTS / "baby-a3c/pong-v4/model.40.tar"
    real = given.resolve()  # ../shared may be a symlink
    assert resolve_checkpoint(str(given)).resolve() == real
    assert resolve_checkpoint("baby-a3c/pong", [str(CHECKPOINTS)], allow_download=False).resolve() == real
    monkeypatch.setenv(registry.ENV_VAR, str(CHECKPOINTS))
    found = resolve_checkpoint("baby-a3c/pong@80", allow_download=False)
    assert found.resolve() == (CHECKPOINTS / "baby-a3c/pong-v4/model.80.tar").resolve()


def test_unresolvable_names_say_what_to_do(tmp_path, monkeypatch):
    monkeypatch.delenv(registry.ENV_VAR, raising=False)
    with pytest.raises(CheckpointError, match=r"neither an existing file nor a known name \(baby-a3c/breakout"):
        resolve_checkpoint("baby-a3c/tetris")
    with pytest.raises(CheckpointError, match=r"not found in the local directories .*export ATARI_SALIENCY_CHECKPOINTS="):
        resolve_checkpoint("baby-a3c/pong", [str(tmp_path)], cache_dir=tmp_path / "cache", allow_download=False)


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
    patched = registry.KnownCheckpoint(entry.name, entry.relative_path, f"{base_url}/model.40.tar", sha256, entry.env_id)
    monkeypatch.setitem(registry.KNOWN, entry.name, patched)
    return patched


def test_download_checks_sha256_and_caches(loopback_server, tmp_path, monkeypatch):
    monkeypatch.delenv(registry.ENV_VAR, raising=False)
    root, url = loopback_server
    shutil.copy(CHECKPOINTS / "baby-a3c/pong-v4/model.40.tar", root / "model.40.tar")
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
        "builtin/pong", "builtin/pong@250000", "builtin/pong@1000000", "builtin/pong@3500000"
    ]
    with pytest.raises(CheckpointError, match=r"checkpoints at 250000, 1000000, 3500000 frames"):
        resolve_checkpoint("builtin/pong@2000000")
    with pytest.raises(CheckpointError, match=r"no built-in agent for 'breakout': the package ships builtin/pong"):
        resolve_checkpoint("builtin/breakout")
