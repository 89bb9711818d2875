"""Many games recorded and scored at once (``rollout.num_envs`` with ``store.overlap``, engine/jobs/games.py): the
same stores as the games scored one after the other, with games that end early (``max_episodes``) at chunk
boundaries and inside chunks, a job killed at several points resuming to them, the recorder within its lead, and
an error on either side surfacing as it is."""

from __future__ import annotations

import json
import math
import threading
import time

import numpy as np
import pytest

from engine.core.errors import EngineError
from engine.jobs import games, overlap, run
from engine.jobs import score as scoring
from engine.storage.arrays import load_arrays
from engine.storage.store import ChunkStore, RolloutStore, SaliencyStore
from tests.integration.test_games_job import SEED, assert_same_store, job
from tests.integration.test_overlap import run_guarded

GAMES, STEPS, CHUNK, FRAMES = 2, 12, 4, 2  # 3 rollout chunks, 6 saliency chunks per game


def games_job(out_dir, rollout_root=None, overlap_: bool = True, steps: int = STEPS):
    """GAMES games of the built-in 2017 agent, in stores on disk at ``rollout_root`` (in memory without it)."""
    store = {"chunk_steps": CHUNK, "frames_per_chunk": FRAMES, "overlap": overlap_}
    if rollout_root is not None:
        store["rollout"] = str(rollout_root)
    return job(out_dir, steps=steps, rollout={"num_envs": GAMES}, store=store)


def assert_same_games(out, rollout_root, reference_out, reference_rollout) -> None:
    """Both stores of every game equal the reference job's, bit for bit."""
    for i in range(GAMES):
        game = f"game_{i:04d}"
        assert_same_store(
            RolloutStore.open(rollout_root / game).store, RolloutStore.open(reference_rollout / game).store
        )
        assert_same_store(
            SaliencyStore.open(out / "saliency_store" / game).store,
            SaliencyStore.open(reference_out / "saliency_store" / game).store,
        )


@pytest.fixture(scope="module")
def in_turn(tmp_path_factory):
    """The reference: the games recorded, then scored one after the other (store.overlap=false)."""
    root = tmp_path_factory.mktemp("in_turn")
    run.run_job(games_job(root / "out", root / "games", overlap_=False))
    assert json.loads((root / "out" / "summary.json").read_text())["overlapped"] is False
    return root / "out", root / "games"


def test_games_scored_while_recorded_equal_games_scored_in_turn(in_turn, tmp_path):
    """Stores on disk: every game's rollout and saliency stores equal the sequential job's; the root and each
    game's summary say the stages overlapped, with each game's own scoring seconds."""
    run_guarded(games_job(tmp_path / "out", tmp_path / "games"))
    assert_same_games(tmp_path / "out", tmp_path / "games", *in_turn)
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["overlapped"] is True and summary["frames_scored"] == GAMES * STEPS and summary["complete"]
    for i in range(GAMES):
        game = json.loads((tmp_path / "out" / f"game_{i:04d}" / "summary.json").read_text())
        assert game["overlapped"] is True and game["frames_scored"] == STEPS and game["saliency_seconds"] > 0
    # the same command again: the games are complete and replayed, nothing recorded or scored twice
    again = json.loads(run.run_job(games_job(tmp_path / "out", tmp_path / "games"))["summary"].read_text())
    assert again["overlapped"] is False and again["frames_scored"] == 0


@pytest.mark.parametrize(
    "limits",
    [
        (4, 7, 6),  # ends at a rollout chunk's end, inside one, and inside a saliency chunk
        (3, 3, 12),  # two games end in the first chunk; the third plays on to the end
    ],
)
def test_games_that_end_early_are_scored_to_their_end(tmp_path, time_limits, limits):
    """Memory stores with max_episodes=1 and episodes of different lengths: each game's rollout.npz and
    saliency.npz, scored while the others are still recorded, equal the games scored one after the other."""
    n = len(limits)
    outs = {}
    for name, overlap_ in (("at_once", True), ("in_turn", False)):
        time_limits(*limits)
        config = job(
            tmp_path / name,
            steps=STEPS,
            rollout={"num_envs": n, "max_episodes": 1},
            store={"chunk_steps": 3, "frames_per_chunk": FRAMES, "overlap": overlap_},
        )
        run_guarded(config)
        summary = json.loads((tmp_path / name / "summary.json").read_text())
        assert summary["overlapped"] is overlap_ and [g["steps"] for g in summary["games"]] == list(limits)
        outs[name] = tmp_path / name
    for i in range(n):
        for file in ("rollout.npz", "saliency.npz"):
            ours, _ = load_arrays(outs["at_once"] / f"game_{i:04d}" / file)
            theirs, _ = load_arrays(outs["in_turn"] / f"game_{i:04d}" / file)
            assert ours.keys() == theirs.keys() and all(np.array_equal(ours[k], theirs[k]) for k in ours), (i, file)
        assert len(ours["actor"]) == limits[i]


@pytest.mark.parametrize("kill_at", [(2, 0), (5, 3), (9, 8)])
def test_a_killed_job_resumes_to_the_same_stores(in_turn, tmp_path, monkeypatch, kill_at):
    """Killed (an interrupt raised in the worker writing) after some rollout chunks and after some saliency chunks
    (in both workers, at several points), then run again: the stores of an uninterrupted job."""
    rollout_writes, saliency_writes = kill_at
    write, counts = ChunkStore.write, {"rollout": 0, "saliency": 0}

    def counted(self, index, arrays):
        counts[self.kind] += 1
        if counts["rollout"] == rollout_writes + 1 and self.kind == "rollout" and rollout_writes:
            raise KeyboardInterrupt("killed while recording")
        if counts["saliency"] == saliency_writes + 1 and self.kind == "saliency" and saliency_writes:
            raise KeyboardInterrupt("killed while scoring")
        return write(self, index, arrays)

    monkeypatch.setattr(ChunkStore, "write", counted)
    config = games_job(tmp_path / "out", tmp_path / "games")
    with pytest.raises(KeyboardInterrupt):
        run_guarded(config)
    counts.update(rollout=0, saliency=0)
    monkeypatch.setattr(ChunkStore, "write", write)
    run_guarded(config)
    assert_same_games(tmp_path / "out", tmp_path / "games", *in_turn)


def test_the_recorder_stays_within_its_lead_of_every_game(tmp_path, monkeypatch):
    """A slow scorer: the recorder waits, never more than LEAD rollout chunks beyond the steps that the scorer's
    current round of chunks needs, and reaches that bound; the recorded but unscored steps do not grow with the
    game."""
    monkeypatch.setattr(overlap, "LEAD", 1)
    real_write, real_saliency = ChunkStore.write, scoring.compute_saliency
    rounds, leads = [0], []

    def write(self, index, arrays):
        real_write(self, index, arrays)
        if self.kind == "rollout":
            leads.append(index + 1 - math.ceil((rounds[0] // GAMES + 1) * FRAMES / CHUNK))
        else:
            rounds[0] += 1

    def slow(*args, **kwargs):
        time.sleep(0.1)
        return real_saliency(*args, **kwargs)

    monkeypatch.setattr(ChunkStore, "write", write)
    monkeypatch.setattr(scoring, "compute_saliency", slow)
    run_guarded(games_job(tmp_path / "out", tmp_path / "games", steps=24))
    assert len(leads) == GAMES * 24 // CHUNK and max(leads) == 1, leads


def test_a_recording_error_stops_the_scorer_and_surfaces_as_it_is(tmp_path, monkeypatch):
    """Game 1's rollout store fails at its chunk 1: that one-line error, no hang, no thread left; the scorer
    scored no more than what was recorded."""
    real_write = ChunkStore.write

    def full(self, index, arrays):
        if self.kind == "rollout" and index == 1 and self.root.name == "game_0001":
            raise EngineError(f"the disk holding the store {self.root} is full: chunk 1 was not written")
        return real_write(self, index, arrays)

    monkeypatch.setattr(ChunkStore, "write", full)
    with pytest.raises(EngineError, match=r"^the disk holding the store .*game_0001 is full: chunk 1 was not written$"):
        run_guarded(games_job(tmp_path / "out", tmp_path / "games"))
    scored = SaliencyStore.open(tmp_path / "out" / "saliency_store" / "game_0000").store.completed().sum()
    assert scored <= CHUNK // FRAMES  # the steps of rollout chunk 0: chunk 1 is complete in no game's turn


def test_a_game_that_ended_has_its_outputs_written_while_the_others_are_scored(tmp_path, time_limits, monkeypatch):
    """Game 0 ends after 3 steps: its summary.json is written (in the finisher thread) while game 1 is still being
    scored, and an error in a game's outputs surfaces as it is, no thread left behind."""
    real = scoring.Scoring.score_chunk
    seen = []

    def score_chunk(self, k):
        if self.rstore.identity["seed"] == SEED + 1 and k == 5:  # game 1's last chunk
            deadline = time.monotonic() + 30
            while not (tmp_path / "out" / "game_0000" / "summary.json").exists() and time.monotonic() < deadline:
                time.sleep(0.01)
            seen.append((tmp_path / "out" / "game_0000" / "summary.json").exists())
        return real(self, k)

    monkeypatch.setattr(scoring.Scoring, "score_chunk", score_chunk)
    time_limits(3, 12)
    config = job(
        tmp_path / "out",
        steps=STEPS,
        rollout={"num_envs": 2, "max_episodes": 1},
        store=config_store(),
    )
    run_guarded(config)
    assert seen == [True]
    assert [g["steps"] for g in json.loads((tmp_path / "out" / "summary.json").read_text())["games"]] == [3, 12]

    def broken(*args, **kwargs):
        raise RuntimeError("the disk is full: summary.json was not written")

    monkeypatch.setattr(games, "finish_job", broken)
    time_limits(3, 12)
    with pytest.raises(RuntimeError, match="^the disk is full"):
        run_guarded(
            job(tmp_path / "again", steps=STEPS, rollout={"num_envs": 2, "max_episodes": 1}, store=config_store())
        )
    assert not [t for t in threading.enumerate() if t.name.startswith("finish")]


def config_store() -> dict:
    return {"chunk_steps": 3, "frames_per_chunk": FRAMES, "overlap": True}
