"""The job of many games (``rollout.num_envs=N``, engine/jobs/games.py): each game's stores and outputs equal the
single-game job's with seed ``seed + i`` bit for bit; an interrupted recording resumes to the same arrays; stores
of another N, or of one game, are refused before anything is written; the command line writes one folder per game
and a root summary."""

import json
import os

import numpy as np
import pytest
import torch

from engine.core.errors import EngineError
from engine.jobs import games as games_module
from engine.jobs.record import record_games, record_rollout
from engine.jobs.run import run_job, validate_job
from engine.policies.loading import load_policy
from engine.policies.module import wrap_policy
from engine.policies.registry import resolve_checkpoint
from engine.storage.arrays import load_arrays
from engine.storage.games import games_manifest, open_games
from engine.storage.store import ChunkStore, RolloutStore, SaliencyStore
from tests.app.test_app import run_app
from tests.conftest import tiny_job

SEED = 7
FAST = {"saliency": {"density": 20}, "output": {"report": False, "arrays": True}}


def job(out_dir, steps=6, **sections):
    """A cheap job of the built-in 2017 agent (LSTM): a few steps, a coarse grid, no movie or report."""
    merged = {key: dict(value) for key, value in FAST.items()}
    for key, value in sections.items():
        merged[key] = {**merged.get(key, {}), **value}
    merged["rollout"] = {"seed": SEED, **merged.get("rollout", {})}
    return tiny_job(out_dir, steps=steps, movie=False, **merged)


def assert_same_store(a: ChunkStore, b: ChunkStore) -> None:
    """The same identity (but for the id of the recording a saliency store scored: each recording has its own),
    layout and arrays, every chunk complete."""

    def same(identity: dict) -> dict:
        return {k: v for k, v in identity.items() if k != "rollout_recording"}

    assert same(a.identity) == same(b.identity) and a.layout == b.layout and a.length == b.length
    assert a.completed().all() and b.completed().all()
    for k in range(a.num_chunks):
        x, y = a.read(k), b.read(k)
        assert x.keys() == y.keys()
        for name in x:
            assert np.array_equal(x[name], y[name]), (k, name)


def test_each_games_stores_equal_the_single_game_job(tmp_path):
    """Stores on disk: game i's rollout and saliency stores (manifest identity, every array, the sampler states)
    equal those of the single-game job with seed + i; the root manifests, the per-game folders and the root
    summary say which game is which."""
    config = job(
        tmp_path / "out",
        rollout={"num_envs": 2},
        store={"rollout": str(tmp_path / "games"), "chunk_steps": 4, "frames_per_chunk": 4},
    )
    written = run_job(config)
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["num_envs"] == 2 and summary["frames"] == 12 and summary["frames_scored"] == 12
    assert [g["seed"] for g in summary["games"]] == [SEED, SEED + 1] and summary["complete"]
    assert summary["frames_per_second"] > 0 and summary["stores"]["rollout"] == str(tmp_path / "games")
    with pytest.raises(EngineError, match="holds 2 games.*rollout.num_envs=2"):  # a root is no store: what to set
        RolloutStore.open(tmp_path / "games")
    for i in range(2):
        game = f"game_{i:04d}"
        assert written[game] == tmp_path / "out" / game
        assert (
            json.loads((tmp_path / "out" / game / "summary.json").read_text())["config"]["rollout"]["seed"] == SEED + i
        )
        alone = job(
            tmp_path / f"alone_{i}",
            rollout={"seed": SEED + i},
            store={"rollout": str(tmp_path / f"alone_{i}_game"), "chunk_steps": 4, "frames_per_chunk": 4},
        )
        run_job(alone)
        assert_same_store(
            RolloutStore.open(tmp_path / "games" / game).store, RolloutStore.open(alone.store.rollout).store
        )
        ours = SaliencyStore.open(tmp_path / "out" / "saliency_store" / game).store
        theirs = SaliencyStore.open(tmp_path / f"alone_{i}" / "saliency_store").store
        assert ours.identity["rollout"]["seed"] == SEED + i
        own = ("rollout", "rollout_recording")  # the game's identity and the id of its recording: each store's own
        assert {k: v for k, v in ours.identity.items() if k not in own} == {
            k: v for k, v in theirs.identity.items() if k not in own
        }
        for k in range(ours.num_chunks):
            x, y = ours.read(k), theirs.read(k)
            assert x.keys() == y.keys() and all(np.array_equal(x[n], y[n]) for n in x), k
    # the same command again replays the recorded games: nothing recorded or scored twice, same summary of games
    again = run_job(config)
    assert json.loads(again["summary"].read_text())["games"][1]["steps"] == 6


def test_memory_games_equal_the_single_game_job_with_episodes_ending(tmp_path, time_limits):
    """Memory stores with rollout.max_episodes: each game stops after its own episode (at different steps), and its
    rollout.npz and saliency.npz equal the single-game job's with seed + i."""
    limits = (4, 7)
    time_limits(*limits)
    chunks = {"chunk_steps": 3, "frames_per_chunk": 2}  # the games end in chunks 1 and 2
    run_job(job(tmp_path / "out", steps=12, rollout={"num_envs": 2, "max_episodes": 1}, store=chunks))
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert [g["steps"] for g in summary["games"]] == list(limits)
    for i in range(2):
        time_limits(limits[i])
        run_job(job(tmp_path / f"alone_{i}", steps=12, rollout={"seed": SEED + i, "max_episodes": 1}, store=chunks))
        for name in ("rollout.npz", "saliency.npz"):
            ours, _ = load_arrays(tmp_path / "out" / f"game_{i:04d}" / name)
            theirs, _ = load_arrays(tmp_path / f"alone_{i}" / name)
            assert ours.keys() == theirs.keys() and all(np.array_equal(ours[k], theirs[k]) for k in ours), name
        assert len(ours["actor"]) == limits[i]


RESUME_CASES = {
    # 2017 pipeline, LSTM; episodes end every 4 and 6 steps: game 0's chunks end with an episode end (the resumed
    # state is the episode-start state), game 1's do not (the state after the last recorded step)
    "2017_lstm_episodes": ("builtin/pong", "Pong-v4", (4, 6)),
    "cleanrl_lstm": ("builtin/pong_ppo", "PongNoFrameskip-v4", None),  # a standard pipeline, 4 stacked frames
    # a user's recurrent network whose reset keeps half the state: the resumed state is its reset, not the initial one
    "custom_reset_episodes": ("custom_reset", "Pong-v4", (4, 6)),
}


def half_reset_agent():
    """A small recurrent network (GRU cell on a linear encoding of the 2017 pipeline's 80x80 frame) wrapped with a
    reset that halves the state where an episode ends instead of zeroing it."""
    torch.manual_seed(0)

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.encode, self.cell = torch.nn.Linear(80 * 80, 8), torch.nn.GRUCell(8, 8)
            self.actor, self.critic = torch.nn.Linear(8, 6), torch.nn.Linear(8, 1)

        def forward(self, obs, state):
            h = self.cell(torch.tanh(self.encode(obs.flatten(1))), state[0])
            return self.actor(h), self.critic(h)[:, 0], (h,)

    def reset(state, done):
        return tuple(torch.where(done[:, None], 0.5 * s, s) for s in state)

    initial = (torch.zeros(1, 8),)
    return wrap_policy(Net(), (1, 80, 80), 6, pipeline="greydanus2017", initial_state=initial, reset=reset)


def resume_agent(checkpoint):
    return (
        half_reset_agent()
        if checkpoint == "custom_reset"
        else load_policy(resolve_checkpoint(checkpoint), device="cpu")
    )


@pytest.mark.parametrize("case", list(RESUME_CASES))
def test_an_interrupted_recording_resumes_to_the_same_arrays(tmp_path, monkeypatch, time_limits, case):
    """Killed between two games' writes of a chunk (so the games have different numbers of complete chunks), the
    recording resumes from the fewest, replaying each game, writes only the missing chunks and ends with the arrays
    of an uninterrupted recording, and of the single-game recording (recurrent agents, sampled actions)."""
    checkpoint, env_id, limits = RESUME_CASES[case]
    agent = resume_agent(checkpoint)
    roots = [tmp_path / "cut" / f"game_{i:04d}" for i in range(2)]
    write, writes = ChunkStore.write, []
    fail_at = 6  # chunks 0 and 1 of both games, chunk 2 of game 0, then the kill

    def counted(self, index, arrays):
        writes.append((self.root.name, index))
        if fail_at and len(writes) == fail_at:
            raise KeyboardInterrupt("killed")
        return write(self, index, arrays)

    def record(roots):
        if limits:
            time_limits(*limits)
        return record_games(agent, env_id, 20, roots, seed=SEED, chunk_steps=4)

    monkeypatch.setattr(ChunkStore, "write", counted)
    with pytest.raises(KeyboardInterrupt):
        record(roots)
    assert [RolloutStore.open(r).completed_chunks() for r in roots] == [3, 2]
    fail_at, writes[:] = 0, []
    resumed = record(roots)
    assert sorted(writes) == [("game_0000", 3), ("game_0000", 4), ("game_0001", 2), ("game_0001", 3), ("game_0001", 4)]
    whole = record([tmp_path / "whole" / r.name for r in roots])
    for a, b in zip(resumed, whole):
        assert_same_store(a.store, b.store)
    if limits:
        assert resumed[0].read(0, 8).dones[[3, 7]].all() and resumed[1].read(0, 8).dones.sum() == 1
        time_limits(limits[1])
    alone = record_rollout(agent, env_id, 20, tmp_path / "alone", seed=SEED + 1, chunk_steps=4)
    assert_same_store(resumed[1].store, alone.store)  # and each game is the single-game recording


@pytest.mark.parametrize("case", ["2017_lstm_episodes", "custom_reset_episodes"])
def test_an_interrupted_single_game_recording_resumes_to_the_same_arrays(tmp_path, monkeypatch, time_limits, case):
    """One game whose episodes end on chunk ends (every 4 steps, chunks of 4): killed after chunk 2, resumed, the
    recording equals an uninterrupted one, the state after an episode end being the agent's reset."""
    checkpoint, env_id, _ = RESUME_CASES[case]
    agent = resume_agent(checkpoint)
    write, writes = ChunkStore.write, []

    def counted(self, index, arrays):
        writes.append(index)
        if len(writes) == 3:
            raise KeyboardInterrupt("killed")
        return write(self, index, arrays)

    def record(root):
        time_limits(4)
        return record_rollout(agent, env_id, 16, root, seed=SEED, chunk_steps=4)

    monkeypatch.setattr(ChunkStore, "write", counted)
    with pytest.raises(KeyboardInterrupt):
        record(tmp_path / "cut")
    monkeypatch.setattr(ChunkStore, "write", write)
    resumed, whole = record(tmp_path / "cut"), record(tmp_path / "whole")
    assert resumed.read(0, 16).dones[[3, 7, 11]].all()
    assert_same_store(resumed.store, whole.store)


def test_an_interrupted_games_job_resumes_to_the_same_stores(tmp_path, monkeypatch):
    """The job killed while recording (between two games' writes of a chunk), then again while scoring game 0, then
    run to the end: its stores equal an uninterrupted job's."""
    stores = {"chunk_steps": 4, "frames_per_chunk": 4}
    cut = job(tmp_path / "out", rollout={"num_envs": 2}, store={"rollout": str(tmp_path / "games"), **stores})
    write, writes = ChunkStore.write, []
    fail_at = 4  # rollout chunk 0 of both games, chunk 1 of game 0, then the kill at game 1's chunk 1

    def counted(self, index, arrays):
        writes.append((str(self.root), index))
        if len(writes) == fail_at:
            raise KeyboardInterrupt("killed")
        return write(self, index, arrays)

    monkeypatch.setattr(ChunkStore, "write", counted)
    with pytest.raises(KeyboardInterrupt):
        run_job(cut)
    assert [RolloutStore.open(tmp_path / "games" / g).completed_chunks() for g in ("game_0000", "game_0001")] == [2, 1]
    writes[:], fail_at = [], 3  # rollout chunk 1 of game 1, saliency chunk 0 of game 0, then the kill
    with pytest.raises(KeyboardInterrupt):
        run_job(cut)
    assert RolloutStore.open(tmp_path / "games" / "game_0001").complete
    assert SaliencyStore.open(tmp_path / "out" / "saliency_store" / "game_0000").missing() == [1]
    monkeypatch.setattr(ChunkStore, "write", write)
    run_job(cut)
    whole = job(tmp_path / "whole", rollout={"num_envs": 2}, store={"rollout": str(tmp_path / "whole_games"), **stores})
    run_job(whole)
    for game in ("game_0000", "game_0001"):
        assert_same_store(
            RolloutStore.open(tmp_path / "games" / game).store, RolloutStore.open(tmp_path / "whole_games" / game).store
        )
        ours = SaliencyStore.open(tmp_path / "out" / "saliency_store" / game).store
        theirs = SaliencyStore.open(tmp_path / "whole" / "saliency_store" / game).store
        for k in range(ours.num_chunks):
            x, y = ours.read(k), theirs.read(k)
            assert x.keys() == y.keys() and all(np.array_equal(x[n], y[n]) for n in x), (game, k)


def _files(path):
    return sorted(str(p.relative_to(path)) for p in path.rglob("*")) if path.exists() else None


def test_refusals_write_nothing(tmp_path):
    """num_envs < 1, a store of another N, a single-game store where N games are asked (and the reverse), an unknown
    game: one line naming the setting and the fix, and nothing written."""
    with pytest.raises(EngineError, match=r"rollout.num_envs must be an integer >= 1.*got 0"):
        job(tmp_path / "out", rollout={"num_envs": 0})
    with pytest.raises(EngineError, match=r"num_envs"):
        job(tmp_path / "out", rollout={"num_envs": 1.5})
    with pytest.raises(EngineError, match=r"rollout.workers .* needs rollout.num_envs; got workers=2, num_envs=None"):
        job(tmp_path / "out", rollout={"workers": 2})
    with pytest.raises(EngineError, match=r"rollout.workers must be an integer from 0 to rollout.num_envs"):
        job(tmp_path / "out", rollout={"num_envs": 2, "workers": 3})

    games = tmp_path / "games"
    open_games(games, games_manifest("rollout", "Pong-v4", SEED, 2))
    before = _files(tmp_path)
    three = job(tmp_path / "out", rollout={"num_envs": 3}, store={"rollout": str(games)})
    with pytest.raises(EngineError, match=r"holds 2 games \(rollout.num_envs=2\), but rollout.num_envs=3: set rollout"):
        run_job(three)
    one = job(tmp_path / "out", store={"rollout": str(games)})
    with pytest.raises(EngineError, match=r"holds 2 games.*set rollout.num_envs=2"):
        run_job(one)
    assert _files(tmp_path) == before

    agent = load_policy(resolve_checkpoint("builtin/pong"), device="cpu")
    record_rollout(agent, "Pong-v4", 2, tmp_path / "single", seed=SEED)
    before = _files(tmp_path)
    two = job(tmp_path / "out", rollout={"num_envs": 2}, store={"rollout": str(tmp_path / "single")})
    with pytest.raises(EngineError, match=r"holds one game.*unset rollout.num_envs"):
        run_job(two)
    unknown = job(tmp_path / "out", rollout={"num_envs": 2}, env={"id": "NoSuchGame-v4"})
    with pytest.raises(EngineError) as caught:
        validate_job(unknown)
    assert "NoSuchGame" in str(caught.value) and "\n" not in str(caught.value)
    assert _files(tmp_path) == before


def test_games_job_refused_when_a_game_store_differs(tmp_path):
    """A game's store written with other settings (here: another rollout.steps) is refused before any game is
    played, naming the difference."""
    config = job(tmp_path / "out", rollout={"num_envs": 2}, store={"rollout": str(tmp_path / "games")})
    games_module.open_games(tmp_path / "games", games_module._wanted_manifest(config, "rollout"))
    agent = load_policy(resolve_checkpoint("builtin/pong"), device="cpu")
    record_rollout(agent, "Pong-v4", 3, tmp_path / "games" / "game_0001", seed=SEED + 1, chunk_steps=256)
    before = _files(tmp_path)
    with pytest.raises(EngineError, match="recorded with rollout.steps=3, but this job asks for rollout.steps=6"):
        run_job(config)
    assert _files(tmp_path) == before


def test_a_complete_store_is_replayed_in_its_own_chunking_and_the_summary_says_which(tmp_path):
    """Another store.chunk_steps than a complete store's replays it as it is (a store of the Python API's chunking,
    or a game shorter than a chunk, stays usable); the summary records the store's chunking, not the job's."""
    run_job(job(tmp_path / "out", store={"rollout": str(tmp_path / "game"), "chunk_steps": 2}))
    run_job(job(tmp_path / "other", store={"rollout": str(tmp_path / "game"), "chunk_steps": 4}))
    summary = json.loads((tmp_path / "other" / "summary.json").read_text())
    assert summary["config"]["store"]["chunk_steps"] == 2 and summary["complete"]


def test_command_line_writes_a_folder_per_game_and_a_root_summary(tmp_path):
    out = tmp_path / "run"
    result = run_app(
        "agent=builtin_pong",
        "rollout.num_envs=2",
        "rollout.workers=2",
        "rollout.steps=3",
        "saliency.density=20",
        "output.movie=false",
        f"store.rollout={tmp_path / 'games'}",
        f"hydra.run.dir={out}",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert "A.L.E" not in result.stderr  # the emulator's banner, from the worker processes too
    summary = json.loads((out / "summary.json").read_text())
    assert summary["num_envs"] == 2 and summary["frames"] == 6
    for i, game in enumerate(summary["games"]):
        folder = out / f"game_{i:04d}"
        assert game["summary"] == str(folder / "summary.json") and (folder / "report.html").is_file()
        assert json.loads((folder / "summary.json").read_text())["frames"] == 3
    assert sorted(os.listdir(tmp_path / "games")) == ["game_0000", "game_0001", "zarr.json"]
    refused = run_app("agent=builtin_pong", "rollout.num_envs=0", f"hydra.run.dir={tmp_path / 'bad'}", cwd=tmp_path)
    assert refused.returncode != 0 and "rollout.num_envs must be an integer >= 1" in refused.stderr
    assert not (tmp_path / "bad").exists()


def test_worker_processes_record_the_same_games(tmp_path):
    """rollout.workers steps the games' emulators in other processes: the games' arrays are those of the job that
    steps them in its own process, bit for bit."""
    arrays = []
    for workers in (0, 2):
        out = tmp_path / f"w{workers}"
        run_job(job(out, rollout={"num_envs": 2, "workers": workers}))
        arrays.append([load_arrays(out / f"game_000{i}" / "rollout.npz")[0] for i in range(2)])
    for alone, stepped in zip(*arrays, strict=True):
        assert alone.keys() == stepped.keys()
        for name in alone:
            assert np.array_equal(alone[name], stepped[name]), name


def test_games_in_memory_that_do_not_fit_together_are_refused_before_anything_is_played(tmp_path, monkeypatch):
    """Without store.rollout every game's rollout store is held in memory (and, scored in turn on the CPU, one
    game's saliency store at a time): the job is refused where they do not fit together, though each fits alone."""
    from engine.jobs import prepare
    from engine.storage.layout import memory_bytes, rollout_layout, saliency_layout

    config = job(tmp_path / "out", rollout={"num_envs": 3})
    agent = validate_job(job(tmp_path / "one")).agent
    st = config.store
    rollout = memory_bytes(rollout_layout(agent, (210, 160, 3), agent.observation_shape), 6, st.chunk_steps)
    saliency = memory_bytes(saliency_layout(agent, config.saliency), 6, st.frames_per_chunk)
    monkeypatch.setattr(prepare, "available_memory", lambda: 3 * rollout + saliency)
    validate_job(config)  # just fits
    monkeypatch.setattr(prepare, "available_memory", lambda: 3 * rollout + saliency - 1)
    with pytest.raises(EngineError, match="3 games of rollout.steps=6 held in memory .* or rollout.num_envs, or set"):
        validate_job(config)
    validate_job(job(tmp_path / "one"))  # one game alone fits
    with pytest.raises(EngineError, match="^rollout.steps=6 held in memory"):
        monkeypatch.setattr(prepare, "available_memory", lambda: rollout + saliency - 1)
        validate_job(job(tmp_path / "one"))
    assert not (tmp_path / "out").exists() and not (tmp_path / "one").exists()


def test_recordings_with_max_episodes_resume_and_rerun_to_the_uninterrupted_stores(time_limits):
    """Memory stores with max_episodes, stopped by a hook mid-recording and recorded again: the resumed recording
    counts the episodes it already holds, a game that ended before the stop is not played again, and a rerun of the
    finished recording gives its stores back (one game, then three ending at different steps)."""
    from zarr.storage import MemoryStore

    from engine.jobs.record import open_games_recording, open_recording

    agent = load_policy(resolve_checkpoint("builtin/pong"), device="cpu")
    kwargs = dict(seed=SEED, chunk_steps=5)

    def stop_after(steps):
        count = [0]

        def each_step():
            count[0] += 1
            if count[0] > steps:
                raise KeyboardInterrupt("stopped")

        return each_step

    time_limits(4)  # an episode every 4 steps: 3 episodes end at step 12, in chunk 2
    whole = record_rollout(agent, "Pong-v4", 40, MemoryStore(), max_episodes=3, **kwargs)
    assert whole.num_steps == 12
    store = MemoryStore()
    time_limits(4)
    with pytest.raises(KeyboardInterrupt):
        open_recording(agent, "Pong-v4", 40, store, max_episodes=3, **kwargs).run(each_step=stop_after(7))
    for _ in range(2):  # resumed, then run again once finished
        time_limits(4)
        assert_same_store(record_rollout(agent, "Pong-v4", 40, store, max_episodes=3, **kwargs).store, whole.store)

    limits = (4, 6, 9)  # two episodes each: games of 8, 12 and 18 steps
    time_limits(*limits)
    wholes = record_games(agent, "Pong-v4", 40, [MemoryStore() for _ in limits], max_episodes=2, **kwargs)
    assert [r.num_steps for r in wholes] == [8, 12, 18]
    stores = [MemoryStore() for _ in limits]
    time_limits(*limits)
    with pytest.raises(KeyboardInterrupt):  # game 0 has ended, game 1 is in its second chunk
        open_games_recording(agent, "Pong-v4", 40, stores, max_episodes=2, **kwargs).run(each_step=stop_after(9))
    for _ in range(2):
        time_limits(*limits)
        resumed = record_games(agent, "Pong-v4", 40, stores, max_episodes=2, **kwargs)
        for a, b in zip(resumed, wholes):
            assert_same_store(a.store, b.store)


def test_games_whose_recording_chunks_do_not_fit_in_memory_are_refused_before_playing(tmp_path, monkeypatch):
    """Recorded into a store, each game holds a chunk of store.chunk_steps steps in memory: where the games' chunks
    exceed the memory available, one line says which chunking fits, before anything is played or written."""
    from engine.jobs import prepare
    from engine.storage.layout import rollout_layout, step_bytes

    agent = load_policy(resolve_checkpoint("builtin/pong"), device="cpu")
    per_step = step_bytes(rollout_layout(agent, (210, 160, 3), agent.observation_shape))
    monkeypatch.setattr(prepare, "available_memory", lambda: 4 * 3 * per_step)  # 3 steps of 4 games
    config = job(
        tmp_path / "out", rollout={"num_envs": 4}, store={"rollout": str(tmp_path / "games"), "chunk_steps": 5}
    )
    with pytest.raises(
        EngineError,
        match=r"4 games recorded into a store hold a chunk of store.chunk_steps=5 steps .* "
        r"use store.chunk_steps=3 or less, or fewer rollout.num_envs",
    ):
        run_job(config)
    assert not (tmp_path / "games").exists() and not (tmp_path / "out").exists()
    run_job(
        job(tmp_path / "out", rollout={"num_envs": 4}, store={"rollout": str(tmp_path / "games"), "chunk_steps": 3})
    )
    # recorded, the games are replayed whatever the memory: a replay records nothing
    monkeypatch.setattr(prepare, "available_memory", lambda: per_step)
    run_job(
        job(tmp_path / "again", rollout={"num_envs": 4}, store={"rollout": str(tmp_path / "games"), "chunk_steps": 5})
    )
