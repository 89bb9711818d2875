"""Recording and scoring at once (``store.overlap``, engine/jobs/overlap.py): the same arrays as one stage after the
other and as the in-memory job, resume after SIGKILL at several points, errors of either worker surfacing as they
are without a hang, and the recorder's bounded lead."""

from __future__ import annotations

import json
import math
import random
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from engine.core.errors import EngineError
from engine.jobs import overlap, run
from engine.jobs import score as scoring
from engine.jobs.config import JobConfig
from engine.storage.arrays import load_arrays
from engine.storage.store import ChunkStore, RolloutStore, SaliencyStore
from tests.conftest import ROOT, checkpoint, tiny_job

STEPS, CHUNK, FRAMES = 48, 8, 4  # 6 rollout chunks, 12 saliency chunks
STORE = {"chunk_steps": CHUNK, "frames_per_chunk": FRAMES, "overlap": True}  # on the CPU it is off by default


def job(out_dir, settings: dict | None = None, agent: dict | None = None, steps: int = STEPS, **store):
    """A store job (``store.rollout`` given) or an in-memory one of ``steps`` steps, chunked small (``settings``: the
    saliency section's)."""
    sections = {k: v for k, v in (("saliency", settings), ("agent", agent)) if v}
    return tiny_job(out_dir, steps=steps, movie=False, store={**STORE, **store}, output={"report": False}, **sections)


def store_arrays(out_dir, rollout_root, saliency_root=None) -> dict[str, np.ndarray]:
    """Every array of a store job's two stores (rollout fields and states, maps and score grids); the saliency store
    in ``out_dir`` unless ``saliency_root``."""
    recorded = RolloutStore.open(rollout_root)
    played = recorded.store.read_range(0, recorded.num_steps)
    maps = SaliencyStore.open(saliency_root or out_dir / "saliency_store").read()
    return {**{f"rollout/{k}": v for k, v in played.items()}, **{f"saliency/{k}": v for k, v in maps.items()}}


def same(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert a.keys() == b.keys()
    different = [k for k in a if not np.array_equal(a[k], b[k])]
    assert not different, f"arrays differ: {different}"


def run_guarded(config, seconds: float = 120.0):
    """run_job in a thread: its result or exception, or a failure if it does not end within ``seconds``."""
    result: dict = {}

    def target():
        try:
            result["value"] = run.run_job(config)
        except BaseException as exc:
            result["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        pytest.fail(f"the job hung (still running after {seconds:.0f} s)")
    assert not [t for t in threading.enumerate() if t.name == "record"], "the recorder thread outlived the job"
    if "error" in result:
        raise result["error"]
    return result["value"]


@pytest.fixture(scope="module")
def sequential(tmp_path_factory):
    """The reference: a store job of one stage after the other."""
    root = tmp_path_factory.mktemp("sequential")
    run.run_job(job(root / "out", rollout=str(root / "rollout"), overlap=False))
    summary = json.loads((root / "out" / "summary.json").read_text())
    assert summary["overlapped"] is False
    return store_arrays(root / "out", root / "rollout")


def test_overlapped_store_job_equals_sequential_and_in_memory_jobs(sequential, tmp_path):
    run.run_job(job(tmp_path / "out", rollout=str(tmp_path / "rollout")))
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["overlapped"] is True and summary["complete"] and summary["frames_scored"] == STEPS
    same(store_arrays(tmp_path / "out", tmp_path / "rollout"), sequential)
    for name, overlapped in (("memory", True), ("memory_sequential", False)):  # the in-memory job, both ways
        run.run_job(job(tmp_path / name, overlap=overlapped))
        assert json.loads((tmp_path / name / "summary.json").read_text())["overlapped"] is overlapped
        played, _ = load_arrays(tmp_path / name / "rollout.npz")
        maps, _ = load_arrays(tmp_path / name / "saliency.npz")
        arrays = {**{f"rollout/{k}": v for k, v in played.items()}, **{f"saliency/{k}": v for k, v in maps.items()}}
        same(arrays, sequential)


def test_overlap_with_replayed_and_shifted_states(tmp_path):
    """Another checkpoint plays (baby-a3c's GRU agent; the built-in LSTM agent's states are replayed through the game
    as it is recorded) and the paper's state alignment reads the step before each chunk: overlapped equals
    sequential."""
    player = str(checkpoint("pong", 40))
    arrays = {}
    for overlapped in (True, False):
        out = tmp_path / f"out_{overlapped}"
        config = job(
            out,
            settings={"state_alignment": "paper"},
            agent={"checkpoint": "builtin/pong", "core": "auto"},
            rollout=str(tmp_path / f"rollout_{overlapped}"),
            player=player,
            overlap=overlapped,
            steps=24,
        )
        run.run_job(config)
        assert json.loads((out / "summary.json").read_text())["overlapped"] is overlapped
        arrays[overlapped] = store_arrays(out, tmp_path / f"rollout_{overlapped}")
    same(arrays[True], arrays[False])


def test_an_overlapped_shard_and_the_next_one_fill_the_store(sequential, tmp_path):
    """Shard 0 records while it scores; shard 1 then scores the complete rollout store (no overlap): the union
    equals the sequential job."""
    rollout, maps = tmp_path / "rollout", tmp_path / "maps"
    for shard in (0, 1):
        out = tmp_path / f"out{shard}"
        run.run_job(job(out, rollout=str(rollout), saliency=str(maps), shard=shard, num_shards=2))
        assert json.loads((out / "summary.json").read_text())["overlapped"] is (shard == 0)
    same(store_arrays(None, rollout, maps), sequential)


def test_overlap_does_not_apply_to_max_episodes_and_says_so(tmp_path, caplog):
    caplog.set_level("INFO", logger="engine.jobs.game")
    config = tiny_job(tmp_path / "out", steps=12, movie=False, rollout={"max_episodes": 1}, store=STORE)
    run.run_job(config)
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["overlapped"] is False
    assert any("store.overlap" in r.message and "max_episodes" in r.message for r in caplog.records)


KILLED_JOB = """
import json, sys
from engine.jobs.config import JobConfig
from engine.jobs.run import run_job
run_job(JobConfig.from_dict(json.loads(sys.argv[1])))
"""


def completed(root, kind: str) -> int:
    try:
        return int(ChunkStore.open_kind(root, kind, read_only=True).completed().sum())
    except Exception:  # not created yet
        return 0


def test_killed_overlapped_job_resumes_to_identical_arrays(sequential, tmp_path):
    """SIGKILL at several points of an overlapped job (a random delay after some rollout or saliency chunks were
    written since the start), each time started again; the last run ends with the arrays of an uninterrupted run."""
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    rollout_root, out = tmp_path / "rollout", tmp_path / "out"
    data = {
        "agent": {"checkpoint": "builtin/pong"},
        "rollout": {"steps": STEPS},
        "saliency": {"density": 20},
        "store": {**STORE, "rollout": str(rollout_root)},
        "output": {"dir": str(out), "movie": False, "report": False},
        "progress": False,
    }
    # kill once this many more rollout chunks, then saliency chunks, are complete than at the run's start
    kill_points = [("rollout", 1), ("saliency", 3), ("saliency", 2)]
    killed = []
    for kind, more in kill_points:
        root = rollout_root if kind == "rollout" else out / "saliency_store"
        start = completed(root, kind)
        job_ = subprocess.Popen(
            [sys.executable, "-c", KILLED_JOB, json.dumps(data)],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            deadline = time.monotonic() + 120
            while job_.poll() is None and completed(root, kind) < start + more and time.monotonic() < deadline:
                time.sleep(0.02)
            time.sleep(rng.uniform(0, 0.3))
        finally:
            job_.send_signal(signal.SIGKILL)
            _, err = job_.communicate()
        assert job_.returncode in (0, -signal.SIGKILL), f"seed {seed}: the job failed:\n{err.decode()[-3000:]}"
        killed.append((kind, job_.returncode, completed(rollout_root, "rollout"), completed(root, kind)))
    assert any(code == -signal.SIGKILL for _, code, _, _ in killed), (seed, killed)
    run.run_job(JobConfig.from_dict(data))
    same(store_arrays(out, rollout_root), sequential)


@pytest.mark.parametrize("overlapped", [True, False])
def test_a_recording_error_surfaces_as_it_is(sequential, tmp_path, monkeypatch, overlapped):
    """The rollout store's disk fills up at chunk 3: the same one-line error as one stage after the other, no hang,
    the scorer stopped; the chunks written are kept and the rerun resumes to the arrays of an uninterrupted run."""
    real_write = ChunkStore.write

    def full_at_chunk_3(self, index, arrays):
        if self.kind == "rollout" and index == 3:
            raise EngineError(f"the disk holding the store {self.root} is full: chunk 3 was not written")
        return real_write(self, index, arrays)

    monkeypatch.setattr(ChunkStore, "write", full_at_chunk_3)
    config = job(tmp_path / "out", rollout=str(tmp_path / "rollout"), overlap=overlapped)
    with pytest.raises(EngineError, match=r"^the disk holding the store .* is full: chunk 3 was not written$"):
        run_guarded(config)
    assert completed(tmp_path / "rollout", "rollout") == 3
    scored = completed(tmp_path / "out" / "saliency_store", "saliency")
    assert scored <= 6 and (scored == 0 or overlapped)  # at most what the 3 rollout chunks hold
    monkeypatch.setattr(ChunkStore, "write", real_write)
    run.run_job(config)
    same(store_arrays(tmp_path / "out", tmp_path / "rollout"), sequential)


def test_a_scoring_error_stops_the_recorder(tmp_path, monkeypatch):
    """compute_saliency fails on the 3rd saliency chunk: that error, no hang, and the recorder stopped within its
    lead (not the whole game recorded)."""
    real = scoring.compute_saliency
    calls = []

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("scoring broke")
        return real(*args, **kwargs)

    monkeypatch.setattr(scoring, "compute_saliency", failing)
    with pytest.raises(RuntimeError, match="^scoring broke$"):
        run_guarded(job(tmp_path / "out", rollout=str(tmp_path / "rollout")))
    # the 3rd saliency chunk needs 2 rollout chunks (steps ..11); the recorder may be LEAD chunks beyond
    assert completed(tmp_path / "rollout", "rollout") <= 2 + overlap.LEAD < STEPS // CHUNK
    assert completed(tmp_path / "out" / "saliency_store", "saliency") == 2


@pytest.mark.parametrize("lead", [1, 2])
def test_the_recorder_stays_within_its_lead(tmp_path, monkeypatch, lead):
    """A slow scorer: the recorder waits, never more than ``lead`` rollout chunks beyond the steps the scorer's
    current chunk needs, and reaches that bound."""
    monkeypatch.setattr(overlap, "LEAD", lead)
    real_write, real_saliency = ChunkStore.write, scoring.compute_saliency
    scored, leads = [0], []

    def write(self, index, arrays):
        real_write(self, index, arrays)
        if self.kind == "rollout":  # chunks written beyond those the scorer's current chunk (scored[0]) needs
            leads.append(index + 1 - math.ceil((scored[0] + 1) * FRAMES / CHUNK))
        else:
            scored[0] += 1

    def slow(*args, **kwargs):
        time.sleep(0.2)
        return real_saliency(*args, **kwargs)

    monkeypatch.setattr(ChunkStore, "write", write)
    monkeypatch.setattr(scoring, "compute_saliency", slow)
    run_guarded(job(tmp_path / "out", rollout=str(tmp_path / "rollout")))
    assert len(leads) == STEPS // CHUNK and max(leads) == lead, leads


def test_overlap_is_on_by_default_only_where_the_agent_runs_on_cuda(tmp_path):
    """store.overlap unset: a job whose agent runs on the CPU records, then scores (both stages would share its
    cores); set, it is obeyed."""
    run.run_job(job(tmp_path / "default", rollout=str(tmp_path / "r1"), overlap=None))
    assert json.loads((tmp_path / "default" / "summary.json").read_text())["overlapped"] is False
    run.run_job(job(tmp_path / "asked", rollout=str(tmp_path / "r2"), overlap=True))
    assert json.loads((tmp_path / "asked" / "summary.json").read_text())["overlapped"] is True
