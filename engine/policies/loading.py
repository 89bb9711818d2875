"""One loader for every supported file: it recognises the format from the file itself and hands it to its adapter.

- a zip with ``policy.pth`` and ``data``: a Stable-Baselines3 / sb3-contrib model (:mod:`engine.policies.sb3_zip`);
- a ``torch.save``d state dict with CleanRL's parameter names (``network.*``, ``actor.*``, ``critic.*``, ``lstm.*``,
  ``q_network.*``): a CleanRL agent (:mod:`engine.policies.cleanrl`);
- a ``torch.save``d state dict with the 2017 agents' names (``conv1`` .. ``conv4``, ``lstm``/``gru``,
  ``critic_linear``, ``actor_linear``): :func:`engine.policies.greydanus2017.load_agent`, whose errors say what
  is missing or wrong.

An ``hf://<owner>/<name>[@<revision>]`` name (an RL Zoo repository on the Hugging Face Hub, e.g.
``hf://sb3/ppo-BreakoutNoFrameskip-v4``) is fetched and checked by :mod:`engine.policies.hub` (the optional
``huggingface_hub``), then loaded as the SB3 zip it holds.

Anything else is a :class:`CheckpointError` that says what the file is (text, JSON, a zip that is no SB3 model, a
state dict of no supported agent with its first keys, ...) and, for a network of your own, points to
:func:`engine.policies.module.wrap_policy`. Only the file's structure is read to tell (tensors' shapes, no
storage), with the bounds of :mod:`engine.policies.checkpoint`.
"""

from __future__ import annotations

import os
import zipfile

import torch

from ..core.errors import CheckpointError
from ..core.policy import Policy
from .checkpoint import OWN_NETWORK, NotACheckpoint, read_state_dict
from .greydanus2017 import load_agent

KINDS = ("auto", "greydanus2017", "sb3", "cleanrl")
SUPPORTED_FILES = (
    "load_policy reads a Stable-Baselines3 / sb3-contrib model zip (model.save(path)), or a CleanRL or 2017 "
    f"agent's state dict (torch.save(agent.state_dict(), path)); {OWN_NETWORK}"
)
_CLEANRL_PREFIXES = ("network.", "q_network.", "actor.", "critic.")
_GREYDANUS_KEYS = frozenset(
    [f"conv{i}.weight" for i in range(1, 5)]
    + ["lstm.weight_ih", "gru.weight_ih", "critic_linear.weight", "actor_linear.weight"]
)


def detect_kind(path) -> str:
    """``"sb3"``, ``"cleanrl"`` or ``"greydanus2017"`` from the file's contents (no code from it runs, no
    storage is read); a :class:`CheckpointError` saying what the file is when it is none of them."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"{path!r} does not exist (or is not a file): check the path")
    if zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
        except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
            raise CheckpointError(
                f"{path!r} is not an agent file: a damaged zip archive ({exc}); {SUPPORTED_FILES}"
            ) from None
        if "policy.pth" in names and "data" in names:
            return "sb3"
        if not any(n.endswith("data.pkl") for n in names):
            raise CheckpointError(
                f"{path!r} is not an agent file: it is a zip archive holding {sorted(names)[:8]}"
                f"{' ...' if len(names) > 8 else ''}, not an SB3 model (model.save writes 'data' and 'policy.pth') "
                f"nor a torch.save file (data.pkl); {SUPPORTED_FILES}"
            )
    try:
        keys = sorted(read_state_dict(path, meta=True))
    except NotACheckpoint as exc:  # text, JSON, empty, random bytes, TorchScript, ...
        raise CheckpointError(f"{path!r} is not an agent file: {exc.found}; {SUPPORTED_FILES}") from None
    if any(k.startswith(_CLEANRL_PREFIXES) for k in keys) and "actor_linear.weight" not in keys:
        return "cleanrl"
    if _GREYDANUS_KEYS.intersection(keys):
        return "greydanus2017"
    found = f"keys {keys[:8]}{' ...' if len(keys) > 8 else ''}" if keys else "no tensors at all"
    raise CheckpointError(
        f"{path!r} holds a state dict of no supported agent ({len(keys)} tensors, {found}): not an SB3 model, nor "
        "CleanRL's (network.*, actor.*, critic.*, q_network.*) nor the 2017 agents' (conv1..conv4, lstm/gru, "
        "actor_linear, critic_linear). For a network of your own, build it, load the state dict into it and wrap it "
        "with engine.policies.module.wrap_policy(net, observation_shape=..., pipeline=...)"
    )


def load_policy(path, device="auto", dtype=torch.float32, kind: str = "auto", cache_dir=None) -> Policy:
    """Load any supported agent file as a :class:`engine.core.policy.Policy` (``kind="auto"`` recognises it).

    Args:
        path: the file a library wrote (an SB3 ``.zip``, a CleanRL state dict, a 2017 ``.tar``/``.pt``), or an
            ``hf://<owner>/<name>[@<revision>]`` name of an RL Zoo agent on the Hugging Face Hub
            (:mod:`engine.policies.hub`; the policy keeps what was fetched as ``policy.hub``).
        device: ``"auto"``, ``"cpu"``, ``"cuda"``; dtype: the floating dtype to compute in.
        kind: one of :data:`KINDS`; name it to refuse files of another kind.
        cache_dir: where ``hf://`` agents are cached (default: the registry's checkpoint cache).

    Example: the built-in recurrent PPO agent for Pong, a CleanRL ``ppo_atari_lstm`` state dict that ships inside
    the package (the registry turns its name into the file's path):

    >>> import torch
    >>> from engine.policies.registry import resolve_checkpoint
    >>> path = resolve_checkpoint("builtin/pong_ppo")
    >>> detect_kind(path)
    'cleanrl'
    >>> agent = load_policy(path, device="cpu")
    >>> agent.pipeline, agent.frame_stack, agent.observation_shape, agent.num_actions, agent.dtype
    ('cleanrl_atari', 1, (1, 84, 84), 6, torch.float32)
    >>> [tuple(s.shape) for s in agent.initial_state(1)]  # the LSTM's (h, c)
    [(1, 128), (1, 128)]
    >>> load_policy(path, kind="sb3")
    Traceback (most recent call last):
    ...
    engine.core.errors.CheckpointError: ...holds a cleanrl agent, not a sb3 one: set the agent kind to cleanrl (or auto)
    """
    if kind not in KINDS:
        raise CheckpointError(f"agent kind must be one of {KINDS}, got {kind!r}")
    from .hub import configure, fetch_hub_agent, fetched_agent, is_hub_name

    hub = fetch_hub_agent(path, cache_dir=cache_dir) if is_hub_name(path) else fetched_agent(path)
    if hub is not None:
        path = hub.model
    found = detect_kind(path)
    if kind not in ("auto", found):
        raise CheckpointError(
            f"{os.fspath(path)} holds a {found} agent, not a {kind} one: set the agent kind to {found} (or auto)"
        )
    if found == "sb3":
        from .sb3_zip import load_sb3

        policy = load_sb3(path, device=_device(device), dtype=dtype)
        return configure(policy, hub) if hub is not None else policy
    if hub is not None:
        raise CheckpointError(f"{hub.name}: its model {hub.model.name} holds a {found} agent, not an SB3 one")
    if found == "cleanrl":
        from .cleanrl import load_cleanrl

        return load_cleanrl(path, device=_device(device), dtype=dtype)
    return load_agent(path, device=device, dtype=dtype)


def _device(device):
    from ..core.device import resolve_device

    return resolve_device(device)
