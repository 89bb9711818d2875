"""Saliency arrays saved with their settings, compressed and atomically: a failed or interrupted write leaves
neither a temporary file nor a partial file under the target's name (and an older file there stays as it was). A
store on object storage without its fsspec package fails with one line naming what to install."""

import os
import sys

import numpy as np
import pytest
import torch

from engine.storage import arrays as arrays_module
from engine.storage.arrays import atomic_write, load_arrays, save_arrays


def test_round_trip_with_settings(tmp_path):
    maps = torch.rand(3, 80, 80)
    path = save_arrays(tmp_path / "s.npz", dict(actor=maps, actions=np.arange(3)), dict(radius=5, env="Pong-v4"))
    arrays, settings = load_arrays(path)
    assert np.array_equal(arrays["actor"], maps.numpy()) and np.array_equal(arrays["actions"], np.arange(3))
    assert settings == dict(radius=5, env="Pong-v4")
    assert [p.name for p in tmp_path.iterdir()] == ["s.npz"]  # no temporary left behind


def test_arrays_are_compressed(tmp_path):
    """Atari-like frames (flat colours) shrink many times; the arrays read back bit for bit."""
    generator = torch.Generator().manual_seed(0)
    frames = torch.zeros(50, 210, 160, 3, dtype=torch.uint8)
    frames[:, 34:194, 16:144] = 144  # the field
    rows = torch.randint(34, 190, (50,), generator=generator)
    frames[torch.arange(50)[:, None], rows[:, None] + torch.arange(4)[None], 78:80] = 236  # a moving ball
    path = save_arrays(tmp_path / "r.npz", dict(frames=frames), {})
    assert path.stat().st_size < frames.numel() / 20
    assert np.array_equal(load_arrays(path)[0]["frames"], frames.numpy())


def _savez_that_stops_halfway(monkeypatch, error: BaseException, seen: list):
    """np.savez_compressed as save_arrays calls it, but it writes half of the real archive to the open temporary file,
    records that file, and then raises ``error`` (a crash, a full disk, Ctrl-C) in the middle of the write."""
    real_savez = np.savez_compressed

    def halfway(file, *args, **kwds):
        import io

        buffer = io.BytesIO()
        real_savez(buffer, *args, **kwds)
        data = buffer.getvalue()
        file.write(data[: len(data) // 2])
        file.flush()
        seen.append((file.name, os.path.getsize(file.name)))
        raise error

    monkeypatch.setattr(arrays_module.np, "savez_compressed", halfway)


@pytest.mark.parametrize(
    "error", [OSError(28, "No space left on device"), KeyboardInterrupt()], ids=["disk-full", "interrupt"]
)
def test_failed_write_leaves_no_temporary_and_no_target(tmp_path, monkeypatch, error):
    seen = []
    _savez_that_stops_halfway(monkeypatch, error, seen)
    with pytest.raises(type(error)):
        save_arrays(tmp_path / "s.npz", dict(actor=torch.rand(4, 80, 80)), dict(radius=5))
    ((temporary, written),) = seen  # the write really started, into a temporary file beside the target ...
    assert os.path.dirname(temporary) == str(tmp_path) and os.path.basename(temporary) != "s.npz" and written > 1000
    assert list(tmp_path.iterdir()) == []  # ... which is gone, and nothing took the target's name


def test_failed_overwrite_keeps_the_previous_file(tmp_path, monkeypatch):
    old = torch.rand(2, 80, 80)
    save_arrays(tmp_path / "s.npz", dict(actor=old), dict(radius=3))
    seen = []
    _savez_that_stops_halfway(monkeypatch, OSError(28, "No space left on device"), seen)
    with pytest.raises(OSError):
        save_arrays(tmp_path / "s.npz", dict(actor=torch.rand(5, 80, 80)), dict(radius=8))
    assert len(seen) == 1 and [p.name for p in tmp_path.iterdir()] == ["s.npz"]
    monkeypatch.undo()
    arrays, settings = load_arrays(tmp_path / "s.npz")
    assert np.array_equal(arrays["actor"], old.numpy()) and settings == dict(radius=3)


def test_unconvertible_input_fails_before_touching_the_disk(tmp_path):
    class Unsaveable:
        def __array__(self, *args, **kwargs):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        save_arrays(tmp_path / "s.npz", dict(bad=Unsaveable()), {})
    assert list(tmp_path.iterdir()) == []


def test_atomic_write_renames_into_place_on_success(tmp_path):
    target = tmp_path / "sub" / "out.txt"  # a missing folder is created
    with atomic_write(target, ".txt") as tmp:
        assert tmp.parent == target.parent and tmp.name.startswith(".out.txt.") and tmp.name.endswith(".txt.partial")
        assert not target.exists()  # nothing under the final name while the block writes
        tmp.write_text("new")
    assert target.read_text() == "new" and [p.name for p in target.parent.iterdir()] == ["out.txt"]
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask  # as a plain open would make it, not mkstemp's 0o600


@pytest.mark.parametrize(
    "error", [OSError(28, "No space left on device"), KeyboardInterrupt()], ids=["disk-full", "interrupt"]
)
def test_atomic_write_leaves_nothing_and_the_old_file_on_an_exception(tmp_path, error):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(type(error)):
        with atomic_write(target) as tmp:
            tmp.write_text("half of the new")
            raise error
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_an_object_store_url_without_its_package_names_what_to_install(monkeypatch, tmp_path):
    """``s3://`` without s3fs installed: fsspec's ImportError (a traceback) became one line naming the package."""
    import fsspec  # noqa: F401  (its registry module, below)

    from engine.core.errors import EngineError, MissingDependencyError
    from engine.jobs.record import record_rollout
    from engine.storage.keys import store_exists
    from engine.storage.store import ChunkStore

    monkeypatch.setitem(sys.modules, "s3fs", None)  # import s3fs raises ImportError
    monkeypatch.delitem(sys.modules["fsspec.registry"]._registry, "s3", raising=False)  # not registered yet
    assert issubclass(MissingDependencyError, EngineError)
    for job in (
        lambda: store_exists("s3://bucket/game"),
        lambda: ChunkStore("s3://bucket/game"),
        lambda: record_rollout(None, "Pong-v4", 10, "s3://bucket/game"),
    ):
        with pytest.raises(MissingDependencyError) as caught:
            job()
        message = str(caught.value)
        assert "\n" not in message and "s3://bucket/game" in message and "pip install s3fs" in message, message
        assert "[store]" in message


def test_stores_record_the_packages_own_version_whether_installed_or_not(monkeypatch):
    """A store's identity names the engine's version from the package itself, so a run from a source tree (no
    distribution metadata found) and an installed run resume each other's stores."""
    import importlib.metadata

    import engine
    from engine.storage.store import engine_version

    def not_installed(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata.Distribution, "from_name", staticmethod(not_installed))
    assert engine_version() == engine.__version__


def test_a_file_beside_a_store_never_lies_inside_another_store(tmp_path):
    """sidecar_path: beside the store; beside the outermost store or group holding it, even through a plain folder
    inside that store; none for a memory store or object storage."""
    from engine.storage.keys import sidecar_path

    outer = tmp_path / "rollout"
    (outer / "plain").mkdir(parents=True)
    (outer / "zarr.json").write_text("{}")
    assert sidecar_path(tmp_path / "saliency", "metrics.pt") == tmp_path / ".saliency.metrics.pt"
    assert sidecar_path(outer / "game_0001", "metrics.pt") == tmp_path / ".rollout.game_0001.metrics.pt"
    assert sidecar_path(outer / "plain" / "sal", "metrics.pt") == tmp_path / ".rollout.plain.sal.metrics.pt"
    assert sidecar_path("s3://bucket/sal", "metrics.pt") is None
