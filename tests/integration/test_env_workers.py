"""Environments stepped by worker processes (``rollout(..., num_envs=N, workers=W)``,
:class:`engine.env.workers.WorkerPipelines`): the games of W = 1 and W = 2 equal the in-process ones (W = 0) bit for
bit, in the 2017 pipeline and CleanRL's, with episodes ending mid-run; a worker that fails or dies is one clear
exception; no worker process outlives close(), garbage collection or a KeyboardInterrupt; bad ``workers`` refused."""

import gc
import multiprocessing as mp
import os
import signal

import pytest
import torch

from engine.env import pipelines, workers
from engine.env.pipelines import PipelineSpec, resolve_options
from engine.env.rollout import VectorPlayer, rollout
from engine.env.workers import EnvWorkerError, WorkerPipelines
from engine.policies.loading import load_policy
from engine.policies.registry import resolve_checkpoint

N, STEPS, SEED = 3, 40, 5
FIELDS = ("observations", "frames", "actions", "logits", "values", "rewards", "dones")
# (env id, per-game time limits in ALE steps: episodes end mid-run, at different steps in different games)
CASES = {"baby_a3c": ("Pong-v4", (17, 25, 33)), "pong_ppo": ("PongNoFrameskip-v4", (70, 100, 130))}


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread in the main process: the workers take the other core of a 2-core machine (two threads would
    wait on each other behind them), and W = 0 and W > 0 are compared under the same setting."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def agents(pong_agent):
    return {"baby_a3c": pong_agent, "pong_ppo": load_policy(resolve_checkpoint("builtin/pong_ppo"), device="cpu")}


@pytest.fixture
def started(monkeypatch):
    """(the worker pids of each WorkerPipelines made from now on, by VectorPlayer too, in order; the class they are
    made with: set its ``limits`` to give them per-game time limits)."""
    made: list[list[int]] = []  # their worker pids (no reference to them: garbage collection is tested)

    class Recorded(WorkerPipelines):
        limits = None

        def __init__(self, *args, **kwargs):
            super().__init__(*args, time_limits=Recorded.limits, **kwargs)
            made.append(list(self.pids))

    monkeypatch.setattr(workers, "WorkerPipelines", Recorded)
    return made, Recorded


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def no_workers_left() -> bool:
    return not [p for p in mp.active_children() if p.name.startswith("atari-saliency-envs")]


@pytest.mark.parametrize("name", list(CASES))
def test_workers_play_the_same_games(agents, monkeypatch, started, name):
    env_id, limits = CASES[name]
    made, recorded = started
    original = pipelines.make_env
    left = iter(limits)
    monkeypatch.setattr(
        pipelines,
        "make_env",
        lambda env_id, seed=None, **kw: original(env_id, seed, max_episode_steps=next(left), **kw),
    )
    alone = rollout(agents[name], env_id, STEPS, seed=SEED, num_envs=N)  # W = 0: in this process
    monkeypatch.setattr(pipelines, "make_env", original)
    recorded.limits = limits
    for w in (1, 2):
        games = rollout(agents[name], env_id, STEPS, seed=SEED, num_envs=N, workers=w)
        assert len(made[-1]) == w and all(gone(pid) for pid in made[-1])  # closed at the end
        for game, reference in zip(games, alone):
            for field in FIELDS:
                assert torch.equal(getattr(game, field), getattr(reference, field)), (w, field)
            assert all(torch.equal(a, b) for a, b in zip(game.states, reference.states)), (w, "states")
            assert (game.seed, game.pipeline, game.action_names) == (
                reference.seed,
                reference.pipeline,
                reference.action_names,
            )
    ends = [set(torch.nonzero(g.dones).flatten().tolist()) for g in alone]
    assert all(ends) and len({min(e) for e in ends}) > 1, ends  # episodes ended mid-run, at different steps


def test_games_leaving_the_batch(agents, monkeypatch, started):
    """max_episodes: each game leaves the batch after its episode (a worker may have none left to step)."""
    agent, env_id, limits = agents["pong_ppo"], "PongNoFrameskip-v4", (100, 50, 75)
    original = pipelines.make_env
    left = iter(limits)
    monkeypatch.setattr(
        pipelines,
        "make_env",
        lambda env_id, seed=None, **kw: original(env_id, seed, max_episode_steps=next(left), **kw),
    )
    alone = rollout(agent, env_id, STEPS, seed=0, max_episodes=1, num_envs=N)
    monkeypatch.setattr(pipelines, "make_env", original)
    _, recorded = started
    recorded.limits = limits
    games = rollout(agent, env_id, STEPS, seed=0, max_episodes=1, num_envs=N, workers=2)
    assert len({len(g) for g in games}) == N
    for game, reference in zip(games, alone):
        assert all(torch.equal(getattr(game, f), getattr(reference, f)) for f in FIELDS)


def test_a_dead_worker_is_an_error_and_close_leaves_no_process(agents):
    player = VectorPlayer(agents["pong_ppo"], "PongNoFrameskip-v4", N, workers=2)
    pids = player.pipelines.pids
    player.step()
    os.kill(pids[1], signal.SIGKILL)
    with pytest.raises(EnvWorkerError, match=r"environment worker 1 .* died \(exit code -9\) while stepping"):
        player.step()
    assert all(gone(pid) for pid in pids) and no_workers_left()
    player.close()  # again: nothing


def test_a_worker_error_is_one_clear_exception():
    spec = PipelineSpec("cleanrl_atari", "NoSuchGameNoFrameskip-v4", 1, resolve_options("cleanrl_atari"))
    with pytest.raises(EnvWorkerError, match="failed while building its environments: UnknownEnvironmentError"):
        WorkerPipelines(spec, [0, 1], 2)
    assert no_workers_left()


def test_no_process_outlives_garbage_collection_or_ctrl_c(agents, monkeypatch, started):
    made, _ = started
    player = VectorPlayer(agents["pong_ppo"], "PongNoFrameskip-v4", 2, workers=2)
    pids = player.pipelines.pids
    del player
    gc.collect()
    assert all(gone(pid) for pid in pids)

    def interrupted(self):
        raise KeyboardInterrupt

    monkeypatch.setattr(VectorPlayer, "step", interrupted)
    with pytest.raises(KeyboardInterrupt):
        rollout(agents["pong_ppo"], "PongNoFrameskip-v4", 5, num_envs=2, workers=1)
    assert all(gone(pid) for pid in made[-1]) and no_workers_left()

    # Ctrl-C while the workers step: they are closed (out of step with this process, they could not go on)
    batch = WorkerPipelines(
        PipelineSpec("cleanrl_atari", "PongNoFrameskip-v4", 1, resolve_options("cleanrl_atari")), [0, 1], 1
    )
    batch.reset([0, 1])
    monkeypatch.setattr(workers, "wait", lambda *args: interrupted(None))
    with pytest.raises(KeyboardInterrupt):
        batch.step([0, 1], [0, 0])
    assert all(gone(pid) for pid in batch.pids) and no_workers_left()


def test_a_player_that_fails_to_start_closes_its_workers(agents, monkeypatch, started):
    """A failure after the workers start (here the agent's first state) closes them at once, not at garbage
    collection: the traceback the caller holds keeps the half-made player alive."""
    made, _ = started

    def broken(num_envs):
        raise RuntimeError("no state")

    monkeypatch.setattr(agents["pong_ppo"], "initial_state", broken)
    with pytest.raises(RuntimeError, match="no state") as failed:
        VectorPlayer(agents["pong_ppo"], "PongNoFrameskip-v4", 2, workers=2)
    assert failed.traceback and all(gone(pid) for pid in made[-1]) and no_workers_left()


@pytest.mark.parametrize("bad", [-1, 4, 1.0, "2", True, None])
def test_bad_workers_refused(pong_agent, bad):
    with pytest.raises(ValueError, match=r"workers must be an integer from 0 .* to num_envs \(3"):
        rollout(pong_agent, "Pong-v4", 5, num_envs=N, workers=bad)
    with pytest.raises(ValueError, match="workers must be an integer"):
        VectorPlayer(pong_agent, "Pong-v4", N, workers=bad)


def test_workers_need_num_envs(pong_agent):
    with pytest.raises(ValueError, match="give num_envs too"):
        rollout(pong_agent, "Pong-v4", 5, workers=1)
