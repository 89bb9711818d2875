"""Rollout and saliency stores: round trip, resume after a kill, refusal to mix, shards, other checkpoints."""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from engine.config import SaliencyConfig
from engine.pipeline import compute_saliency, paper_aligned_states, paper_shift
from engine.policy import load_agent
from engine.registry import sha256_of
from engine.rollout import rollout
from engine.store import RolloutStore, SaliencyStore, StoreMismatchError, record_rollout, replay_states, score_store
from tests.conftest import ROOT, checkpoint

STEPS, CHUNK = 70, 32
SETTINGS = SaliencyConfig(density=10)


@pytest.fixture(scope="module")
def recorded(tmp_path_factory, pong_agent):
    root = tmp_path_factory.mktemp("rollout")
    sha = sha256_of(checkpoint("pong"))
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
    own, _ = replay_states(later, r.frames, r.dones, later.initial_state(1))
    assert not torch.equal(own[0], r.states[0])  # its own memory of the same frames
    for alignment in ("exact", "paper"):
        settings = SaliencyConfig(density=10, state_alignment=alignment)
        got = score_store(later, store.store.root, tmp_path / alignment, settings, sha256_of(checkpoint("pong", 80)), frames_per_chunk=16, progress=False)
        states = own if alignment == "exact" else paper_shift(own)
        assert np.array_equal(got.read()["actor"], compute_saliency(later, r.frames, states, settings)["actor"].numpy())


def test_replaying_the_recording_agent_gives_its_recorded_states(recorded, pong_agent):
    r = recorded[0].read()
    states, _ = replay_states(pong_agent, r.frames, r.dones, pong_agent.initial_state(1))
    assert torch.equal(states[0], r.states[0])


def test_paper_alignment_across_chunks(recorded, pong_agent, tmp_path):
    store, sha = recorded
    r = store.read()
    settings = SaliencyConfig(density=10, state_alignment="paper")
    got = score_store(pong_agent, store.store.root, tmp_path / "p", settings, sha, frames_per_chunk=16, progress=False).read()
    assert np.array_equal(got["actor"], compute_saliency(pong_agent, r.frames, paper_aligned_states(r), settings)["actor"].numpy())


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
import sys
from engine.config import SaliencyConfig
from engine.policy import load_agent
from engine.store import score_store
agent = load_agent(sys.argv[1], device="cpu")
score_store(agent, sys.argv[2], sys.argv[3], SaliencyConfig(density=5), sys.argv[4], frames_per_chunk=4, progress=False)
"""


def test_killed_saliency_job_resumes_to_identical_arrays(recorded, pong_agent, tmp_path):
    store, sha = recorded
    target = tmp_path / "killed"
    job = subprocess.Popen([sys.executable, "-c", KILLED_JOB, str(checkpoint("pong")), str(store.store.root), str(target), sha],
                           cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and len(list((target / "chunks").glob("*.npz"))) < 3:
        time.sleep(0.05)
    job.send_signal(signal.SIGKILL)  # mid-chunk, most likely while a chunk is being computed or written
    job.wait()
    finished = len(list((target / "chunks").glob("*.npz")))
    assert 3 <= finished < 18, finished
    resumed = score_store(pong_agent, store.store.root, target, SaliencyConfig(density=5), sha, frames_per_chunk=4, progress=False)
    fresh = score_store(pong_agent, store.store.root, tmp_path / "fresh", SaliencyConfig(density=5), sha, frames_per_chunk=4, progress=False)
    a, b = resumed.read(), fresh.read()
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    assert not list((target / "chunks").glob("*.partial"))
