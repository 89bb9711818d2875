import pytest
import torch

from engine import UnknownEnvironmentError
from engine.core.policy import ActorCritic
from engine.core.preprocessing import preprocess_frames
from engine.env.rollout import play_episodes, rollout


def test_recorded_states_reproduce_recorded_outputs_bit_for_bit(pong_agent, pong_rollout):
    r = pong_rollout
    assert r.frames.shape == (60, 210, 160, 3) and r.frames.dtype == torch.uint8
    assert r.states[0].shape == (60, 256) and torch.all(r.states[0][0] == 0)
    with torch.inference_mode():
        out = pong_agent(preprocess_frames(r.frames), r.states)
    assert torch.equal(out.logits, r.logits) and torch.equal(out.value, r.values)
    # and the state each step produced is the state recorded for the next one (no off-by-one)
    assert torch.equal(out.state[0][:-1], r.states[0][1:])
    # the off-by-one of the original code does not reproduce them
    shifted = (torch.cat([r.states[0][:1], r.states[0][:-1]]),)
    with torch.inference_mode():
        assert not torch.allclose(pong_agent(preprocess_frames(r.frames), shifted).logits[2:], r.logits[2:])


def test_slicing(pong_rollout):
    part = pong_rollout[10:20]
    assert len(part) == 10 and part.env_id == "Pong-v4"
    assert torch.equal(part.frames, pong_rollout.frames[10:20]) and torch.equal(part.states[0], pong_rollout.states[0][10:20])
    one = pong_rollout[5]
    assert len(one) == 1 and torch.equal(one.logits[0], pong_rollout.logits[5])
    picked = pong_rollout[torch.tensor([3, 7])]
    assert torch.equal(picked.actions, pong_rollout.actions[[3, 7]])


def test_seeded_rollouts_repeat(pong_agent, pong_rollout):
    again = rollout(pong_agent, "Pong-v4", 60, seed=0, progress=False)
    assert torch.equal(again.frames, pong_rollout.frames) and torch.equal(again.actions, pong_rollout.actions)
    greedy = rollout(pong_agent, "Pong-v4", 30, seed=0, greedy=True, progress=False)
    assert torch.equal(greedy.actions, greedy.logits.argmax(-1))


@pytest.fixture(scope="module")
def breakout_episodes():
    """A seeded random LSTM agent and its rollout of two whole Breakout episodes (it loses its 5 lives fast)."""
    torch.manual_seed(0)
    agent = ActorCritic(num_actions=4, core="lstm").eval()
    return agent, rollout(agent, "ALE/Breakout-v5", 1500, seed=1, max_episodes=2, progress=False)


def test_lstm_state_resets_at_episode_boundary(breakout_episodes):
    """The state after a finished episode is zeros again."""
    agent, r = breakout_episodes
    ends = torch.nonzero(r.dones).flatten().tolist()
    assert len(ends) == 2 and ends[-1] == len(r) - 1 and len(r.episode_returns()) == 2
    start = ends[0] + 1
    assert all(torch.all(s[start] == 0) for s in r.states) and all(torch.all(s[0] == 0) for s in r.states)
    assert all(s[start - 1].abs().sum() > 0 for s in r.states)
    with torch.inference_mode():
        out = agent(preprocess_frames(r.frames), r.states)
    assert torch.equal(out.logits, r.logits)
    for k in range(2):
        assert torch.equal(out.state[k][start - 2], r.states[k][start - 1])


def test_play_episodes_returns_the_rollouts_episode_returns(breakout_episodes):
    """The same seeded game as a recorded rollout, keeping only the returns."""
    agent, r = breakout_episodes
    assert play_episodes(agent, "ALE/Breakout-v5", 2, seed=1, progress=False) == r.episode_returns()
    with pytest.raises(RuntimeError, match="only 0 of 1 episodes"):
        play_episodes(agent, "ALE/Breakout-v5", 1, seed=1, max_steps=10, progress=False)
    with pytest.raises(ValueError, match="episodes must be a positive integer"):
        play_episodes(agent, "ALE/Breakout-v5", 0)


def test_bad_environment_and_arguments():
    torch.manual_seed(0)
    pong_agent = ActorCritic(num_actions=6, core="gru").eval()  # checks of the arguments need no trained agent
    with pytest.raises(UnknownEnvironmentError, match="unknown environment id 'Pongg-v4'"):
        rollout(pong_agent, "Pongg-v4", 5, progress=False)
    with pytest.raises(ValueError, match="4 actions but the agent has 6"):
        rollout(pong_agent, "Breakout-v4", 5, progress=False)
    with pytest.raises(ValueError, match="num_steps"):
        rollout(pong_agent, "Pong-v4", 0, progress=False)


@pytest.mark.slow
def test_real_pong_agent_wins_a_full_episode(pong_agent):
    """Loading, preprocessing and state handling together: the published agent averages 18.2."""
    r = rollout(pong_agent, "Pong-v4", 10_000, seed=0, max_episodes=1, progress=False)
    assert r.dones[-1] and len(r.episode_returns()) == 1
    assert r.episode_returns()[0] >= 15
