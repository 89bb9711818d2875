"""Many games at once (``rollout(..., num_envs=N)``): game i equals the single-env rollout with seed ``seed + i``
bit for bit, for recurrent and feed-forward agents, in the 2017 pipeline and a standard one, greedy and sampled,
with episodes ending at different steps in different games."""

import pytest
import torch

from engine.env.rollout import Rollout, VectorPlayer, rollout
from engine.policies.cleanrl import CleanRLPPO
from engine.policies.loading import load_policy
from engine.policies.module import wrap_policy
from engine.policies.registry import resolve_checkpoint

N, STEPS, SEED = 3, 40, 11
FIELDS = ("observations", "frames", "actions", "logits", "values", "rewards", "dones")


def assert_same_game(game: Rollout, alone: Rollout) -> None:
    for name in FIELDS:
        assert torch.equal(getattr(game, name), getattr(alone, name)), name
    assert len(game.states) == len(alone.states)
    assert all(torch.equal(a, b) for a, b in zip(game.states, alone.states)), "states"
    assert (game.seed, game.env_id, game.greedy) == (alone.seed, alone.env_id, alone.greedy)
    assert game.pipeline == alone.pipeline and game.action_names == alone.action_names


def _feed_forward_2017():
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(1, 8, 8, stride=8), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(800, 6)
    )
    return wrap_policy(net, (1, 80, 80), 6, pipeline="greydanus2017", outputs="logits")


def _feed_forward_cleanrl():
    torch.manual_seed(0)
    return CleanRLPPO(4).eval()  # ppo_atari's Nature CNN on 4 stacked frames, seeded random weights


# (agent, env id, pipeline options, per-game time limits): the limits differ per game, so their episodes end at
# different steps; Breakout with episodic_life also ends episodes at lost lives
CASES = {
    "baby_a3c_2017_recurrent": ("baby_a3c", "Pong-v4", {}, (17, 25, 33)),
    "ppo_lstm_cleanrl_recurrent": ("pong_ppo", "PongNoFrameskip-v4", {}, (70, 100, 130)),
    "feed_forward_2017": ("ff_2017", "Pong-v4", {}, (21, 13, 30)),
    "feed_forward_cleanrl_lives": ("ff_cleanrl", "BreakoutNoFrameskip-v4", {"episodic_life": True}, (150, 60, 110)),
}


@pytest.fixture(scope="module")
def agents(pong_agent):
    return {
        "baby_a3c": pong_agent,
        "pong_ppo": load_policy(resolve_checkpoint("builtin/pong_ppo"), device="cpu"),
        "ff_2017": _feed_forward_2017(),
        "ff_cleanrl": _feed_forward_cleanrl(),
    }


@pytest.mark.parametrize("greedy", [False, True], ids=["sampled", "greedy"])
@pytest.mark.parametrize("case", list(CASES))
def test_each_game_equals_its_single_env_rollout(agents, time_limits, case, greedy):
    name, env_id, options, limits = CASES[case]
    agent = agents[name]
    time_limits(*limits)
    games = rollout(agent, env_id, STEPS, seed=SEED, greedy=greedy, num_envs=N, **options)
    assert isinstance(games, list) and len(games) == N and all(len(g) == STEPS for g in games)
    alone = []
    for i in range(N):
        time_limits(limits[i])
        alone.append(rollout(agent, env_id, STEPS, seed=SEED + i, greedy=greedy, **options))
        assert_same_game(games[i], alone[i])
    assert not torch.equal(games[0].observations, games[1].observations)  # different seeds, different games
    ends = [set(torch.nonzero(g.dones).flatten().tolist()) for g in games]
    assert all(ends) and len({min(e) for e in ends}) > 1, ends  # episodes ended, not all at the same step
    if agent.initial_state(1):  # recurrent: an episode end reset that game's state only
        for i, game_ends in enumerate(ends):
            for t in game_ends - {STEPS - 1}:
                assert all(not s[t + 1].any() for s in games[i].states), (i, t)
                others = [j for j in range(N) if t not in ends[j] and t + 1 not in ends[j]]
                assert others and all(games[j].states[0][t + 1].any() for j in others), (i, t)


def test_max_episodes_ends_each_game_on_its_own(agents, time_limits):
    """Each game stops after its own max_episodes (the batch shrinks; the others go on unchanged)."""
    agent, env_id, limits = agents["pong_ppo"], "PongNoFrameskip-v4", (100, 50, 75)
    time_limits(*limits)
    games = rollout(agent, env_id, STEPS, seed=0, max_episodes=1, num_envs=N)
    lengths = [len(g) for g in games]
    assert len(set(lengths)) == N and all(int(g.dones.sum()) == 1 and g.dones[-1] for g in games), lengths
    for i, game in enumerate(games):
        time_limits(limits[i])
        assert_same_game(game, rollout(agent, env_id, STEPS, seed=i, max_episodes=1))


def test_one_env_is_a_list_of_the_single_rollout(pong_agent, pong_rollout):
    """num_envs=1 gives a list holding today's rollout (the default, num_envs=None, gives the Rollout itself)."""
    (game,) = rollout(pong_agent, "Pong-v4", 60, seed=0, num_envs=1)
    assert isinstance(pong_rollout, Rollout)
    assert_same_game(game, pong_rollout)


@pytest.mark.parametrize("bad", [0, -2, 2.0, "3", True, None])
def test_bad_num_envs_refused(pong_agent, bad):
    if bad is not None:
        with pytest.raises(ValueError, match="num_envs must be a positive integer"):
            rollout(pong_agent, "Pong-v4", 5, num_envs=bad)
    with pytest.raises(ValueError, match="num_envs must be a positive integer"):
        VectorPlayer(pong_agent, "Pong-v4", bad)
