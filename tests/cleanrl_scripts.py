"""CleanRL's agent classes, copied from its scripts, to test the adapters against the scripts' own outputs.

Source: github.com/vwxyzjn/cleanrl at commit fe8d8a03c41a7ef5b523e2e354bd01c363e786bb, files
cleanrl/ppo_atari.py (``PPOAgent``), cleanrl/ppo_atari_lstm.py (``PPOLSTMAgent``), cleanrl/dqn_atari.py
(``QNetwork``), cleanrl/ppo_continuous_action.py (``ContinuousAgent``, for its refusal) and cleanrl/dqn.py
(``MLPQNetwork``, likewise). The class bodies are the scripts' own, unchanged but for the class names; ``envs``
is a stand-in with the attributes the constructors read. Each script saves with
``torch.save(agent.state_dict(), path)``, as :func:`save_like_cleanrl` does.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import torch
import torch.nn as nn
from torch.distributions.categorical import Categorical
from torch.distributions.normal import Normal


def fake_envs(num_actions: int = 6, obs_shape: tuple[int, ...] = (4, 84, 84), continuous: bool = False):
    """What the constructors read of a vector env: ``single_action_space.n`` (or ``.shape``) and
    ``single_observation_space.shape``."""
    action_space = SimpleNamespace(shape=(num_actions,)) if continuous else SimpleNamespace(n=num_actions)
    return SimpleNamespace(single_action_space=action_space, single_observation_space=SimpleNamespace(shape=obs_shape))


def layer_init(layer, std=np.sqrt(2), bias_const=0.0):
    torch.nn.init.orthogonal_(layer.weight, std)
    torch.nn.init.constant_(layer.bias, bias_const)
    return layer


# --- cleanrl/ppo_atari.py -----------------------------------------------------------------------------------------
class PPOAgent(nn.Module):
    def __init__(self, envs):
        super().__init__()
        self.network = nn.Sequential(
            layer_init(nn.Conv2d(4, 32, 8, stride=4)),
            nn.ReLU(),
            layer_init(nn.Conv2d(32, 64, 4, stride=2)),
            nn.ReLU(),
            layer_init(nn.Conv2d(64, 64, 3, stride=1)),
            nn.ReLU(),
            nn.Flatten(),
            layer_init(nn.Linear(64 * 7 * 7, 512)),
            nn.ReLU(),
        )
        self.actor = layer_init(nn.Linear(512, envs.single_action_space.n), std=0.01)
        self.critic = layer_init(nn.Linear(512, 1), std=1)

    def get_value(self, x):
        return self.critic(self.network(x / 255.0))

    def get_action_and_value(self, x, action=None):
        hidden = self.network(x / 255.0)
        logits = self.actor(hidden)
        probs = Categorical(logits=logits)
        if action is None:
            action = probs.sample()
        return action, probs.log_prob(action), probs.entropy(), self.critic(hidden)


# --- cleanrl/ppo_atari_lstm.py ------------------------------------------------------------------------------------
class PPOLSTMAgent(nn.Module):
    def __init__(self, envs):
        super().__init__()
        self.network = nn.Sequential(
            layer_init(nn.Conv2d(1, 32, 8, stride=4)),
            nn.ReLU(),
            layer_init(nn.Conv2d(32, 64, 4, stride=2)),
            nn.ReLU(),
            layer_init(nn.Conv2d(64, 64, 3, stride=1)),
            nn.ReLU(),
            nn.Flatten(),
            layer_init(nn.Linear(64 * 7 * 7, 512)),
            nn.ReLU(),
        )
        self.lstm = nn.LSTM(512, 128)
        for name, param in self.lstm.named_parameters():
            if "bias" in name:
                nn.init.constant_(param, 0)
            elif "weight" in name:
                nn.init.orthogonal_(param, 1.0)
        self.actor = layer_init(nn.Linear(128, envs.single_action_space.n), std=0.01)
        self.critic = layer_init(nn.Linear(128, 1), std=1)

    def get_states(self, x, lstm_state, done):
        hidden = self.network(x / 255.0)

        # LSTM logic
        batch_size = lstm_state[0].shape[1]
        hidden = hidden.reshape((-1, batch_size, self.lstm.input_size))
        done = done.reshape((-1, batch_size))
        new_hidden = []
        for h, d in zip(hidden, done):
            h, lstm_state = self.lstm(
                h.unsqueeze(0),
                (
                    (1.0 - d).view(1, -1, 1) * lstm_state[0],
                    (1.0 - d).view(1, -1, 1) * lstm_state[1],
                ),
            )
            new_hidden += [h]
        new_hidden = torch.flatten(torch.cat(new_hidden), 0, 1)
        return new_hidden, lstm_state

    def get_value(self, x, lstm_state, done):
        hidden, _ = self.get_states(x, lstm_state, done)
        return self.critic(hidden)

    def get_action_and_value(self, x, lstm_state, done, action=None):
        hidden, lstm_state = self.get_states(x, lstm_state, done)
        logits = self.actor(hidden)
        probs = Categorical(logits=logits)
        if action is None:
            action = probs.sample()
        return action, probs.log_prob(action), probs.entropy(), self.critic(hidden), lstm_state


# --- cleanrl/dqn_atari.py -----------------------------------------------------------------------------------------
class QNetwork(nn.Module):
    def __init__(self, env):
        super().__init__()
        self.network = nn.Sequential(
            nn.Conv2d(4, 32, 8, stride=4),
            nn.ReLU(),
            nn.Conv2d(32, 64, 4, stride=2),
            nn.ReLU(),
            nn.Conv2d(64, 64, 3, stride=1),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(3136, 512),
            nn.ReLU(),
            nn.Linear(512, env.single_action_space.n),
        )

    def forward(self, x):
        return self.network(x / 255.0)


# --- cleanrl/ppo_continuous_action.py (refused: continuous actions) -----------------------------------------------
class ContinuousAgent(nn.Module):
    def __init__(self, envs):
        super().__init__()
        self.critic = nn.Sequential(
            layer_init(nn.Linear(np.array(envs.single_observation_space.shape).prod(), 64)),
            nn.Tanh(),
            layer_init(nn.Linear(64, 64)),
            nn.Tanh(),
            layer_init(nn.Linear(64, 1), std=1.0),
        )
        self.actor_mean = nn.Sequential(
            layer_init(nn.Linear(np.array(envs.single_observation_space.shape).prod(), 64)),
            nn.Tanh(),
            layer_init(nn.Linear(64, 64)),
            nn.Tanh(),
            layer_init(nn.Linear(64, np.prod(envs.single_action_space.shape)), std=0.01),
        )
        self.actor_logstd = nn.Parameter(torch.zeros(1, np.prod(envs.single_action_space.shape)))

    def get_value(self, x):
        return self.critic(x)

    def get_action_and_value(self, x, action=None):
        action_mean = self.actor_mean(x)
        action_logstd = self.actor_logstd.expand_as(action_mean)
        action_std = torch.exp(action_logstd)
        probs = Normal(action_mean, action_std)
        if action is None:
            action = probs.sample()
        return action, probs.log_prob(action).sum(1), probs.entropy().sum(1), self.critic(x)


# --- cleanrl/dqn.py (refused: an MLP on vector observations) ------------------------------------------------------
class MLPQNetwork(nn.Module):
    def __init__(self, env):
        super().__init__()
        self.network = nn.Sequential(
            nn.Linear(np.array(env.single_observation_space.shape).prod(), 120),
            nn.ReLU(),
            nn.Linear(120, 84),
            nn.ReLU(),
            nn.Linear(84, env.single_action_space.n),
        )

    def forward(self, x):
        return self.network(x)


# --- helpers ------------------------------------------------------------------------------------------------------

SCRIPTS = {"ppo_atari": PPOAgent, "ppo_atari_lstm": PPOLSTMAgent, "dqn_atari": QNetwork}
CHANNELS = {"ppo_atari": 4, "ppo_atari_lstm": 1, "dqn_atari": 4}


def make_agent(script: str, num_actions: int = 6, seed: int = 0, perturb_biases: bool = True) -> nn.Module:
    """The script's agent with seeded weights, in eval mode. The scripts initialise biases to 0 (and the LSTM's);
    ``perturb_biases`` gives them small random values so a wrongly wired bias cannot go unnoticed."""
    torch.manual_seed(seed)
    agent = SCRIPTS[script](fake_envs(num_actions, (CHANNELS[script], 84, 84)))
    if perturb_biases:
        with torch.no_grad():
            for name, p in agent.named_parameters():
                if "bias" in name:
                    p.copy_(0.05 * torch.randn_like(p))
    return agent.eval()


def save_like_cleanrl(agent: nn.Module, path) -> None:
    """What the scripts do: ``torch.save(agent.state_dict(), model_path)``."""
    torch.save(agent.state_dict(), path)


def random_bytes(n: int, channels: int, seed: int = 1) -> torch.Tensor:
    """(n, channels, 84, 84) uint8 observations, as the scripts' envs return them."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, channels, 84, 84), generator=g, dtype=torch.uint8)
