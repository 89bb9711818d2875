import numpy as np
import pytest
import torch

from engine import UnknownEnvironmentError
from engine.core.preprocessing import preprocess_frames
from engine.env.rollout import EpisodesUnfinished, play_episodes, rollout
from engine.policies.greydanus2017 import ActorCritic


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
    assert torch.equal(part.frames, pong_rollout.frames[10:20]) and torch.equal(
        part.states[0], pong_rollout.states[0][10:20]
    )
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
    with pytest.raises(EpisodesUnfinished, match="only 0 of 1 episodes"):
        play_episodes(agent, "ALE/Breakout-v5", 1, seed=1, max_steps=10, progress=False)
    with pytest.raises(ValueError, match="episodes must be a positive integer"):
        play_episodes(agent, "ALE/Breakout-v5", 0)


def test_bad_environment_and_arguments():
    torch.manual_seed(0)
    pong_agent = ActorCritic(num_actions=6, core="gru").eval()  # checks of the arguments need no trained agent
    with pytest.raises(UnknownEnvironmentError, match="unknown environment id 'Pongg-v4'.*Did you mean 'Pong-v4'"):
        rollout(pong_agent, "Pongg-v4", 5, progress=False)
    with pytest.raises(ValueError, match="4 actions but the agent has 6"):
        rollout(pong_agent, "Breakout-v4", 5, progress=False)
    with pytest.raises(ValueError, match="num_steps"):
        rollout(pong_agent, "Pong-v4", 0, progress=False)


@pytest.mark.parametrize("seed", [-1, 2**64, 1.5, True])
def test_a_seed_that_is_no_64_bit_integer_is_named(seed):
    """A bad seed is refused as a seed (it was reported as an unknown environment id, or gymnasium's own error),
    before an emulator starts; with num_envs the last game's seed must fit too."""
    agent = ActorCritic(num_actions=6, core="gru").eval()
    with pytest.raises(ValueError, match=r"seed must be an integer in 0\.\.9223372036854775807"):
        rollout(agent, "Pong-v4", 2, seed=seed, progress=False)
    with pytest.raises(ValueError, match=r"games seeded 9223372036854775807\.\.9223372036854775808"):
        rollout(agent, "Pong-v4", 2, seed=2**63 - 1, num_envs=2, progress=False)


def test_a_numpy_integer_seed_plays_the_same_game():
    torch.manual_seed(0)
    agent = ActorCritic(num_actions=6, core="gru").eval()
    ours = rollout(agent, "Pong-v4", 6, seed=np.int64(3), progress=False)
    assert ours.seed == 3 and type(ours.seed) is int
    assert torch.equal(ours.actions, rollout(agent, "Pong-v4", 6, seed=3, progress=False).actions)


@pytest.mark.slow
def test_real_pong_agent_wins_a_full_episode(pong_agent):
    """Loading, preprocessing and state handling together: the published agent averages 18.2."""
    r = rollout(pong_agent, "Pong-v4", 10_000, seed=0, max_episodes=1, progress=False)
    assert r.dones[-1] and len(r.episode_returns()) == 1
    assert r.episode_returns()[0] >= 15


# --- any Policy in its own pipeline -------------------------------------------------------------------------------

from engine.core.policy import Policy, PolicyOutput, reset_rows  # noqa: E402
from engine.env.pipelines import PipelineSpec, library_defaults, make_pipeline  # noqa: E402


class TinyPolicy(torch.nn.Module):
    """A small seeded policy on stacked 84x84 frames implementing the Policy protocol: a strided convolution, then
    a GRU cell (``recurrent``) or nothing. Each row is computed on its own, so outputs do not depend on the batch
    and a batched recomputation must equal the step-by-step rollout bit for bit."""

    def __init__(self, pipeline="sb3_atari", frame_stack=4, num_actions=4, recurrent=False, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.pipeline, self.frame_stack, self.num_actions = pipeline, frame_stack, num_actions
        self.observation_shape = (frame_stack, 84, 84)
        self.conv = torch.nn.Conv2d(frame_stack, 8, 8, stride=8)  # -> 8 x 10 x 10
        self.hidden = 16
        self.core = torch.nn.GRUCell(800, self.hidden) if recurrent else torch.nn.Linear(800, self.hidden)
        self.pi, self.v = torch.nn.Linear(self.hidden, num_actions), torch.nn.Linear(self.hidden, 1)
        self.recurrent = recurrent
        self.eval()

    @property
    def device(self):
        return self.pi.weight.device

    @property
    def dtype(self):
        return self.pi.weight.dtype

    def initial_state(self, batch=1):
        return (self.pi.weight.new_zeros(batch, self.hidden),) if self.recurrent else ()

    def reset_state(self, state, done):
        return reset_rows(state, done)

    def _one(self, x, state):
        f = torch.relu(self.conv(x)).flatten(1)
        h = self.core(f, state[0]) if self.recurrent else torch.tanh(self.core(f))
        return self.v(h).squeeze(-1), self.pi(h), ((h,) if self.recurrent else ())

    def forward(self, obs, state):
        rows = [self._one(obs[i : i + 1], tuple(s[i : i + 1] for s in state)) for i in range(obs.shape[0])]
        value, logits = torch.cat([r[0] for r in rows]), torch.cat([r[1] for r in rows])
        next_state = tuple(torch.cat(parts) for parts in zip(*(r[2] for r in rows)))
        return PolicyOutput(value, logits, next_state)


def recompute(agent, r):
    with torch.inference_mode():
        return agent(r.observations.to(torch.float32) / 255, r.states)


@pytest.mark.parametrize("pipeline", ["sb3_atari", "cleanrl_atari", "gymnasium_atari"])
def test_feed_forward_policy_rollout_in_its_pipeline(pipeline):
    agent = TinyPolicy(pipeline)
    assert isinstance(agent, Policy)
    r = rollout(agent, "BreakoutNoFrameskip-v4", 120, seed=3, episodic_life=True, progress=False)
    assert r.observations.shape == (120, 4, 84, 84) and r.observations.dtype == torch.uint8
    assert r.frames.shape == (120, 210, 160, 3) and r.frames.dtype == torch.uint8
    assert r.states == () and r.action_names == ("NOOP", "FIRE", "RIGHT", "LEFT")
    assert r.pipeline["name"] == pipeline and r.pipeline["frame_stack"] == 4 and r.pipeline["options"]["episodic_life"]
    assert r.dones.any()  # lives were lost, and the frame stack restarted after each
    out = recompute(agent, r)
    assert torch.equal(out.logits, r.logits) and torch.equal(out.value, r.values)
    # the observations are the pipeline's own: replaying the actions in a fresh pipeline, built from the recorded
    # settings, gives the same bytes
    spec = PipelineSpec.from_dict(r.pipeline)
    env = make_pipeline(spec.name, spec.env_id, spec.frame_stack, **spec.options)
    step = env.reset(seed=3)
    for t in range(len(r)):
        assert np.array_equal(step.observation, r.observations[t].numpy()) and np.array_equal(
            step.frame, r.frames[t].numpy()
        )
        step = env.step(int(r.actions[t]))
        assert step.reward == r.rewards[t] and (step.terminated or step.truncated) == bool(r.dones[t])
        if r.dones[t]:
            step = env.reset()
    env.close()
    start = int(torch.nonzero(r.dones)[0]) + 1
    padding = r.observations[start, :3]
    if pipeline == "sb3_atari":  # VecFrameStack zero-pads after a reset; gymnasium's stacks repeat the reset frame
        assert not padding.any()
    else:
        assert torch.equal(padding, r.observations[start, 3:].expand(3, 84, 84))


def test_recurrent_policy_states_reset_at_episode_starts():
    """ppo_atari_lstm-like: one 84x84 frame, a recurrent core; the recorded states are the ones used on each step."""
    agent = TinyPolicy("cleanrl_atari", frame_stack=1, recurrent=True, seed=1)
    r = rollout(agent, "BreakoutNoFrameskip-v4", 150, seed=4, episodic_life=True, progress=False)
    assert r.observations.shape == (150, 1, 84, 84) and r.states[0].shape == (150, 16)
    ends = torch.nonzero(r.dones).flatten().tolist()
    assert ends and ends[-1] < len(r) - 1
    out = recompute(agent, r)
    assert torch.equal(out.logits, r.logits) and torch.equal(out.value, r.values)
    for t in range(len(r) - 1):  # the next step used the state this one produced, or the episode-start state
        expected = torch.zeros(16) if r.dones[t] else out.state[0][t]
        assert torch.equal(r.states[0][t + 1], expected), t
    assert torch.all(r.states[0][0] == 0) and r.states[0][ends[0]].abs().sum() > 0
    assert len(r.episode_returns()) == len(ends)


def test_rollout_options_sticky_actions_and_full_games():
    agent = TinyPolicy("gymnasium_atari", seed=2)
    sticky = rollout(agent, "ALE/Breakout-v5", 60, seed=5, progress=False)
    again = rollout(agent, "ALE/Breakout-v5", 60, seed=5, progress=False)  # seeded: sticky actions repeat too
    assert torch.equal(sticky.observations, again.observations) and torch.equal(sticky.actions, again.actions)
    assert sticky.pipeline["options"]["repeat_action_probability"] is None
    off = rollout(agent, "ALE/Breakout-v5", 60, seed=5, repeat_action_probability=0.0, progress=False)
    assert off.pipeline["options"]["repeat_action_probability"] == 0.0
    assert not torch.equal(off.observations, sticky.observations)


def test_full_games_by_default_lives_and_clipping_as_options():
    """The engine's default is the game as played (episodes end at game over, the game's score); the libraries'
    training settings (a lost life ends an episode, rewards clipped) are one keyword set away."""
    agent = TinyPolicy("sb3_atari", seed=2)
    full = rollout(agent, "BreakoutNoFrameskip-v4", 150, seed=7, progress=False)
    lives = rollout(agent, "BreakoutNoFrameskip-v4", 150, seed=7, progress=False, **library_defaults("sb3_atari"))
    assert full.pipeline["options"]["episodic_life"] is False and full.pipeline["options"]["clip_rewards"] is False
    assert lives.pipeline["options"]["episodic_life"] is True and lives.pipeline["options"]["clip_rewards"] is True
    assert int(lives.dones.sum()) > int(full.dones.sum())
    assert set(lives.rewards.tolist()) <= {-1.0, 0.0, 1.0}
    # until the first life is lost both play the same game
    first = int(torch.nonzero(lives.dones)[0])
    assert torch.equal(full.observations[: first + 1], lives.observations[: first + 1])


def test_play_episodes_with_any_policy():
    agent = TinyPolicy("sb3_atari", seed=3)
    r = rollout(agent, "BreakoutNoFrameskip-v4", 400, seed=6, max_episodes=3, episodic_life=True, progress=False)
    assert int(r.dones.sum()) == 3 and r.dones[-1]
    assert play_episodes(agent, "BreakoutNoFrameskip-v4", 3, seed=6, episodic_life=True) == r.episode_returns()


def test_policy_and_pipeline_mismatches():
    with pytest.raises(TypeError, match="must implement engine.core.policy.Policy"):
        rollout(object(), "BreakoutNoFrameskip-v4", 5, progress=False)
    with pytest.raises(ValueError, match=r"makes observations \(4, 80, 80\) but the agent takes \(4, 84, 84\)"):
        rollout(TinyPolicy(), "BreakoutNoFrameskip-v4", 5, screen_size=80, progress=False)
    with pytest.raises(ValueError, match="6 actions but the agent has 4"):
        rollout(TinyPolicy(), "PongNoFrameskip-v4", 5, progress=False)
    with pytest.raises(TypeError, match="sb3_atari pipeline takes no option 'stack_padding'"):
        rollout(TinyPolicy(), "BreakoutNoFrameskip-v4", 5, stack_padding="zero", progress=False)


def test_2017_rollout_records_its_observations():
    torch.manual_seed(0)
    agent = ActorCritic(num_actions=6, core="gru").eval()
    r = rollout(agent, "Pong-v4", 20, seed=0, progress=False)
    assert r.observations.shape == (20, 1, 80, 80) and r.observations.dtype == torch.uint8
    assert torch.equal(r.observations.float() / 255, preprocess_frames(r.frames))
    assert r.pipeline["name"] == "greydanus2017" and r.action_names[:2] == ("NOOP", "FIRE")
    with torch.inference_mode():
        assert torch.equal(agent(r.observations.float() / 255, r.states).logits, r.logits)
    # a Rollout without observations (e.g. from an older store) computes them from the frames
    from dataclasses import replace

    assert torch.equal(replace(r, observations=None).observations, r.observations)
    assert torch.equal(r[5:8].observations, r.observations[5:8])


def test_player_replay_reaches_the_recorded_position():
    from engine.env.rollout import Player

    agent = TinyPolicy("cleanrl_atari", seed=5)
    r = rollout(agent, "BreakoutNoFrameskip-v4", 120, seed=8, episodic_life=True, progress=False)
    assert r.dones[:100].any()
    player = Player(agent, "BreakoutNoFrameskip-v4", seed=8, episodic_life=True)
    player.replay(r.actions[:100], r.dones[:100], frames=r.frames[90:100], observations=r.observations[90:100].numpy())
    assert np.array_equal(player.observation, r.observations[100].numpy()) and np.array_equal(
        player.frame, r.frames[100].numpy()
    )
    player.close()
    tampered = r.observations[:10].numpy().copy()
    tampered[5, 0, 40, 40] ^= 1
    other = Player(agent, "BreakoutNoFrameskip-v4", seed=8, episodic_life=True)
    with pytest.raises(RuntimeError, match=r"diverged from the recording at step 5 \(observations differ\)"):
        other.replay(r.actions[:10], r.dones[:10], observations=tampered)
    other.close()
