"""Batched, device-agnostic perturbation and Jacobian saliency for Atari agents of any library (the method of Greydanus et al., 2017)."""

import os

# Intel MKL picks GEMM kernels by row count, so a row's result would change with the batch it is in. Its
# strict reproducibility mode makes every row independent of the batch (its cost is measured in docs/method.md,
# "How it is fast"). MKL reads this on its first call, so it must be set before any matrix product runs; a value the user
# set is kept. See engine.core.batching.
os.environ.setdefault("MKL_CBWR", "AUTO,STRICT")

from .core.errors import CheckpointError as CheckpointError
from .core.errors import EngineError as EngineError
from .core.errors import UnknownEnvironmentError as UnknownEnvironmentError
from .core.settings import SaliencyConfig as SaliencyConfig
from .core.version import VERSION

__version__ = VERSION

# The rest is imported on first use: importing torch takes seconds, and the app checks its settings before that.
_LAZY = {
    "ActorCritic": ".policies.greydanus2017",
    "PolicyOutput": ".core.policy",
    "load_agent": ".policies.greydanus2017",
    "preprocess_frames": ".core.preprocessing",
    "perturbation_saliency": ".core.perturbation",
    "occlusion_sensitivity": ".core.occlusion",
    "sarfa_saliency": ".core.sarfa",
    "rise_saliency": ".core.rise",
    "lime_saliency": ".core.lime",
    "jacobian_saliency": ".core.jacobian",
    "compute_saliency": ".core.saliency",
    "rollout": ".env.rollout",  # needs gymnasium and ale-py, which the core does not
    "load_policy": ".policies.loading",
    "load_sb3": ".policies.sb3_zip",
    "load_cleanrl": ".policies.cleanrl",
    "wrap_policy": ".policies.module",
    "Policy": ".core.policy",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module 'engine' has no attribute {name!r}")


__all__ = sorted(["__version__", "CheckpointError", "EngineError", "SaliencyConfig", "UnknownEnvironmentError", *_LAZY])
