"""Rollout and saliency stores: round trip, resume after a kill, refusal to mix, shards, other checkpoints."""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from engine.core.settings import SaliencyConfig
from engine.core.saliency import compute_saliency, paper_shift
from engine.core.policy import load_agent
from engine.io.registry import sha256_of
from engine.env.rollout import rollout
from engine.io.store import RolloutStore, SaliencyStore, StoreMismatchError, record_rollout, replay_states, score_store
from tests.conftest import ROOT, checkpoint

STEPS, CHUNK = 70, 32
SETTINGS = SaliencyConfig(density=10)


@pytest.fixture(scope="module")
def recorded(tmp_path_factory, pong_agent, pong_checkpoint):
    root = tmp_path_factory.mktemp("rollout")
    sha = sha256_of(pong_checkpoint)
    return record_rollout(pong_agent, "Pong-v4", STEPS, root, seed=3, chunk_steps=CHUNK, checkpoint_sha256=sha, progress=False), sha


def test_rollout_store_round_trip(recorded, pong_agent):
    store, _ = recorded
    memory = rollout(pong_agent, "Pong-v4", STEPS, seed=3, progress=False)
    back = RolloutStore.open(store.store.root).read()
    for name in ("frames", "logits", "values", "actions", "rewards", "dones"):
        assert torch.equal(getattr(back, name), getattr(memory, name)), name
    assert torch.equal(back.states[0], memory.states[0]) and back.env_id == "Pong-v4" and back.seed == 3
    part = store.read(30, 40)  # a slice across a chunk boundary loads only what it needs
    assert torch.equal(part.frames, memory.frames[30:40]) and torch.equal(part.states[0], memory.states[0][30:40])


def test_recording_resumes_to_the_same_arrays(recorded, pong_agent, tmp_path):
    store, sha = recorded
    copy = tmp_path / "copy"
    record_rollout(pong_agent, "Pong-v4", STEPS, copy, seed=3, chunk_steps=CHUNK, checkpoint_sha256=sha, progress=False)
    for k in (2, 1):  # as if killed after the first chunk, with a half-written file left behind
        os.remove(copy / "chunks" / f"{k:06d}.npz")
    (copy / "chunks" / ".000001.npz.x.npz.partial").write_bytes(b"half a chunk")
    resumed = record_rollout(pong_agent, "Pong-v4", STEPS, copy, seed=3, chunk_steps=CHUNK, checkpoint_sha256=sha, progress=False)
    for k in range(3):
        a, b = resumed.store.read(k), store.store.read(k)
        assert all(np.array_equal(a[key], b[key]) for key in b), k
    assert sorted(p.name for p in (copy / "chunks").iterdir()) == ["000000.npz", "000001.npz", "000002.npz"]


def test_saliency_store_equals_in_memory_and_shards_union(recorded, pong_agent, tmp_path):
    store, sha = recorded
    r = store.read()
    expected = compute_saliency(pong_agent, r.frames, r.states, SETTINGS)
    single = score_store(pong_agent, store.store.root, tmp_path / "one", SETTINGS, sha, frames_per_chunk=16, progress=False).read()
    assert np.array_equal(single["actor"], expected["actor"].numpy())
    assert np.array_equal(single["critic_scores"], expected["critic_scores"].numpy())
    score_store(pong_agent, store.store.root, tmp_path / "sharded", SETTINGS, sha, frames_per_chunk=16, shard=1, num_shards=2, progress=False)
    assert SaliencyStore.open(tmp_path / "sharded").missing() == [0, 2, 4]  # disjoint: shard 1 wrote 1 and 3
    union = score_store(pong_agent, store.store.root, tmp_path / "sharded", SETTINGS, sha, frames_per_chunk=16, shard=0, num_shards=2, progress=False)
    assert all(np.array_equal(union.read()[k], single[k]) for k in single)


def test_other_checkpoint_replays_the_same_game(recorded, tmp_path):
    store, _ = recorded
    r = store.read()
    later = load_agent(checkpoint("pong", 80), device="cpu")
    own, _ = replay_states(later, r.observations, r.dones, later.initial_state(1))
    assert not torch.equal(own[0], r.states[0])  # its own memory of the same frames
    for alignment in ("exact", "paper"):
        settings = SaliencyConfig(density=10, state_alignment=alignment)
        got = score_store(later, store.store.root, tmp_path / alignment, settings, sha256_of(checkpoint("pong", 80)), frames_per_chunk=16, progress=False)
        states = own if alignment == "exact" else paper_shift(own)
        assert np.array_equal(got.read()["actor"], compute_saliency(later, r.frames, states, settings)["actor"].numpy())


def test_replaying_the_recording_agent_gives_its_recorded_states(recorded, pong_agent):
    r = recorded[0].read()
    states, _ = replay_states(pong_agent, r.observations, r.dones, pong_agent.initial_state(1))
    assert torch.equal(states[0], r.states[0])


def test_paper_alignment_across_chunks(recorded, pong_agent, tmp_path):
    store, sha = recorded
    r = store.read()
    settings = SaliencyConfig(density=10, state_alignment="paper")
    got = score_store(pong_agent, store.store.root, tmp_path / "p", settings, sha, frames_per_chunk=16, progress=False).read()
    assert np.array_equal(got["actor"], compute_saliency(pong_agent, r.frames, paper_shift(r.states), settings)["actor"].numpy())


def test_mismatched_stores_are_refused(recorded, pong_agent, tmp_path):
    store, sha = recorded
    score_store(pong_agent, store.store.root, tmp_path / "s", SETTINGS, sha, frames_per_chunk=16, shard=0, num_shards=5, progress=False)
    with pytest.raises(StoreMismatchError, match=r"density: store has 10, this job 5|'density': 10"):
        score_store(pong_agent, store.store.root, tmp_path / "s", SaliencyConfig(density=5), sha, frames_per_chunk=16, progress=False)
    with pytest.raises(StoreMismatchError, match="checkpoint_sha256"):
        score_store(pong_agent, store.store.root, tmp_path / "s", SETTINGS, "0" * 64, frames_per_chunk=16, progress=False)
    with pytest.raises(StoreMismatchError, match="seed: store has 3, this job 4"):
        record_rollout(pong_agent, "Pong-v4", STEPS, store.store.root, seed=4, chunk_steps=CHUNK, checkpoint_sha256=sha, progress=False)
    with pytest.raises(ValueError, match="shard"):
        score_store(pong_agent, store.store.root, tmp_path / "t", SETTINGS, sha, shard=2, num_shards=2, progress=False)


KILLED_JOB = """
import io, sys, time

import numpy as np

from engine.core.policy import load_agent
from engine.core.settings import SaliencyConfig
from engine.io import arrays
from engine.io.store import score_store

checkpoint, rollout_root, target, sha, stop_after, ready = sys.argv[1:]
real_savez, finished = np.savez, []


def savez(file, *args, **kwds):  # save_arrays' write of one chunk into its temporary file
    if len(finished) == int(stop_after):  # the next chunk: write half of it, say so, and wait for the kill
        buffer = io.BytesIO()
        real_savez(buffer, *args, **kwds)
        file.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
        file.flush()
        open(ready, "w").close()
        time.sleep(3600)
    real_savez(file, *args, **kwds)
    finished.append(file.name)


arrays.np.savez = savez
agent = load_agent(checkpoint, device="cpu")
score_store(agent, rollout_root, target, SaliencyConfig(density=10), sha, frames_per_chunk=4, progress=False)
"""


def test_killed_saliency_job_resumes_to_identical_arrays(recorded, pong_agent, pong_checkpoint, tmp_path):
    """SIGKILL in the middle of writing the 4th chunk (the job stops there by itself, so nothing depends on
    timing): 3 finished chunks and a half-written temporary remain; started again, the job ends with exactly
    the arrays of an uninterrupted run."""
    store, sha = recorded
    target, ready, log = tmp_path / "killed", tmp_path / "ready", tmp_path / "job.log"
    with open(log, "wb") as output:
        job = subprocess.Popen(
            [sys.executable, "-c", KILLED_JOB, str(pong_checkpoint), str(store.store.root), str(target), sha, "3", str(ready)],
            cwd=ROOT, stdout=output, stderr=subprocess.STDOUT,
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
    chunks = target / "chunks"
    assert sorted(p.name for p in chunks.glob("*.npz")) == ["000000.npz", "000001.npz", "000002.npz"]
    (partial,) = chunks.glob(".*.partial")
    assert partial.name.startswith(".000003.npz.") and partial.stat().st_size > 0  # killed mid-write
    assert SaliencyStore.open(target).missing() == list(range(3, 18))
    settings = SaliencyConfig(density=10)
    resumed = score_store(pong_agent, store.store.root, target, settings, sha, frames_per_chunk=4, progress=False)
    fresh = score_store(pong_agent, store.store.root, tmp_path / "fresh", settings, sha, frames_per_chunk=4, progress=False)
    a, b = resumed.read(), fresh.read()
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    assert a["actor"].shape == (STEPS, 80, 80) and a["actor"].max() > 0
    assert not list(chunks.glob("*.partial")) and resumed.complete


# --- any policy: a Nature-CNN agent in CleanRL's pipeline (feed-forward, and with an LSTM core) ---------------


@pytest.mark.parametrize("recurrent", [False, True], ids=["feedforward", "lstm"])
def test_store_of_any_policy_records_observations_and_replays_them(tmp_path, recurrent):
    from tests.test_any_policy import NatureAgent

    torch.manual_seed(5)
    agent = NatureAgent(recurrent=recurrent, num_actions=4).eval()  # Breakout's 4 actions
    store = record_rollout(agent, "BreakoutNoFrameskip-v4", 12, tmp_path / "r", seed=2, chunk_steps=5,
                           checkpoint_sha256="a" * 64, progress=False)
    r = store.read()
    assert r.observations.shape == (12, 4, 84, 84) and r.observations.dtype == torch.uint8 and r.frames.shape == (12, 210, 160, 3)
    assert r.action_names[:2] == ("NOOP", "FIRE") and r.pipeline["name"] == "cleanrl_atari"
    assert len(r.states) == (2 if recurrent else 0)
    settings = SaliencyConfig(density=28, score="action_logprob")
    scored = score_store(agent, store.store.root, tmp_path / "s", settings, "a" * 64, frames_per_chunk=4, progress=False)
    expected = compute_saliency(agent, r.observations, r.states, settings, actions=r.actions)
    assert np.array_equal(scored.read()["actor_scores"], expected["actor_scores"].numpy())
    assert float(expected["actor_scores"].max()) > 0
    # another agent replays the recorded observations to get its own states, chunk boundaries included
    torch.manual_seed(6)
    other = NatureAgent(recurrent=recurrent, num_actions=4).eval()
    replayed = score_store(other, store.store.root, tmp_path / "s2", settings, "b" * 64, frames_per_chunk=4, progress=False)
    own, _ = replay_states(other, r.observations, r.dones, other.initial_state(1))
    assert np.array_equal(replayed.read()["actor_scores"],
                          compute_saliency(other, r.observations, own, settings, actions=r.actions)["actor_scores"].numpy())
    if recurrent:  # the recording agent's replayed states are its recorded ones, bit for bit
        again, _ = replay_states(agent, r.observations, r.dones, agent.initial_state(1))
        assert all(torch.equal(a, b) for a, b in zip(again, r.states))
