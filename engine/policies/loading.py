"""One loader for every supported file: it recognises the format from the file itself and hands it to its adapter.

- a zip with ``policy.pth`` and ``data``: a Stable-Baselines3 / sb3-contrib model (:mod:`engine.policies.sb3`);
- a ``torch.save``d state dict with CleanRL's parameter names (``network.*``, ``actor.*``, ``critic.*``, ``lstm.*``,
  ``q_network.*``): a CleanRL agent (:mod:`engine.policies.cleanrl`);
- anything else is read as the 2017 actor-critic agents' state dict (:func:`engine.policies.greydanus2017.load_agent`), whose
  errors say what was found.
"""

from __future__ import annotations

import os
import zipfile

import torch

from ..core.errors import CheckpointError
from ..core.policy import Policy
from .greydanus2017 import load_agent

KINDS = ("auto", "greydanus2017", "sb3", "cleanrl")


def detect_kind(path) -> str:
    """``"sb3"``, ``"cleanrl"`` or ``"greydanus2017"`` from the file's contents (no code from it runs)."""
    path = os.fspath(path)
    if zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as archive:
                names = set(archive.namelist())
        except (zipfile.BadZipFile, OSError) as exc:
            raise CheckpointError(f"{path}: a damaged zip file ({exc})") from None
        if "policy.pth" in names and "data" in names:
            return "sb3"
        try:
            # memory-mapped: the keys are read, no storage is (the adapter checks sizes before it loads)
            keys = set(torch.load(path, map_location="cpu", weights_only=True, mmap=True).keys())
        except Exception:  # not a state dict of tensors: the 2017 loader names the problem
            return "greydanus2017"
        if any(k.startswith(("network.", "q_network.", "actor.", "critic.")) for k in keys) and "actor_linear.weight" not in keys:
            return "cleanrl"
    return "greydanus2017"


def load_policy(path, device="auto", dtype=torch.float32, kind: str = "auto") -> Policy:
    """Load any supported agent file as a :class:`engine.core.policy.Policy` (``kind="auto"`` recognises it).

    Args:
        path: the file a library wrote (an SB3 ``.zip``, a CleanRL state dict, a 2017 ``.tar``/``.pt``).
        device: ``"auto"``, ``"cpu"``, ``"cuda"``; dtype: the floating dtype to compute in.
        kind: one of :data:`KINDS`; name it to refuse files of another kind.

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
    found = detect_kind(path)
    if kind not in ("auto", found):
        raise CheckpointError(f"{os.fspath(path)} holds a {found} agent, not a {kind} one: set the agent kind to {found} (or auto)")
    if found == "sb3":
        from .sb3 import load_sb3

        return load_sb3(path, device=_device(device), dtype=dtype)
    if found == "cleanrl":
        from .cleanrl import load_cleanrl

        return load_cleanrl(path, device=_device(device), dtype=dtype)
    return load_agent(path, device=device, dtype=dtype)


def _device(device):
    from ..core.device import resolve_device

    return resolve_device(device)
