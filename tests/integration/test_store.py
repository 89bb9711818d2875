"""Rollout and saliency stores: round trip, resume after a kill, refusal to mix, shards, other checkpoints."""

import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from engine.core.files import sha256_of
from engine.core.replay import replay_states
from engine.core.saliency import compute_saliency, paper_shift
from engine.core.settings import SaliencyConfig
from engine.env.rollout import rollout
from engine.jobs.record import record_rollout
from engine.jobs.score import score_store
from engine.policies.greydanus2017 import load_agent
from engine.storage.store import RolloutStore, SaliencyStore, StoreMismatchError
from tests.conftest import ROOT, checkpoint

STEPS, CHUNK = 70, 32
SETTINGS = SaliencyConfig(density=10)


@pytest.fixture(scope="module")
def recorded(tmp_path_factory, pong_agent, pong_checkpoint):
    root = tmp_path_factory.mktemp("rollout")
    sha = sha256_of(pong_checkpoint)
    return record_rollout(
        pong_agent, "Pong-v4", STEPS, root, seed=3, chunk_steps=CHUNK, checkpoint_sha256=sha, progress=False
    ), sha


def test_rollout_store_round_trip(recorded, pong_agent):
    store, _ = recorded
    memory = rollout(pong_agent, "Pong-v4", STEPS, seed=3, progress=False)
    back = RolloutStore.open(store.store.root).read()
    for name in ("frames", "logits", "values", "actions", "rewards", "dones"):
        assert torch.equal(getattr(back, name), getattr(memory, name)), name
    assert torch.equal(back.states[0], memory.states[0]) and back.env_id == "Pong-v4" and back.seed == 3
    part = store.read(30, 40)  # a slice across a chunk boundary loads only what it needs
    assert torch.equal(part.frames, memory.frames[30:40]) and torch.equal(part.states[0], memory.states[0][30:40])


def unfinish(root, chunk: int, arrays=("frames", "observations")) -> None:
    """As if the writer of ``chunk`` was killed before its marker: the marker gone, some of its arrays too."""
    shutil.rmtree(root / "complete" / "c" / str(chunk))
    for name in arrays:
        shutil.rmtree(root / name / "c" / str(chunk))


def chunk_arrays(store, k):
    return store.store.read(k)


def test_recording_resumes_to_the_same_arrays(recorded, pong_agent, tmp_path, caplog):
    store, sha = recorded
    copy = tmp_path / "copy"
    record_rollout(pong_agent, "Pong-v4", STEPS, copy, seed=3, chunk_steps=CHUNK, checkpoint_sha256=sha, progress=False)
    unfinish(copy, 2)
    unfinish(copy, 1, arrays=("frames",))  # as if killed after the first chunk, with a half-written key left behind
    half = copy / "observations" / "c" / "1" / "0" / "0" / ".0.killed.partial"
    half.write_bytes(b"half a chunk")
    assert RolloutStore.open(copy).completed_chunks() == 1
    with caplog.at_level("INFO"):
        resumed = record_rollout(
            pong_agent, "Pong-v4", STEPS, copy, seed=3, chunk_steps=CHUNK, checkpoint_sha256=sha, progress=False
        )
    assert resumed.complete and f"resuming the recording in {copy} at chunk 1 of 3 (step {CHUNK})" in caplog.text
    for k in range(3):
        a, b = chunk_arrays(resumed, k), chunk_arrays(store, k)
        assert a.keys() == b.keys() and all(np.array_equal(a[key], b[key]) for key in b), k
    assert half.read_bytes() == b"half a chunk"  # another writer's key: never deleted, never read


def test_saliency_store_equals_in_memory_and_shards_union(recorded, pong_agent, tmp_path):
    store, sha = recorded
    r = store.read()
    expected = compute_saliency(pong_agent, r.frames, r.states, SETTINGS)
    single = score_store(
        pong_agent, store.store.root, tmp_path / "one", SETTINGS, sha, frames_per_chunk=16, progress=False
    ).read()
    assert np.array_equal(single["actor"], expected["actor"].numpy())
    assert np.array_equal(single["critic_scores"], expected["critic_scores"].numpy())
    score_store(
        pong_agent,
        store.store.root,
        tmp_path / "sharded",
        SETTINGS,
        sha,
        frames_per_chunk=16,
        shard=1,
        num_shards=2,
        progress=False,
    )
    assert SaliencyStore.open(tmp_path / "sharded").missing() == [0, 2, 4]  # disjoint: shard 1 wrote 1 and 3
    union = score_store(
        pong_agent,
        store.store.root,
        tmp_path / "sharded",
        SETTINGS,
        sha,
        frames_per_chunk=16,
        shard=0,
        num_shards=2,
        progress=False,
    )
    assert all(np.array_equal(union.read()[k], single[k]) for k in single)


def test_other_checkpoint_replays_the_same_game(recorded, tmp_path):
    store, _ = recorded
    r = store.read()
    later = load_agent(checkpoint("pong", 80), device="cpu")
    own, _ = replay_states(later, r.observations, r.dones, later.initial_state(1), with_next=True)
    assert not torch.equal(own[0], r.states[0])  # its own memory of the same frames
    for alignment in ("exact", "paper"):
        settings = SaliencyConfig(density=10, state_alignment=alignment)
        got = score_store(
            later,
            store.store.root,
            tmp_path / alignment,
            settings,
            sha256_of(checkpoint("pong", 80)),
            frames_per_chunk=16,
            progress=False,
        )
        states = own if alignment == "exact" else paper_shift(own)
        assert np.array_equal(got.read()["actor"], compute_saliency(later, r.frames, states, settings)["actor"].numpy())


def test_replaying_the_recording_agent_gives_its_recorded_states(recorded, pong_agent):
    r = recorded[0].read()
    states, _ = replay_states(pong_agent, r.observations, r.dones, pong_agent.initial_state(1), with_next=True)
    assert torch.equal(states[0], r.states[0])


def test_paper_alignment_across_chunks(recorded, pong_agent, tmp_path):
    store, sha = recorded
    r = store.read()
    settings = SaliencyConfig(density=10, state_alignment="paper")
    got = score_store(
        pong_agent, store.store.root, tmp_path / "p", settings, sha, frames_per_chunk=16, progress=False
    ).read()
    assert np.array_equal(
        got["actor"], compute_saliency(pong_agent, r.frames, paper_shift(r.states), settings)["actor"].numpy()
    )


def test_mismatched_stores_are_refused(recorded, pong_agent, tmp_path):
    store, sha = recorded
    score_store(
        pong_agent,
        store.store.root,
        tmp_path / "s",
        SETTINGS,
        sha,
        frames_per_chunk=16,
        shard=0,
        num_shards=5,
        progress=False,
    )
    with pytest.raises(StoreMismatchError, match=r"density: store has 10, this job 5|'density': 10"):
        score_store(
            pong_agent,
            store.store.root,
            tmp_path / "s",
            SaliencyConfig(density=5),
            sha,
            frames_per_chunk=16,
            progress=False,
        )
    with pytest.raises(StoreMismatchError, match="checkpoint_sha256"):
        score_store(
            pong_agent, store.store.root, tmp_path / "s", SETTINGS, "0" * 64, frames_per_chunk=16, progress=False
        )
    with pytest.raises(StoreMismatchError, match="seed: store has 3, this job 4"):
        record_rollout(
            pong_agent,
            "Pong-v4",
            STEPS,
            store.store.root,
            seed=4,
            chunk_steps=CHUNK,
            checkpoint_sha256=sha,
            progress=False,
        )
    with pytest.raises(ValueError, match="shard"):
        score_store(pong_agent, store.store.root, tmp_path / "t", SETTINGS, sha, shard=2, num_shards=2, progress=False)


def test_a_store_of_another_checkpoint_names_the_file_it_was_written_with(pong_agent, tmp_path):
    """Two sweeps racing for one store meet here, past their prechecks: the refusal gave two bare sha256s."""
    root = tmp_path / "game"
    first = dict(chunk_steps=4, progress=False)
    record_rollout(
        pong_agent, "Pong-v4", 4, root, checkpoint_sha256="a" * 64, extra={"checkpoint": "/ck/x.pt"}, **first
    )
    with pytest.raises(StoreMismatchError, match=r"this job 'b{64}'; the store's was written with /ck/x.pt\)"):
        record_rollout(pong_agent, "Pong-v4", 4, root, checkpoint_sha256="b" * 64, **first)


KILLED_JOB = """
import sys, time

from engine.policies.greydanus2017 import load_agent
from engine.core.settings import SaliencyConfig
from engine.jobs import score
from engine.storage.arrays import atomic_path
from engine.storage.keys import Keys

checkpoint, rollout_root, target, sha, stop_after, ready = sys.argv[1:]
real_set, markers = Keys.set, []


async def keyset(self, key, value):  # the store's write of one key (atomic: a temporary file, then renamed)
    if key.startswith("complete/c/"):
        markers.append(key)
    elif len(markers) == int(stop_after) and key.startswith("critic/c/"):
        # the next chunk: its actor maps are written; write half of its critic maps, say so, wait for the kill
        data = value.to_bytes()
        atomic_path(self.local_root / key).write_bytes(data[: len(data) // 2])
        open(ready, "w").close()
        time.sleep(3600)
    await real_set(self, key, value)


Keys.set = keyset
agent = load_agent(checkpoint, device="cpu")
score.score_store(agent, rollout_root, target, SaliencyConfig(density=10), sha, frames_per_chunk=4, progress=False)
"""


def test_killed_saliency_job_resumes_to_identical_arrays(recorded, pong_agent, pong_checkpoint, tmp_path):
    """SIGKILL in the middle of writing the 4th chunk (the job stops there by itself, so nothing depends on
    timing): 3 marked chunks, the 4th's actor maps and half of its critic maps in a temporary file remain;
    started again, the job ends with exactly the arrays of an uninterrupted run."""
    store, sha = recorded
    target, ready, log = tmp_path / "killed", tmp_path / "ready", tmp_path / "job.log"
    with open(log, "wb") as output:
        job = subprocess.Popen(
            [
                sys.executable,
                "-c",
                KILLED_JOB,
                str(pong_checkpoint),
                str(store.store.root),
                str(target),
                sha,
                "3",
                str(ready),
            ],
            cwd=ROOT,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    try:
        hang_guard = time.monotonic() + 600  # only against a hung job; how fast it gets there does not matter
        while not ready.exists():
            if job.poll() is not None:
                pytest.fail(f"the job exited ({job.returncode}) before its 4th chunk:\n{log.read_text()[-3000:]}")
            if time.monotonic() > hang_guard:
                pytest.fail(f"the job hung before its 4th chunk:\n{log.read_text()[-3000:]}")
            time.sleep(0.05)
    finally:
        job.send_signal(signal.SIGKILL)
        job.wait()
    assert job.returncode == -signal.SIGKILL
    assert sorted(p.name for p in (target / "complete" / "c").iterdir()) == ["0", "1", "2"]
    assert (target / "actor" / "c" / "3" / "0" / "0").is_file()  # written, but the chunk is not marked
    (partial,) = (target / "critic" / "c" / "3" / "0").glob(".*.partial")
    assert partial.stat().st_size > 0 and not (target / "critic" / "c" / "3" / "0" / "0").exists()  # killed mid-write
    assert SaliencyStore.open(target).missing() == list(range(3, 18))
    settings = SaliencyConfig(density=10)
    resumed = score_store(pong_agent, store.store.root, target, settings, sha, frames_per_chunk=4, progress=False)
    fresh = score_store(
        pong_agent, store.store.root, tmp_path / "fresh", settings, sha, frames_per_chunk=4, progress=False
    )
    a, b = resumed.read(), fresh.read()
    assert a.keys() == b.keys() == {"actor", "critic", "actor_scores", "critic_scores"}
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert a["actor"].shape == (STEPS, 80, 80) and a["actor"].max() > 0 and resumed.complete


# --- the zarr layout: xarray opens a store, a slice loads only its chunks -----------------------------------------


def test_xarray_opens_each_store_with_named_dimensions(recorded, pong_agent, tmp_path):
    import warnings

    xr = pytest.importorskip("xarray", reason="xarray is not installed (pip install xarray)")
    store, sha = recorded
    scored = score_store(
        pong_agent, store.store.root, tmp_path / "s", SETTINGS, sha, frames_per_chunk=16, progress=False
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. xarray's "no consolidated metadata" warning
        played, maps = xr.open_zarr(store.store.root), xr.open_zarr(tmp_path / "s")
    assert played["frames"].dims == ("step", "frame_y", "frame_x", "frame_rgb")
    assert played["observations"].dims == ("step", "obs_channel", "obs_y", "obs_x")
    assert played["logits"].dims == ("step", "action") and played["state_0"].dims == ("step", "state_0_axis_1")
    assert played["sampler_state"].dims == ("chunk", "sampler_byte") and played.sizes["chunk"] == 3
    assert dict(played.sizes) == {
        "step": STEPS,
        "chunk": 3,
        "frame_y": 210,
        "frame_x": 160,
        "frame_rgb": 3,
        "action": 6,
        "obs_channel": 1,
        "obs_y": 80,
        "obs_x": 80,
        "state_0_axis_1": 256,
        "sampler_byte": 5056,
        "marker_byte": 32 * (1 + 9),  # the manifest's hash, then one per array (7 fields, state_0, sampler_state)
    }
    assert maps["actor"].dims == ("frame", "map_y", "map_x") and maps["actor_scores"].dims == (
        "frame",
        "grid_y",
        "grid_x",
    )
    assert (
        played.attrs["manifest"]["identity"]["seed"] == 3
        and maps.attrs["manifest"]["identity"]["saliency"]["density"] == 10
    )
    r, m = store.read(), scored.read()
    assert np.array_equal(played["frames"][40:45].values, r.frames[40:45].numpy())  # lazy: loads one chunk
    assert np.array_equal(played["state_0"].values, r.states[0].numpy())
    assert np.array_equal(maps["critic"].values, m["critic"])
    assert maps["complete"].dims == ("chunk", "marker_byte") and bool((maps["complete"] != 0).any("marker_byte").all())


def test_reading_a_slice_loads_only_its_chunks(recorded):
    store, _ = recorded
    opened = RolloutStore.open(store.store.root)
    opened.store.keys.reads = []
    part = opened.read(30, 40)  # chunks 0 (steps 0..31) and 1 (32..63), not 2
    chunk_keys = {k for k in opened.store.keys.reads if "/c/" in k and not k.startswith("complete/")}
    assert {k.split("/")[0] for k in chunk_keys} == {
        "frames",
        "observations",
        "logits",
        "values",
        "actions",
        "rewards",
        "dones",
        "state_0",
    }
    assert {k.split("/")[2] for k in chunk_keys} == {"0", "1"}
    assert torch.equal(part.frames, store.read().frames[30:40])
    opened.store.keys.reads = []
    opened.read(64, 70)
    assert {k.split("/")[2] for k in opened.store.keys.reads if "/c/" in k and not k.startswith("complete/")} == {"2"}


# --- any policy: a Nature-CNN agent in CleanRL's pipeline (feed-forward, and with an LSTM core) ---------------


@pytest.mark.parametrize("recurrent", [False, True], ids=["feedforward", "lstm"])
def test_store_of_any_policy_records_observations_and_replays_them(tmp_path, recurrent):
    from tests.integration.test_any_policy import NatureAgent

    torch.manual_seed(5)
    agent = NatureAgent(recurrent=recurrent, num_actions=4).eval()  # Breakout's 4 actions
    store = record_rollout(
        agent,
        "BreakoutNoFrameskip-v4",
        12,
        tmp_path / "r",
        seed=2,
        chunk_steps=5,
        checkpoint_sha256="a" * 64,
        progress=False,
    )
    r = store.read()
    assert (
        r.observations.shape == (12, 4, 84, 84)
        and r.observations.dtype == torch.uint8
        and r.frames.shape == (12, 210, 160, 3)
    )
    assert r.action_names[:2] == ("NOOP", "FIRE") and r.pipeline["name"] == "cleanrl_atari"
    assert len(r.states) == (2 if recurrent else 0)
    settings = SaliencyConfig(density=28, score="action_logprob")
    scored = score_store(
        agent, store.store.root, tmp_path / "s", settings, "a" * 64, frames_per_chunk=4, progress=False
    )
    expected = compute_saliency(agent, r.observations, r.states, settings, actions=r.actions)
    assert np.array_equal(scored.read()["actor_scores"], expected["actor_scores"].numpy())
    assert float(expected["actor_scores"].max()) > 0
    # another agent replays the recorded observations to get its own states, chunk boundaries included
    torch.manual_seed(6)
    other = NatureAgent(recurrent=recurrent, num_actions=4).eval()
    replayed = score_store(
        other, store.store.root, tmp_path / "s2", settings, "b" * 64, frames_per_chunk=4, progress=False
    )
    own, _ = replay_states(other, r.observations, r.dones, other.initial_state(1), with_next=True)
    assert np.array_equal(
        replayed.read()["actor_scores"],
        compute_saliency(other, r.observations, own, settings, actions=r.actions)["actor_scores"].numpy(),
    )
    if recurrent:  # the recording agent's replayed states are its recorded ones, bit for bit
        again, _ = replay_states(agent, r.observations, r.dones, agent.initial_state(1), with_next=True)
        assert all(torch.equal(a, b) for a, b in zip(again, r.states))


# --- stores in memory: the in-memory main job's ----------------------------------------------------------------


def test_a_memory_recording_ends_with_max_episodes_like_a_rollout(tmp_path):
    """``max_episodes`` stops the recording inside a chunk; the memory store is cut there and equals the rollout
    that stopped after as many episodes. A store on disk keeps its length: there it is refused."""
    from zarr.storage import MemoryStore

    from tests.integration.test_rollout import TinyPolicy

    agent = TinyPolicy("sb3_atari", seed=3)
    options = dict(seed=6, max_episodes=2, episodic_life=True)
    played = rollout(agent, "BreakoutNoFrameskip-v4", 400, progress=False, **options)
    store = record_rollout(
        agent, "BreakoutNoFrameskip-v4", 400, MemoryStore(), chunk_steps=16, progress=False, **options
    )
    assert 0 < len(played) < 400 and len(played) % 16 and store.complete and store.num_steps == len(played)
    assert len(store.bounds) == -(-len(played) // 16) and store.store.marker.shape[0] == len(store.bounds)
    back = store.read()
    for name in ("frames", "observations", "logits", "values", "actions", "rewards", "dones"):
        assert torch.equal(getattr(back, name), getattr(played, name)), name
    settings = SaliencyConfig(method="jacobian")  # scored from the memory store into another: the rollout's maps
    maps = score_store(agent, store.store.root, MemoryStore(), settings, "e" * 64, frames_per_chunk=32, progress=False)
    expected = compute_saliency(agent, played.observations, played.states, settings, actions=played.actions)
    assert maps.complete and all(np.array_equal(maps.read()[k], expected[k].numpy()) for k in expected)
    with pytest.raises(ValueError, match="needs a memory store"):
        record_rollout(agent, "BreakoutNoFrameskip-v4", 400, tmp_path / "r", progress=False, **options)
    assert not (tmp_path / "r").exists()


def test_a_full_disk_stops_recording_with_what_to_do_and_the_rerun_resumes(recorded, pong_agent, tmp_path, monkeypatch):
    """The disk fills up while chunk 1 is written: one clear error (what is kept, how much more is needed, how to
    resume), chunk 0 kept, nothing half-written adopted; after space is freed, the same call finishes the store
    with exactly the arrays of an uninterrupted recording."""
    import errno
    from pathlib import Path

    from engine.core.errors import EngineError

    store, sha = recorded
    real_write_bytes = Path.write_bytes

    def full_from_chunk_1(path, data):
        if "/c/1/" in str(path):
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real_write_bytes(path, data)

    copy = tmp_path / "copy"
    monkeypatch.setattr(Path, "write_bytes", full_from_chunk_1)
    with pytest.raises(
        EngineError, match=r"is full .* chunk 1 was not written; the 1 complete chunk\(s\) are kept.*resumes"
    ):
        record_rollout(
            pong_agent, "Pong-v4", STEPS, copy, seed=3, chunk_steps=CHUNK, checkpoint_sha256=sha, progress=False
        )
    monkeypatch.undo()
    assert RolloutStore.open(copy).completed_chunks() == 1
    resumed = record_rollout(
        pong_agent, "Pong-v4", STEPS, copy, seed=3, chunk_steps=CHUNK, checkpoint_sha256=sha, progress=False
    )
    for k in range(3):
        a, b = chunk_arrays(resumed, k), chunk_arrays(store, k)
        assert a.keys() == b.keys() and all(np.array_equal(a[key], b[key]) for key in b), k


def test_a_read_checks_the_markers_of_its_own_chunks_only(recorded, pong_agent, tmp_path, monkeypatch):
    """Reading a window of a store read every chunk's marker, on every read: quadratic in the rollout's length over a
    long job's chunk-by-chunk reads (scoring, report, metrics). A read now checks the chunks it loads."""
    from engine.storage.store import ChunkStore

    store, sha = recorded
    sstore = score_store(
        pong_agent, store.store.root, tmp_path / "maps", SaliencyConfig(density=20), sha, frames_per_chunk=16
    )
    rows: list[tuple[int, int]] = []
    real = ChunkStore._marker_rows
    monkeypatch.setattr(ChunkStore, "_marker_rows", lambda self, a, b: rows.append((a, b)) or real(self, a, b))
    rstore = RolloutStore.open(store.store.root)
    assert len(rstore.bounds) > 2 and len(sstore.bounds) > 2
    rows.clear()
    rstore.read(*rstore.bounds[1])
    sstore.read(*sstore.bounds[2])
    assert set(rows) == {(1, 2), (2, 3)}  # (each array of the chunk checks its marker too)
    assert torch.equal(rstore.read(*rstore.bounds[1]).frames, rstore.read().frames[slice(*rstore.bounds[1])])
