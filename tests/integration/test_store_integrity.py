"""Integrity of the zarr stores, each failure reproduced: a chunk of the wrong length or shape, a corrupt chunk, a
chunk moved within its array or copied from another store (named, then recomputed by the next run), an edited
manifest or array metadata (refused), a malformed manifest (one line), a store without its manifest (never adopted),
two creators racing (exactly one wins), another writer's in-progress chunk (never deleted), a store path that is a
file or read-only (one line, before any work), chunks and stores larger than they may be (refused before any work)."""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from engine.core.errors import EngineError
from engine.core.settings import SaliencyConfig
from engine.jobs import record as record_module
from engine.jobs import score as score_module
from engine.jobs.record import record_rollout
from engine.jobs.score import score_store
from engine.policies.greydanus2017 import load_agent
from engine.policies.registry import resolve_checkpoint
from engine.storage import layout as layout_module
from engine.storage import store as store_module
from engine.storage.keys import store_exists
from engine.storage.store import ChunkStore, RolloutStore, SaliencyStore, StoreIntegrityError
from tests.conftest import ROOT

STEPS, SETTINGS, FRAMES_PER_CHUNK = 20, SaliencyConfig(density=20), 4  # 5 saliency chunks of 4 frames


@pytest.fixture(scope="module")
def agent():
    return load_agent(resolve_checkpoint("builtin/pong", [], allow_download=False), device="cpu")


@pytest.fixture(scope="module")
def played(agent, tmp_path_factory):
    root = tmp_path_factory.mktemp("played") / "rollout"
    record_rollout(agent, "Pong-v4", STEPS, root, seed=1, chunk_steps=8, checkpoint_sha256="c" * 64)
    return root


@pytest.fixture(scope="module")
def reference(agent, played, tmp_path_factory):
    """An untouched saliency store and its maps."""
    root = tmp_path_factory.mktemp("reference") / "s"
    return root, score_store(agent, played, root, SETTINGS, "c" * 64, FRAMES_PER_CHUNK).read()


def fresh_copy(reference, tmp_path) -> Path:
    copy = tmp_path / "s"
    shutil.copytree(reference[0], copy)
    return copy


def chunk_key(root: Path, name: str, k: int) -> Path:
    return root / name / "c" / str(k) / "0" / "0"


def assert_equal_maps(got: dict, want: dict):
    assert got.keys() == want.keys() and all(np.array_equal(got[k], want[k]) for k in want)


# --- a chunk whose length or shape does not match its place -----------------------------------------------------


def test_array_of_another_length_is_detected(reference, tmp_path):
    """The 2-format bug: a "complete" store with fewer maps than frames, shifted. Here the actor array's metadata
    claims 16 frames for the rollout's 20: opening the store says which array and what the manifest wants."""
    copy = fresh_copy(reference, tmp_path)
    meta = copy / "actor" / "zarr.json"
    data = json.loads(meta.read_text())
    assert data["shape"] == [STEPS, 80, 80]
    data["shape"] = [16, 80, 80]
    meta.write_text(json.dumps(data))
    with pytest.raises(
        StoreIntegrityError, match=r"array 'actor' has shape \(16, 80, 80\).*manifest says shape \(20, 80, 80\)"
    ):
        SaliencyStore.open(copy)


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda root: (root / "zarr.json").write_text((root / "zarr.json").read_text()[:100]), "its zarr.json cannot"),
        (lambda root: (root / "actor" / "zarr.json").write_text("{"), "actor/zarr.json cannot be read"),
        (
            lambda root: (root / "actor" / "zarr.json").write_text(
                (root / "actor" / "zarr.json").read_text().replace('"float32"', '"float33"')
            ),
            r"actor/zarr.json cannot be read \(ValueError: .*float33",
        ),
    ],
    ids=["group cut short", "array not JSON", "unknown data type"],
)
def test_unreadable_metadata_is_refused_naming_the_store_and_file(reference, tmp_path, damage, message):
    """A zarr.json cut short or naming no zarr data type: one StoreIntegrityError naming the store, the file and
    what to do, not zarr's or json's own error."""
    copy = fresh_copy(reference, tmp_path)
    damage(copy)
    with pytest.raises(StoreIntegrityError, match=message) as info:
        SaliencyStore.open(copy).read()
    assert str(copy) in str(info.value) and "delete it and run again" in str(info.value)


def test_chunk_of_another_shape_is_named_and_recomputed(agent, played, reference, tmp_path):
    """A chunk file from a store chunked by 8 frames put in the place of a 4-frame chunk: its checksum is valid,
    but it decodes to 8 maps. Reading names the array and the chunk; the next run recomputes it."""
    other = tmp_path / "other"
    score_store(agent, played, other, SETTINGS, "c" * 64, frames_per_chunk=8)
    copy = fresh_copy(reference, tmp_path)
    shutil.copy(chunk_key(other, "actor", 0), chunk_key(copy, "actor", 1))
    damaged = SaliencyStore.open(copy)
    assert damaged.complete  # the marker alone cannot tell
    with pytest.raises(
        StoreIntegrityError, match=r"chunk 1 \(steps 4\.\.7\) of 'actor' is damaged .*recomputed by the next run"
    ):
        damaged.read()
    assert SaliencyStore.open(copy).missing() == [1]
    assert_equal_maps(score_store(agent, played, copy, SETTINGS, "c" * 64, FRAMES_PER_CHUNK).read(), reference[1])


# --- a corrupt chunk: named in the error, recomputed on the next run -----------------------------------------------


@pytest.mark.parametrize("damage", ["bit-flip", "truncated", "deleted"])
def test_corrupt_chunk_is_named_and_recomputed_on_the_next_run(agent, played, reference, tmp_path, damage):
    copy = fresh_copy(reference, tmp_path)
    key = chunk_key(copy, "critic_scores", 3)
    data = bytearray(key.read_bytes())
    if damage == "bit-flip":
        data[len(data) // 2] ^= 0x04
        key.write_bytes(bytes(data))
    elif damage == "truncated":
        key.write_bytes(bytes(data[: len(data) - 7]))
    else:
        key.unlink()  # zarr alone would read the fill value (zeros) here
    reason = {"bit-flip": "checksum", "truncated": "", "deleted": "is missing"}[damage]
    with pytest.raises(
        StoreIntegrityError, match=rf"chunk 3 \(steps 12\.\.15\) of 'critic_scores' is damaged \(.*{reason}"
    ):
        SaliencyStore.open(copy).read()
    assert SaliencyStore.open(copy).missing() == [3]
    np.testing.assert_array_equal(
        SaliencyStore.open(copy).read(0, 12)["critic_scores"], reference[1]["critic_scores"][:12]
    )
    again = score_store(agent, played, copy, SETTINGS, "c" * 64, FRAMES_PER_CHUNK)  # the next run
    assert again.complete
    assert_equal_maps(again.read(), reference[1])


def test_corrupt_rollout_chunk_is_named_and_rerecorded(agent, played, tmp_path):
    copy = tmp_path / "r"
    shutil.copytree(played, copy)
    key = copy / "frames" / "c" / "1" / "0" / "0" / "0"
    data = bytearray(key.read_bytes())
    data[100] ^= 0x01
    key.write_bytes(bytes(data))
    with pytest.raises(StoreIntegrityError, match=r"chunk 1 \(steps 8\.\.15\) of 'frames' is damaged \(.*checksum"):
        RolloutStore.open(copy).read()
    assert RolloutStore.open(copy).completed_chunks() == 1
    again = record_rollout(agent, "Pong-v4", STEPS, copy, seed=1, chunk_steps=8, checkpoint_sha256="c" * 64)
    a, b = again.read(), RolloutStore.open(played).read()
    assert all(
        np.array_equal(getattr(a, f).numpy(), getattr(b, f).numpy())
        for f in ("frames", "observations", "logits", "actions")
    )
    assert all(np.array_equal(x.numpy(), y.numpy()) for x, y in zip(a.states, b.states))


# --- a store whose manifest is missing is never adopted ------------------------------------------------------------


@pytest.mark.parametrize("loss", ["attribute", "group-file"])
def test_store_without_manifest_is_never_adopted(agent, played, reference, tmp_path, loss):
    """Format 2 adopted the chunks of a store whose manifest.json was gone under whatever settings came next."""
    copy = fresh_copy(reference, tmp_path)
    group = copy / "zarr.json"
    if loss == "attribute":
        meta = json.loads(group.read_text())
        del meta["attributes"]["manifest"]
        group.write_text(json.dumps(meta))
        expected = "without a store manifest"
    else:
        group.unlink()
        expected = "not empty but has no store manifest"
    before = sorted(p.relative_to(copy) for p in copy.rglob("*"))
    with pytest.raises(EngineError, match=expected):
        score_store(agent, played, copy, SaliencyConfig(density=20, radius=3), "d" * 64, FRAMES_PER_CHUNK)
    with pytest.raises(EngineError, match=expected):
        score_store(agent, played, copy, SETTINGS, "c" * 64, FRAMES_PER_CHUNK)  # not even under its own settings
    assert sorted(p.relative_to(copy) for p in copy.rglob("*")) == before


def test_a_store_of_the_npz_format_is_refused(agent, played, tmp_path):
    old = tmp_path / "old"
    (old / "chunks").mkdir(parents=True)
    (old / "manifest.json").write_text("{}")
    with pytest.raises(EngineError, match=r"older engine \(format 2"):
        score_store(agent, played, old, SETTINGS, "c" * 64, FRAMES_PER_CHUNK)


# --- creation is atomic against a concurrent creator ------------------------------------------------------------

RACER = """
import json, sys, time
from pathlib import Path

from engine.storage.store import ChunkStore, StoreMismatchError

base, me, other, rounds = Path(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4])
layout = {"x": {"tail": [3], "dtype": "<f4", "dims": ["x_axis"], "per": "time"}}
outcome = []
for i in range(rounds):
    (base / f"{me}.{i}").touch()  # a barrier per round, so both create the same store at the same time
    while not (base / f"{other}.{i}").exists():
        time.sleep(0.0005)
    try:
        ChunkStore.open_or_create(base / f"store{i}", {"kind": "saliency", "radius": me}, layout, 10, 4)
        outcome.append("accepted")
    except StoreMismatchError:
        outcome.append("refused")
print(json.dumps(outcome))
"""


def test_two_creators_with_other_settings_race_and_exactly_one_wins(tmp_path):
    """Format 2 accepted both of two jobs with different radii in 9 of 30 tries."""
    rounds = 20
    jobs = [
        subprocess.Popen(
            [sys.executable, "-c", RACER, str(tmp_path), me, other, str(rounds)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for me, other in (("3", "5"), ("5", "3"))
    ]
    results = []
    for job in jobs:
        out, err = job.communicate(timeout=300)
        assert job.returncode == 0, err[-3000:]
        results.append(json.loads(out.strip().splitlines()[-1]))
    for i, pair in enumerate(zip(*results)):
        assert sorted(pair) == ["accepted", "refused"], (i, pair)
        winner = ("3", "5")[pair.index("accepted")]
        assert ChunkStore(tmp_path / f"store{i}").identity["radius"] == winner
    assert not list(tmp_path.glob(".store*"))  # the losers' temporary groups are gone


# --- opening a store never deletes another writer's in-progress chunk ---------------------------------------------


def test_opening_a_store_leaves_another_writers_chunk_alone(agent, played, tmp_path):
    """Shard 1 is writing chunk 1: its actor maps are stored, its critic maps half-written in a temporary file,
    no marker yet. Shard 0 opening the store and scoring its own chunks touches none of it."""
    root = tmp_path / "s"
    score_store(agent, played, root, SETTINGS, "c" * 64, FRAMES_PER_CHUNK, shard=0, num_shards=2)
    in_progress = ChunkStore(root)
    in_progress.arrays["actor"][4:8] = np.full((4, 80, 80), 0.5, dtype=np.float32)
    partial = chunk_key(root, "critic", 1).parent / ".0.abc123.partial"
    partial.parent.mkdir(parents=True)
    partial.write_bytes(b"half of the critic maps")
    files = {p: p.read_bytes() for p in root.rglob("*") if p.is_file() and "/c/1/" in str(p)}
    assert len(files) == 2
    SaliencyStore.open(root)
    score_store(agent, played, root, SETTINGS, "c" * 64, FRAMES_PER_CHUNK, shard=0, num_shards=2)
    assert {p: p.read_bytes() for p in root.rglob("*") if p.is_file() and "/c/1/" in str(p)} == files
    assert SaliencyStore.open(root).missing() == [1, 3]


# --- a store path that is a file, or read-only where writing is needed ---------------------------------------------


@pytest.fixture
def no_work(monkeypatch):
    """Fails the test if a job gets as far as playing or scoring."""

    def refuse(*args, **kwargs):
        raise AssertionError("work started before the store path was checked")

    monkeypatch.setattr(record_module, "Player", refuse)
    monkeypatch.setattr(score_module, "compute_saliency", refuse)


def test_store_path_that_is_a_file_fails_before_any_work(agent, played, tmp_path, no_work):
    path = tmp_path / "results"
    path.write_text("not a store")
    for job in (
        lambda: record_rollout(agent, "Pong-v4", STEPS, path),
        lambda: score_store(agent, played, path, SETTINGS),
        lambda: score_store(agent, played, path / "inside", SETTINGS),
    ):
        with pytest.raises(EngineError) as caught:
            job()
        message = str(caught.value)
        assert "\n" not in message and str(path) in message and ("is a file" in message or "inside a file" in message)
    assert path.read_text() == "not a store"


@contextmanager
def unprivileged():
    """Run as user nobody where the tests run as root (root writes into read-only directories); as is otherwise."""
    if os.geteuid() != 0:
        yield
        return
    os.seteuid(65534)
    try:
        yield
    finally:
        os.seteuid(0)


def test_read_only_store_fails_before_any_work_only_where_writing_is_needed(agent, played, reference, monkeypatch):
    """A store to finish, or a new one, in a read-only place: one line naming the path, before playing or scoring.
    A complete store there is read as usual."""
    base = Path(tempfile.mkdtemp())  # not under pytest's tmp_path: that is private to root
    try:
        os.chmod(base, 0o755)
        partial, complete, fresh_parent, game = base / "partial", base / "complete", base / "locked", base / "game"
        shutil.copytree(played, game)  # readable by the unprivileged user
        shutil.copytree(reference[0], partial)
        shutil.copytree(reference[0], complete)
        shutil.rmtree(partial / "complete" / "c" / "2")  # chunk 2 to do: its marker gone
        fresh_parent.mkdir()
        for p in [*partial.rglob("*"), partial, *complete.rglob("*"), complete, fresh_parent]:
            os.chmod(p, 0o555 if p.is_dir() else 0o444)
        with monkeypatch.context() as patched:
            patched.setattr(record_module, "Player", lambda *a, **k: (_ for _ in ()).throw(AssertionError("played")))
            patched.setattr(
                score_module, "compute_saliency", lambda *a, **k: (_ for _ in ()).throw(AssertionError("scored"))
            )
            with unprivileged():
                for target, job in (
                    (partial, lambda: score_store(agent, game, partial, SETTINGS, "c" * 64, FRAMES_PER_CHUNK)),
                    (fresh_parent / "s", lambda: score_store(agent, game, fresh_parent / "s", SETTINGS)),
                    (fresh_parent / "r", lambda: record_rollout(agent, "Pong-v4", STEPS, fresh_parent / "r")),
                ):
                    with pytest.raises(EngineError, match="is not writable") as caught:
                        job()
                    assert "\n" not in str(caught.value) and str(target) in str(caught.value)
                # a complete store needs no writing: it is read, and scoring it again has nothing to do
                done = score_store(agent, game, complete, SETTINGS, "c" * 64, FRAMES_PER_CHUNK)
                assert_equal_maps(done.read(), reference[1])
    finally:
        for p in base.rglob("*"):
            os.chmod(p, 0o755)
        shutil.rmtree(base)


# --- a memory store (the in-memory job's) ------------------------------------------------------------------------


def test_memory_store_is_created_in_place_and_never_adopts_foreign_keys(tmp_path):
    """A MemoryStore root: created in it and reopened through it; one holding other keys, or a read-only one, is
    refused before anything is written; the length of a memory store alone can be cut (max_episodes)."""
    from zarr.core.buffer import default_buffer_prototype
    from zarr.storage import MemoryStore

    from engine.storage.keys import is_memory, store_exists
    from engine.storage.store import check_writable

    layout = {"x": {"tail": [3], "dtype": "<f4", "dims": ["x_axis"], "per": "time"}}
    root = MemoryStore()
    created = ChunkStore.open_or_create(root, {"kind": "saliency", "radius": 3}, layout, 10, 4)
    created.write(0, {"x": np.ones((4, 3), np.float32)})
    assert is_memory(root) and store_exists(root) and ChunkStore(root).completed().tolist() == [True, False, False]
    created.truncate(6)
    again = ChunkStore(root)
    assert again.length == 6 and again.bounds == [(0, 4), (4, 6)] and again.arrays["x"].shape == (6, 3)
    assert np.array_equal(again.read(0)["x"], np.ones((4, 3), np.float32))
    assert again.completed().tolist() == [True, False]
    foreign = MemoryStore()
    foreign.set_sync("notes.txt", default_buffer_prototype().buffer.from_bytes(b"not a store"))
    with pytest.raises(EngineError, match="holds keys but no store manifest"):
        ChunkStore.open_or_create(foreign, {"kind": "saliency"}, layout, 10, 4)
    with pytest.raises(EngineError, match="read-only memory store"):
        check_writable(MemoryStore(read_only=True))
    on_disk = ChunkStore.open_or_create(tmp_path / "s", {"kind": "saliency", "radius": 3}, layout, 10, 4)
    with pytest.raises(EngineError, match="only a memory store is truncated"):
        on_disk.truncate(6)


# --- a chunk moved within its array, or copied from another store: named, then recomputed ------------------------


def copy_chunk(source: Path, target: Path, name: str, k: int, to: int | None = None) -> None:
    """Copy every key of chunk ``k`` of array ``name`` (its file, or its folder of files) from ``source`` to
    position ``to`` (``k`` by default) of ``target``."""
    src, dst = source / name / "c" / str(k), target / name / "c" / str(k if to is None else to)
    if src.is_dir():
        shutil.rmtree(dst, ignore_errors=True)
        shutil.copytree(src, dst)
    else:
        shutil.copy(src, dst)


def test_a_chunk_moved_within_its_array_is_named_and_recomputed(agent, played, reference, tmp_path):
    """Chunk 2 of the actor maps copied over chunk 1: same shape, valid checksum, other frames' maps."""
    copy = fresh_copy(reference, tmp_path)
    copy_chunk(copy, copy, "actor", 2, to=1)
    damaged = SaliencyStore.open(copy)
    assert damaged.complete  # the marker alone cannot tell
    np.testing.assert_array_equal(damaged.read(8, 12)["actor"], reference[1]["actor"][8:12])  # other chunks read
    with pytest.raises(StoreIntegrityError) as caught:
        damaged.read()
    message = str(caught.value)
    assert "\n" not in message and "chunk 1 (steps 4..7) of 'actor' is damaged" in message
    assert "not what its marker recorded" in message and "recomputed by the next run" in message
    assert SaliencyStore.open(copy).missing() == [1]
    assert_equal_maps(score_store(agent, played, copy, SETTINGS, "c" * 64, FRAMES_PER_CHUNK).read(), reference[1])


@pytest.fixture(scope="module")
def other_game(agent, tmp_path_factory):
    """A game of the same shape as ``played``, by another seed."""
    root = tmp_path_factory.mktemp("other") / "rollout"
    record_rollout(agent, "Pong-v4", STEPS, root, seed=2, chunk_steps=8, checkpoint_sha256="c" * 64)
    return root


def test_a_rollout_chunk_copied_from_another_store_is_named_and_rerecorded(agent, played, other_game, tmp_path):
    copy = tmp_path / "r"
    shutil.copytree(played, copy)
    copy_chunk(other_game, copy, "observations", 1)
    with pytest.raises(
        StoreIntegrityError, match=r"chunk 1 \(steps 8\.\.15\) of 'observations' is damaged \(.*not what its marker"
    ):
        RolloutStore.open(copy).read()
    assert RolloutStore.open(copy).completed_chunks() == 1
    again = record_rollout(agent, "Pong-v4", STEPS, copy, seed=1, chunk_steps=8, checkpoint_sha256="c" * 64)
    a, b = again.read(), RolloutStore.open(played).read()
    assert all(np.array_equal(getattr(a, f).numpy(), getattr(b, f).numpy()) for f in ("frames", "observations"))


def test_a_whole_chunk_with_its_marker_copied_from_another_store_is_named_and_rerecorded(
    agent, played, other_game, tmp_path
):
    """Every array of chunk 1 and its marker from a game of another seed: each key is intact and consistent with the
    others, but the marker was written under the other store's manifest."""
    copy = tmp_path / "r"
    shutil.copytree(played, copy)
    for name in [p.name for p in other_game.iterdir() if (p / "zarr.json").is_file()]:
        copy_chunk(other_game, copy, name, 1)
    assert ChunkStore(copy, read_only=True).completed().tolist() == [True, False, True]  # a reader: not complete
    with pytest.raises(StoreIntegrityError) as caught:  # a writer: named, and cleared
        RolloutStore.open(copy)
    message = str(caught.value)
    assert "\n" not in message and "chunk 1 (steps 8..15)" in message and "another store" in message
    assert RolloutStore.open(copy).completed_chunks() == 1
    again = record_rollout(agent, "Pong-v4", STEPS, copy, seed=1, chunk_steps=8, checkpoint_sha256="c" * 64)
    assert np.array_equal(again.read().frames.numpy(), RolloutStore.open(played).read().frames.numpy())


# --- an edited manifest or array metadata: refused --------------------------------------------------------------


def edit_manifest(root: Path, change) -> None:
    meta = json.loads((root / "zarr.json").read_text())
    change(meta["attributes"]["manifest"])
    (root / "zarr.json").write_text(json.dumps(meta))


@pytest.mark.parametrize("field, value", [("seed", 5), ("checkpoint_sha256", "d" * 64)])
def test_an_edited_rollout_manifest_is_refused(agent, played, tmp_path, no_work, field, value):
    """The game's identity edited after recording (another seed, another agent's checkpoint): a scorer would take
    the recorded states for that agent's, and a recording job of those settings would adopt the store."""
    copy = tmp_path / "r"
    shutil.copytree(played, copy)
    edit_manifest(copy, lambda manifest: manifest["identity"].__setitem__(field, value))
    identity = {"seed": 1, "checkpoint_sha256": "c" * 64, field: value}
    for job in (
        lambda: RolloutStore.open(copy),
        lambda: score_store(agent, copy, tmp_path / "s", SETTINGS, identity["checkpoint_sha256"], FRAMES_PER_CHUNK),
        lambda: record_rollout(agent, "Pong-v4", STEPS, copy, chunk_steps=8, **identity),
    ):
        with pytest.raises(StoreIntegrityError) as caught:
            job()
        message = str(caught.value)
        assert "\n" not in message and str(copy) in message and "manifest" in message
        assert "cannot be recomputed without replaying" in message and "record" in message
    assert not (tmp_path / "s").exists()


def test_an_edited_saliency_manifest_is_refused(agent, played, reference, tmp_path):
    copy = fresh_copy(reference, tmp_path)
    edit_manifest(copy, lambda manifest: manifest["identity"]["saliency"].__setitem__("radius", 3))
    with pytest.raises(StoreIntegrityError, match="manifest.*delete the store and score again"):
        score_store(agent, played, copy, SaliencyConfig(density=20, radius=3), "c" * 64, FRAMES_PER_CHUNK)


@pytest.mark.parametrize("where", ["array", "consolidated"])
def test_array_metadata_of_another_byte_order_is_refused(reference, tmp_path, where):
    """The actor array's byte order flipped in its zarr.json (what the engine reads) or in the group's consolidated
    metadata (what xarray reads): either decodes every map to other numbers."""
    copy = fresh_copy(reference, tmp_path)
    path = copy / "actor" / "zarr.json" if where == "array" else copy / "zarr.json"
    document = json.loads(path.read_text())
    meta = document if where == "array" else document["consolidated_metadata"]["metadata"]["actor"]
    (codec,) = [c for c in meta["codecs"] if c["name"] == "bytes"]
    assert codec["configuration"]["endian"] == "little"
    codec["configuration"]["endian"] = "big"
    path.write_text(json.dumps(document))
    with pytest.raises(StoreIntegrityError) as caught:
        SaliencyStore.open(copy)
    message = str(caught.value)
    assert "\n" not in message and "'actor'" in message and "big" in message and "little" in message
    assert ("consolidated" in message) == (where == "consolidated")


def test_a_store_of_the_previous_zarr_format_is_refused(reference, tmp_path):
    copy = fresh_copy(reference, tmp_path)
    edit_manifest(copy, lambda manifest: manifest.__setitem__("format", 3))
    with pytest.raises(EngineError, match=r"older engine \(format 3.*delete it or use another path"):
        SaliencyStore.open(copy)


@pytest.mark.parametrize(
    "change, problem",
    [
        (lambda m: m["layout"]["frames"].pop("per"), "layout entry 'frames' has no 'per'"),
        (lambda m: m.__setitem__("identity", [1, 2]), "identity is a list"),
        (lambda m: m["layout"]["values"].__setitem__("tail", "x"), "layout entry 'values'"),
        (lambda m: m.__setitem__("chunk", 0), "chunk"),
        (lambda m: m["identity"].pop("state_shapes"), "state_shapes"),
    ],
    ids=["no-per", "identity-list", "tail-string", "chunk-0", "no-state-shapes"],
)
def test_a_malformed_manifest_fails_with_one_line(played, tmp_path, change, problem):
    copy = tmp_path / "r"
    shutil.copytree(played, copy)
    edit_manifest(copy, change)
    with pytest.raises(StoreIntegrityError) as caught:
        RolloutStore.open(copy).read()
    message = str(caught.value)
    assert "\n" not in message and str(copy) in message and "malformed manifest" in message and problem in message


# --- chunks and stores larger than they may be: refused with the numbers, before any work ---------------------


@pytest.fixture
def bounded_loops(monkeypatch):
    """Fails the test where the store would loop over more than a million chunks (instead of hanging)."""
    real = store_module.chunk_bounds

    def bounded(total, size):
        if total // size > 10**6:
            raise AssertionError(f"looping over {total // size} chunks")
        return real(total, size)

    monkeypatch.setattr(store_module, "chunk_bounds", bounded)


def test_a_chunk_larger_than_a_chunk_may_be_is_refused_before_any_work(agent, played, tmp_path, monkeypatch):
    """``chunk_steps=1e9`` would make zarr allocate a chunk of a billion frames at the first write."""

    def refuse(*args, **kwargs):
        raise AssertionError("work started before the chunk size was checked")

    monkeypatch.setattr(record_module.Player, "step", refuse)
    monkeypatch.setattr(score_module, "compute_saliency", refuse)
    for root, job, setting in (
        (
            tmp_path / "r",
            lambda: record_rollout(agent, "Pong-v4", STEPS, tmp_path / "r", chunk_steps=10**9),
            "chunk_steps",
        ),
        (
            tmp_path / "s",
            lambda: score_store(agent, played, tmp_path / "s", SETTINGS, "c" * 64, frames_per_chunk=10**9),
            "frames_per_chunk",
        ),
    ):
        with pytest.raises(EngineError) as caught:
            job()
        message = str(caught.value)
        assert "\n" not in message and "1000000000" in message and "GiB" in message, message
        most = int(message.rsplit(f"{setting} <= ", 1)[1].split()[0].rstrip(".:;,)"))
        assert 1000 < most < 20000, message  # a chunk of 1 GiB: about 9,700 steps of Pong, or 6,000 scored frames
        assert not root.exists()


def test_recording_more_steps_than_a_store_can_hold_is_refused_before_playing(agent, tmp_path, no_work, bounded_loops):
    """``rollout.steps=1e23`` hung, making 4e20 chunks."""
    with pytest.raises(EngineError) as caught:
        record_rollout(agent, "Pong-v4", 10**23, tmp_path / "r")
    message = str(caught.value)
    assert "\n" not in message and str(10**23) in message and "at most" in message and "chunks" in message, message
    assert not (tmp_path / "r").exists()


def test_a_memory_store_larger_than_the_memory_available_is_refused_before_playing(agent, monkeypatch):
    from zarr.storage import MemoryStore

    def refuse(*args, **kwargs):
        raise AssertionError("played before the store's size was checked")

    monkeypatch.setattr(record_module.Player, "step", refuse)
    monkeypatch.setattr(layout_module, "available_memory", lambda: 10**9)
    root = MemoryStore()
    with pytest.raises(EngineError) as caught:
        record_rollout(agent, "Pong-v4", 100_000, root, chunk_steps=256)
    message = str(caught.value)
    assert "\n" not in message and "100000 steps" in message and "memory" in message and "at most" in message
    assert not store_exists(root)


@pytest.mark.parametrize("arrays", [False, True], ids=["manifest", "manifest-and-array-metadata"])
def test_a_store_claiming_more_steps_than_a_store_holds_is_refused(agent, played, tmp_path, bounded_loops, arrays):
    """A rollout manifest claiming 1e12 steps (and array metadata to match): scoring it looped over 2.5e11 chunks."""
    claimed = 10**12
    copy = tmp_path / "r"
    shutil.copytree(played, copy)

    def claim(manifest):
        manifest["length"] = manifest["identity"]["num_steps"] = claimed

    edit_manifest(copy, claim)
    if arrays:
        for meta in copy.glob("*/zarr.json"):
            data = json.loads(meta.read_text())
            per_time = data["dimension_names"][0] == "step"
            data["shape"][0] = claimed if per_time else -(-claimed // 8)
            meta.write_text(json.dumps(data))
    with pytest.raises(StoreIntegrityError) as caught:
        score_store(agent, copy, tmp_path / "s", SETTINGS, "c" * 64, FRAMES_PER_CHUNK)
    message = str(caught.value)
    assert "\n" not in message and str(claimed) in message and "at most" in message, message


def test_a_manifest_length_other_than_its_arrays_is_refused(played, tmp_path):
    copy = tmp_path / "r"
    shutil.copytree(played, copy)
    edit_manifest(copy, lambda manifest: manifest.__setitem__("length", 24))
    with pytest.raises(StoreIntegrityError, match=r"'frames' has shape \(20, 210, 160, 3\).*manifest says shape \(24,"):
        RolloutStore.open(copy)


def test_a_reader_in_another_thread_never_sees_a_store_being_truncated():
    """A games job reads a game's rollout store while the recorder cuts it where the game ended: every read made
    while truncate() rewrites the manifest and signs the markers again sees chunk 0 complete, before or after."""
    from zarr.storage import MemoryStore

    layout = {"x": {"tail": [3], "dtype": "<f4", "dims": ["x_axis"], "per": "time"}}
    seen, failures = [], []
    for _ in range(20):
        store = ChunkStore.open_or_create(MemoryStore(), {"kind": "saliency", "radius": 3}, layout, 12, 4)
        store.write(0, {"x": np.ones((4, 3), np.float32)})
        store.write(1, {"x": np.ones((4, 3), np.float32)})
        stop = threading.Event()

        def read(store=store, stop=stop):
            while not stop.is_set():
                try:
                    seen.append(bool(store.completed()[0]) and float(store.read(0)["x"].sum()) == 12.0)
                except Exception as exc:  # a read between the manifest's rewrite and the markers' signing
                    failures.append(repr(exc))

        reader = threading.Thread(target=read)
        reader.start()
        store.truncate(6)
        stop.set()
        reader.join()
    assert not failures and seen and all(seen), (failures[:3], seen.count(False))


def _holding_process(take: str, let_go: str) -> subprocess.Popen:
    """A Python process that runs ``take`` (taking a recording lock), then waits for a line on its stdin before it
    runs ``let_go``; returned once it holds the lock."""
    process = subprocess.Popen(
        [sys.executable, "-c", f"import sys\n{take}print('held', flush=True)\nsys.stdin.readline()\n{let_go}"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    if process.stdout.readline().strip() != "held":
        process.kill()
        pytest.fail("the process did not take the lock")
    return process


def test_a_second_recorder_of_one_store_waits_for_the_first_and_then_finds_it_recorded(tmp_path, caplog):
    """Jobs of a parallel sweep that share store.rollout both recorded the game into it, chunk over chunk; a job now
    waits while another process records it, then finds every chunk written and plays nothing."""
    import logging

    from engine.jobs.record import open_recording
    from engine.policies.loading import load_policy
    from engine.policies.registry import resolve_checkpoint
    from engine.storage.store import RolloutStore

    root = tmp_path / "game"
    other = _holding_process(  # another process records the game, once told to
        "from engine.jobs.record import open_recording\n"
        "from engine.policies.loading import load_policy\n"
        "from engine.policies.registry import resolve_checkpoint\n"
        "agent = load_policy(resolve_checkpoint('builtin/pong'), device='cpu')\n"
        f"recording = open_recording(agent, 'PongNoFrameskip-v4', 6, {str(root)!r}, chunk_steps=4)\n",
        "recording.run()\n",
    )
    try:
        agent = load_policy(resolve_checkpoint("builtin/pong"), device="cpu")
        opened: dict = {}

        def second() -> None:
            recording = open_recording(agent, "PongNoFrameskip-v4", 6, root, chunk_steps=4)
            opened["first"] = recording.first
            recording.run()

        with caplog.at_level(logging.INFO, logger="engine.jobs.record"):
            thread = threading.Thread(target=second)
            thread.start()
            thread.join(timeout=1.0)
            assert thread.is_alive() and not opened  # waiting
            assert "is being recorded by another process: waiting for it to finish" in caplog.text
            other.communicate("go\n", timeout=120)  # it records the game, then lets the lock go
            thread.join(timeout=60)
    finally:
        if other.poll() is None:
            other.kill()
    assert other.returncode == 0 and not thread.is_alive() and opened["first"] == 2 and RolloutStore.open(root).complete


def test_a_recording_this_process_holds_is_named_not_waited_for(tmp_path):
    """A second lock in the process that holds the first would wait for itself forever (a notebook that opened a
    recording and records the store again)."""
    from engine.core.errors import EngineError
    from engine.jobs.record import open_recording
    from engine.policies.loading import load_policy
    from engine.policies.registry import resolve_checkpoint

    agent = load_policy(resolve_checkpoint("builtin/pong"), device="cpu")
    first = open_recording(agent, "PongNoFrameskip-v4", 6, tmp_path / "game", chunk_steps=4)
    with pytest.raises(EngineError, match=r"this process is already recording into .*game.*: run or close it"):
        open_recording(agent, "PongNoFrameskip-v4", 6, tmp_path / "game", chunk_steps=4)
    first.close()
    open_recording(agent, "PongNoFrameskip-v4", 6, tmp_path / "game", chunk_steps=4).run()


@pytest.mark.parametrize("failure", ["flock", "lock file"])
def test_a_file_system_that_refuses_the_lock_records_without_one_and_says_so(tmp_path, monkeypatch, caplog, failure):
    """flock is missing on some NFS, Lustre and FUSE mounts, and the lock file needs a writable parent: both used to
    end the recording in a raw OSError."""
    import errno
    import fcntl
    import logging

    from engine.jobs.record import open_recording
    from engine.policies.loading import load_policy
    from engine.policies.registry import resolve_checkpoint
    from engine.storage import keys

    def refuse(*args, **kwargs):
        raise OSError(errno.ENOSYS, "Function not implemented")

    monkeypatch.setattr(
        fcntl if failure == "flock" else keys, "flock" if failure == "flock" else "open", refuse, raising=False
    )
    agent = load_policy(resolve_checkpoint("builtin/pong"), device="cpu")
    with caplog.at_level(logging.WARNING, logger="engine.storage.keys"):
        open_recording(agent, "PongNoFrameskip-v4", 6, tmp_path / "game", chunk_steps=4).run()
    assert "no recording lock for" in caplog.text and "concurrent jobs must not record it" in caplog.text


def test_a_recording_lock_dropped_unreleased_frees_its_store(tmp_path):
    """A holder dropped without run() or close() (an exception in a notebook) closes its file, which frees the
    flock; the process's own record of it must not refuse the store for the rest of the session."""
    import gc

    from engine.core.errors import EngineError
    from engine.storage.keys import RecordingLocks

    held = RecordingLocks([tmp_path / "store"])
    held.acquire()
    with pytest.raises(EngineError, match="this process is already recording into"):
        RecordingLocks([tmp_path / "store"]).acquire()
    del held
    gc.collect()
    again = RecordingLocks([tmp_path / "store"])
    again.acquire(waiting=lambda store: pytest.fail("waited for a lock nobody holds"))
    again.release()


def test_recording_leaves_no_lock_file_and_a_refused_one_leaves_nothing(tmp_path):
    """The lock file went on lying beside a store after its recording, and beside the store a refused job never
    wrote (a chunk too large for memory is refused once the player knows its bytes a step, under the lock)."""
    from engine.jobs.record import open_recording
    from engine.policies.loading import load_policy
    from engine.policies.registry import resolve_checkpoint

    agent = load_policy(resolve_checkpoint("builtin/pong"), device="cpu")
    with pytest.raises(EngineError, match="more than the 1 GiB a chunk may take"):
        open_recording(agent, "PongNoFrameskip-v4", 10**6, tmp_path / "refused", chunk_steps=10**6)
    assert list(tmp_path.iterdir()) == []
    open_recording(agent, "PongNoFrameskip-v4", 6, tmp_path / "game", chunk_steps=4).run()
    assert [p.name for p in tmp_path.iterdir()] == ["game"]


def test_a_lock_taken_on_a_removed_lock_file_is_taken_again_on_the_new_one(tmp_path):
    """A holder removes the lock file before it lets the lock go; a process that was waiting on that file then
    holds a lock nobody else can see, so it must lock the file at the path instead (or two would record)."""
    from engine.storage.keys import RecordingLocks

    store = tmp_path / "store"
    holder = _holding_process(
        f"from engine.storage.keys import RecordingLocks\nlocks = RecordingLocks([{str(store)!r}])\nlocks.acquire()\n",
        "locks.release()\n",
    )
    try:
        waited: list = []
        locks = RecordingLocks([store])
        thread = threading.Thread(target=locks.acquire, kwargs={"waiting": waited.append})
        thread.start()
        thread.join(timeout=1.0)
        assert thread.is_alive() and waited == [store]
        holder.communicate("go\n", timeout=60)
        thread.join(timeout=60)
    finally:
        if holder.poll() is None:
            holder.kill()
    assert holder.returncode == 0 and not thread.is_alive() and waited == [store]
    (path,), (held,) = locks._held, locks._files
    assert os.stat(path).st_ino == os.fstat(held.fileno()).st_ino  # the file at the path, not the removed one
    locks.release()
    assert list(tmp_path.iterdir()) == []
