"""Compiled perturbation passes (``compile=``): the perturbed copies' construction, the policy's forward pass and
the score reduction of one pass as one ``torch.compile`` (inductor) region, with one static pass size.

Every pass of a call has the same size (the last one padded), so a job compiles once per agent, pass size and
observation count. Inductor keeps what it compiled in a cache on disk, ``TORCHINDUCTOR_CACHE_DIR``: unless the user
set it, the engine puts it beside its checkpoint cache (``$XDG_CACHE_HOME/atari-saliency/inductor/<key>``, not the
system's temporary folder), so a later job with the same shapes, after a reboot too, reuses it: on a 2-core
Xeon its first pass took 17 s with an empty cache and 2 s with a filled one. The key (:func:`cache_dir`) names the
torch version, ATen's CPU capability and the CPU's instruction set, which inductor's own cache keys leave out: a
home folder shared by machines of different CPUs (a cluster), or a job run with ``ATEN_CPU_CAPABILITY`` set, would
otherwise load code compiled for another capability, which gave NaN maps or aborted the process (torch 2.14,
AVX-512 and AVX2 on one Xeon).
"""

from __future__ import annotations

import hashlib
import logging
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from .errors import EngineError
from .files import CACHE_HOME

COMPILE_MODES = ("default", "reduce-overhead", "max-autotune-no-cudagraphs", "max-autotune")
RECOMPILE_LIMIT = 64
CACHE_DIR = CACHE_HOME / "inductor"

_log = logging.getLogger(__name__)
_compile_seconds = [0.0]


def cpu_instruction_set() -> str:
    """The CPU's model and instruction-set flags as the system reports them (Linux: ``/proc/cpuinfo``'s first
    ``model name`` and ``flags`` lines), else the platform's processor and machine names."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        lines = []
    wanted = ("model name", "flags")
    found = {key: line.split(":", 1)[1].strip() for line in reversed(lines) for key in wanted if line.startswith(key)}
    if found:
        return "; ".join(f"{key}: {found[key]}" for key in wanted if key in found)
    return f"{platform.processor()} {platform.machine()}"


def cache_dir() -> Path:
    """The engine's inductor cache for this process: :data:`CACHE_DIR` / ``torch-<version>-<capability>-<cpu>``,
    ``capability`` ATen's CPU capability (``ATEN_CPU_CAPABILITY`` lowers it) and ``cpu`` a digest of
    :func:`cpu_instruction_set`, so code compiled for one CPU and capability is never loaded for another."""
    capability = torch.backends.cpu.get_cpu_capability().lower()
    cpu = hashlib.sha256(cpu_instruction_set().encode()).hexdigest()[:12]
    return CACHE_DIR / f"torch-{torch.__version__}-{capability}-{cpu}"


def compile_seconds() -> float:
    """Seconds this process spent in first passes that compiled (tracing, code generation, the pass itself)."""
    return _compile_seconds[0]


def compile_mode(compile: bool | str) -> str | None:
    """The inductor mode a ``compile`` setting asks for (``True`` -> ``"default"``), None for ``False``."""
    if compile is False:
        return None
    if compile is True:
        return "default"
    if isinstance(compile, str) and compile in COMPILE_MODES:
        return compile
    raise ValueError(f"compile must be False, True or one of {COMPILE_MODES}, got {compile!r}")


def use_engine_cache() -> None:
    """Point inductor at :func:`cache_dir` unless the user chose a cache (``TORCHINDUCTOR_CACHE_DIR``): also where
    inductor already set that variable to its own default (its first use in this process does), a folder of the
    system's temporary directory shared by every capability."""
    current = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    try:
        from torch._inductor.runtime.cache_dir_utils import default_cache_dir

        inductor_default: str | None = os.path.abspath(default_cache_dir())
    except ImportError:  # another torch layout: only an unset variable is known to be nobody's choice
        inductor_default = None
    if current is None or os.path.abspath(current) == inductor_default:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(cache_dir())


class CompiledPass:
    """``fn`` compiled by inductor for static shapes (``mode``: one of :data:`COMPILE_MODES`); the first call that
    compiles is timed and logged.

    Dynamo keeps compiled versions per function body and silently runs it uncompiled past its recompile limit
    (8): a process that scores several agents, observation counts or settings (a sweep) would pass it, so the
    limit is raised to :data:`RECOMPILE_LIMIT` (a user's higher setting is kept).

    Dynamo also stops its graph at an ``nn.LSTM``/``nn.GRU``/``nn.RNN`` module unless ``allow_rnn`` is set, which
    leaves the LSTM agents' (SB3-contrib's, CleanRL's ``ppo_atari_lstm``, ``builtin/pong_ppo``) recurrent core
    running eagerly between compiled pieces, and CUDA graphs in pieces: every call runs with it set, so the pass is
    one graph (the core traced by its decomposition; maps equal eager ones to float32 rounding, tested)."""

    def __init__(self, fn: Callable[..., Any], mode: str) -> None:
        self.started = time.perf_counter()  # importing the compiler stack counts too: seconds, once per process
        use_engine_cache()
        dynamo_config = torch._dynamo.config
        dynamo_config.recompile_limit = max(dynamo_config.recompile_limit, RECOMPILE_LIMIT)
        self.fn = torch.compile(fn, dynamic=False, mode=mode)
        self.timed = False

    def __call__(self, *args: Any) -> Any:
        with torch._dynamo.config.patch(allow_rnn=True):
            return self._call(*args)

    def _call(self, *args: Any) -> Any:
        if self.timed:
            return self.fn(*args)
        self.timed = True
        from torch._dynamo.exc import BackendCompilerFailed  # the compiler stack is imported only where used
        from torch._dynamo.utils import counters
        from torch._inductor.exc import InductorError

        graphs = counters["stats"]["unique_graphs"]
        try:
            out = self.fn(*args)
        except (BackendCompilerFailed, InductorError) as exc:
            raise EngineError(
                f"torch.compile could not compile the perturbed forward pass ({type(exc).__name__}: "
                f"{str(exc).strip().splitlines()[0][:200]}); on a CPU it needs a working C++ compiler (g++ or clang++), "
                "on CUDA a working Triton: install one, or turn compilation off (compile=False, saliency.compile=false)"
            ) from exc
        if counters["stats"]["unique_graphs"] > graphs:
            seconds = time.perf_counter() - self.started
            _compile_seconds[0] += seconds
            _log.info(
                "compiled the perturbed forward pass in %.1f s (once per agent, pass size and frame count)", seconds
            )
        return out
