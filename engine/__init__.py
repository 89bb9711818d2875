"""Batched, device-agnostic saliency for recurrent Atari agents (Greydanus et al., 2017)."""

from .errors import CheckpointError, EngineError, UnknownEnvironmentError
from .policy import ActorCritic, PolicyOutput, load_agent
from .preprocessing import preprocess_frames

__all__ = [
    "ActorCritic",
    "CheckpointError",
    "EngineError",
    "PolicyOutput",
    "UnknownEnvironmentError",
    "load_agent",
    "preprocess_frames",
]
