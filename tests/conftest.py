"""Fixtures shared by every level (unit, integration, app): the real baby-a3c agent and a short real rollout,
device/dtype parameters, and how tests find real checkpoints.

The real agents are found the way users find them, through the registry (``engine.policies.registry``): the
directories of ``$ATARI_SALIENCY_CHECKPOINTS`` (a ``:``-separated list of folders holding
``baby-a3c/<game>-v4/model.<N>.tar``, e.g. ``../shared/checkpoints``), then the download cache, then a
sha256-checked download. Before downloading, one quick probe per session (at most about 10 s) checks that the
download address answers. Where nothing can serve, the tests that need a real agent skip with one reason that
says what to do; ``ATARI_SALIENCY_REQUIRE_CHECKPOINTS=1`` (set by ``.ci/run``) turns that skip into a failure.
Tests of the built-in agent (shipped in ``engine/agents``) and of random agents need none of this.
"""

from __future__ import annotations

import os
import sys
import threading
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import torch

from engine.core.errors import CheckpointError
from engine.core.files import CHECKPOINT_CACHE
from engine.env.rollout import rollout
from engine.policies import registry
from engine.policies.greydanus2017 import ActorCritic, load_agent

if TYPE_CHECKING:
    from engine.jobs.config import JobConfig

# pytest imports this file as ``conftest``; test modules import its helpers as ``tests.conftest``: one module,
# so that the download probe and the resolved checkpoints are shared by both
if __name__ == "conftest":
    sys.modules.setdefault("tests.conftest", sys.modules[__name__])

# pytest-xdist's workers share the cores: each runs torch on its share, so that N workers do not start N x cores
# threads that wait on one another
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))

ROOT = Path(__file__).resolve().parents[1]
REQUIRE_VAR = "ATARI_SALIENCY_REQUIRE_CHECKPOINTS"
PROBE_SECONDS = 5.0  # per network operation; the whole probe gives up after twice that


def _configured_root() -> Path:
    for directory in registry.checkpoint_dirs():
        if (directory / "baby-a3c").is_dir():
            return directory
    return CHECKPOINT_CACHE


# A folder laid out like ../shared/checkpoints: the first of $ATARI_SALIENCY_CHECKPOINTS that has baby-a3c/, else
# the download cache. Kept for tests that build paths by hand; its files exist only when checkpoint() succeeds, so
# prefer checkpoint(), the fixtures below and checkpoints_env().
CHECKPOINTS = _configured_root()
BABY_A3C = CHECKPOINTS / "baby-a3c"


def checkpoints_required() -> bool:
    return os.environ.get(REQUIRE_VAR, "").strip().lower() not in ("", "0", "false", "no")


_probe_result: list[str | None] = []  # [None] = the download address answered, [reason] = it did not
_resolved: dict[str, Path] = {}


def download_probe() -> str | None:
    """None if the registry's download address answers a HEAD request, else why not. Once per session, and
    at most about 2 * PROBE_SECONDS (DNS included: the request runs in a thread that is not waited for longer)."""
    if not _probe_result:
        url = registry.KNOWN["baby-a3c/pong@40"].url
        answer: list[str | None] = []

        def probe():
            try:
                urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=PROBE_SECONDS).close()
                answer.append(None)
            except Exception as exc:  # URLError, HTTPError, OSError, timeouts, ...
                answer.append(f"{type(exc).__name__}: {exc}")

        thread = threading.Thread(target=probe, name="checkpoint-download-probe", daemon=True)
        thread.start()
        thread.join(2 * PROBE_SECONDS)
        host = url.split("/")[2]
        _probe_result.append(answer[0] if answer else f"no answer from {host} within {2 * PROBE_SECONDS:g} s")
    return _probe_result[0]


SKIP_REASON = (
    f"needs the real baby-a3c checkpoints: set {registry.ENV_VAR}=/path/to/checkpoints, put them in the cache "
    f"{registry.CHECKPOINT_CACHE} or go online"
)
HOW_TO = (
    f"Set {registry.ENV_VAR}=/path/to/checkpoints (a folder holding baby-a3c/<game>-v4/model.<N>.tar), copy them "
    f"into the cache {registry.CHECKPOINT_CACHE} (as baby-a3c/<game>-v4/model.<N>.tar), or go online so that the "
    f"registry downloads them there; {REQUIRE_VAR}=1 turns these skips into failures."
)
_why_unavailable: list[str] = []  # the details, printed once at the end of the run (pytest_terminal_summary)


def _unavailable(detail: str):
    if checkpoints_required():
        pytest.fail(
            f"{REQUIRE_VAR}=1 but the real baby-a3c checkpoints are unavailable ({detail}). {HOW_TO}", pytrace=False
        )
    _why_unavailable[:] = [detail]
    pytest.skip(SKIP_REASON)


def pytest_terminal_summary(terminalreporter):
    if _why_unavailable:
        skipped = [r for r in terminalreporter.stats.get("skipped", []) if SKIP_REASON in str(r.longrepr)]
        terminalreporter.write_sep("=", "real baby-a3c checkpoints unavailable", yellow=True)
        terminalreporter.write_line(f"{len(skipped)} tests skipped: {_why_unavailable[0]}.")
        terminalreporter.write_line(HOW_TO)


def checkpoint(game: str, frames: int = 40) -> Path:
    """The file of ``baby-a3c/<game>@<frames>`` through the registry: local directories, cache, download.
    Skips the calling test (fails it under ATARI_SALIENCY_REQUIRE_CHECKPOINTS=1) when none can serve."""
    name = f"baby-a3c/{game}@{frames}"
    if name in _resolved:
        return _resolved[name]
    entry = registry.known_checkpoint(name)
    if entry is None:
        raise ValueError(f"{name} is not in the registry: known are {', '.join(sorted(registry.KNOWN))}")
    try:
        _resolved[name] = registry.resolve_checkpoint(name, allow_download=False)
        return _resolved[name]
    except CheckpointError as exc:
        if any((d / entry.relative_path).is_file() for d in registry.checkpoint_dirs()):
            # a local file is there but the registry refused it (e.g. its sha256): a real problem, not a skip
            raise CheckpointError(f"{name} exists locally but the registry refused it: {exc}") from exc
    configured = f"={os.environ[registry.ENV_VAR]}" if os.environ.get(registry.ENV_VAR) else " (unset)"
    where = f"not under ${registry.ENV_VAR}{configured}, not in the cache {CHECKPOINT_CACHE}"
    offline = download_probe()
    if offline is not None:
        _unavailable(f"{where}, download address unreachable: {offline}")
    try:
        _resolved[name] = registry.resolve_checkpoint(name)  # downloads into the cache, sha256-checked
    except CheckpointError as exc:
        _probe_result[:] = [f"download failed: {exc}"]  # do not try again for every test
        _unavailable(f"{where}, {_probe_result[0]}")
    return _resolved[name]


def checkpoint_root(game: str, frames: int = 40) -> Path:
    """The folder that serves ``baby-a3c/<game>@<frames>`` as ``baby-a3c/<game>-v4/model.<frames>.tar``."""
    path = checkpoint(game, frames)
    return path.parents[len(Path(registry.known_checkpoint(f"baby-a3c/{game}@{frames}").relative_path).parts) - 1]


def checkpoints_env(*names: tuple[str, int], base: dict | None = None) -> dict:
    """``os.environ`` (or ``base``) with ``$ATARI_SALIENCY_CHECKPOINTS`` naming folders that serve each
    ``(game, frames)`` of ``names`` (default: every baby-a3c checkpoint), for ``python -m engine`` subprocesses.
    Skips like :func:`checkpoint` when they cannot be had."""
    if not names:  # registry names are "baby-a3c/<game>@<frames>"
        names = tuple(
            (game, int(frames)) for game, frames in (n.removeprefix("baby-a3c/").split("@") for n in registry.KNOWN)
        )
    roots = list(dict.fromkeys(str(checkpoint_root(game, frames)) for game, frames in names))
    env = dict(os.environ if base is None else base)
    env[registry.ENV_VAR] = os.pathsep.join(
        roots + [d for d in env.get(registry.ENV_VAR, "").split(os.pathsep) if d and d not in roots]
    )
    return env


class LazyCheckpoint(os.PathLike):
    """A baby-a3c checkpoint path that is resolved (and may skip) on first use, not at import time; for module
    constants such as ``CHECKPOINT = LazyCheckpoint("pong")``."""

    def __init__(self, game: str, frames: int = 40):
        self.game, self.frames = game, frames

    @property
    def path(self) -> Path:
        return checkpoint(self.game, self.frames)

    def exists(self) -> bool:
        return self.path.exists()

    def __fspath__(self) -> str:
        return str(self.path)

    __str__ = __fspath__

    def __repr__(self) -> str:
        return f"LazyCheckpoint('baby-a3c/{self.game}@{self.frames}')"


def lazy_checkpoint(game: str, frames: int = 40) -> LazyCheckpoint:
    return LazyCheckpoint(game, frames)


@pytest.fixture(scope="session")
def pong_checkpoint() -> Path:
    return checkpoint("pong")


@pytest.fixture(scope="session")
def pong_agent(pong_checkpoint) -> ActorCritic:
    return load_agent(pong_checkpoint, device="cpu")


@pytest.fixture(scope="session")
def pong_rollout(pong_agent):
    """60 real Pong steps played by the real agent (seeded); later frames have a ball and non-zero states."""
    return rollout(pong_agent, "Pong-v4", 60, seed=0, progress=False)


def tiny_job(out_dir, steps: int = 4, movie: bool = True, **sections) -> JobConfig:
    """A main-job configuration of a few steps of the built-in 2017 agent at a coarse grid, written to ``out_dir``;
    ``sections`` update the config's sections (``rollout={"steps": 10}``, ``store={...}``)."""
    from engine.jobs.config import JobConfig

    data: dict = {
        "agent": {"checkpoint": "builtin/pong"},
        "rollout": {"steps": steps},
        "saliency": {"density": 20},
        "output": {"dir": str(out_dir), "movie": movie},
        "progress": False,
    }
    for key, value in sections.items():
        data[key] = {**data.get(key, {}), **value}
    return JobConfig.from_dict(data)


@pytest.fixture(params=[torch.float32, torch.float64], ids=["float32", "float64"])
def dtype(request) -> torch.dtype:
    return request.param


@pytest.fixture(params=["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
def device(request) -> torch.device:
    return torch.device(request.param)


def float32_rounding(module: torch.nn.Module, *inputs) -> float:
    """How far one float32 pass of ``module`` on ``inputs`` rounds, measured with this machine's kernels: the
    largest difference between its floating outputs (tensors, nested in tuples, lists or dicts) and those of the same
    module cast to float64 on the same inputs. Two float32 programs of one computation (a batch padded or not,
    sums in other orders) each round by about this much, in orders that differ: :func:`assert_float32_close`
    allows four times it, a bound derived where the test runs rather than a tolerance tuned on one CPU."""
    import copy

    from torch.utils._pytree import tree_leaves, tree_map

    def double(t):
        return t.double() if isinstance(t, torch.Tensor) and t.is_floating_point() else t

    exact = copy.deepcopy(module).double()
    with torch.no_grad():
        got, want = tree_leaves(module(*inputs)), tree_leaves(exact(*tree_map(double, inputs)))
    pairs = [(g, w) for g, w in zip(got, want) if isinstance(g, torch.Tensor) and g.is_floating_point()]
    return max((float((g.double() - w).abs().max()) for g, w in pairs), default=0.0)


def assert_float32_close(ours: torch.Tensor, reference: torch.Tensor, rounding: float) -> None:
    """``ours`` equals ``reference`` to four times ``rounding`` (:func:`float32_rounding`), a bound that must be far
    below the values' size, so that a wrong output does not pass."""
    ours, reference = ours.detach().double(), reference.detach().double()
    assert ours.shape == reference.shape, (ours.shape, reference.shape)
    scale = float(reference.abs().max())
    assert rounding < 1e-4 * scale or scale == 0, "the rounding measured would not catch a wrong output"
    assert float((ours - reference).abs().max()) <= 4 * rounding, (float((ours - reference).abs().max()), rounding)


def saliency_rounding(saliency, policy, observations, states, keys, **options) -> dict[str, float]:
    """How far ``saliency(policy, observations, states, **options)`` rounds each result in ``keys`` (e.g.
    ``actor_scores``) in float32, measured with this machine's kernels: the largest difference from the same
    call on ``policy`` cast to float64 (:func:`float32_rounding` for maps; bound comparisons with
    :func:`assert_float32_close`)."""
    import copy

    exact = copy.deepcopy(policy).double()
    with torch.no_grad():
        got = saliency(policy, observations, states, **options)
        want = saliency(exact, observations, tuple(s.double() for s in states), **options)
    return {key: float((getattr(got, key).double() - getattr(want, key).double()).abs().max()) for key in keys}


def interrupted_command(argv: list[str], cwd: Path, started: Path, settle: float) -> tuple[int, str]:
    """Run ``python <argv>`` in ``cwd``, send it SIGINT (Ctrl-C) ``settle`` seconds after ``started`` appears (the
    command is then at work), and return its exit code and stderr."""
    import signal
    import subprocess
    import time

    job = subprocess.Popen(
        [sys.executable, *argv],
        cwd=cwd,
        env={**os.environ, "HYDRA_FULL_ERROR": "0"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # a shell's background job ignores SIGINT, and a Python started so never sees Ctrl-C: the command gets the
        # default disposition whoever started the tests
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        deadline = time.monotonic() + 120
        while not started.exists() and job.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(settle)
        job.send_signal(signal.SIGINT)
        _, stderr = job.communicate(timeout=120)
    finally:  # a command that did not stop is not left running after the test
        if job.poll() is None:
            job.kill()
            job.communicate()
    return job.returncode, stderr
