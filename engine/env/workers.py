"""Environments stepped by worker processes: :class:`WorkerPipelines`, a :class:`engine.env.pipelines.PipelineBatch`
whose games are split over W processes (``rollout(..., num_envs=N, workers=W)``).

The emulator holds the GIL (threads do not help) and costs about 0.5 ms per environment step, so one process
records at most about 2,000 steps/s whatever N is; W processes step their shares of the N games at the same time
while the main process runs the agent's forward over all of them.

Design:

* **Start.** Workers are started with multiprocessing's ``forkserver`` method (safe with torch's threads, unlike
  ``fork``; cheaper than ``spawn``: the fork server imports this module once, without torch, and each worker is a
  fork of it). Each worker builds its own share of the environments from a picklable recipe, the pipeline's
  :class:`engine.env.pipelines.PipelineSpec` and the environments' seeds (no live environment crosses a process).
* **Data.** Observations and frames come back through one block of shared memory (``multiprocessing.shared_memory``;
  a row per environment, written by the worker that owns it, copied out by the main process after each step);
  actions go out and rewards and episode ends come back as small messages on a pipe per worker. No frame is
  pickled. The 2017 preprocessing (which costs more than that pipeline's emulator step) runs in the workers, each
  over its own games' frames (the bytes of a frame do not depend on the batch it is in; those workers import torch
  for it, the other pipelines' workers do not).
* **Same games.** A worker steps its environments exactly as :class:`PipelineBatch` does (same-step reset, same
  calls), and the emulator is deterministic, so the games are bit for bit those of the in-process batch.
* **Failures.** An exception in a worker (an environment that cannot be built, a failed step) comes back as one
  :class:`EnvWorkerError` naming the worker, its environments and the original error; a worker that dies (killed,
  crashed) is noticed through its process sentinel, and one that does not answer within ``timeout`` seconds is an
  error too: never a hang. Every error closes all the workers.
* **Cleanup.** :meth:`WorkerPipelines.close` (also run when the object is garbage-collected, at interpreter exit,
  and when a step or reset is interrupted, e.g. by Ctrl-C: the workers are then out of step) asks the workers to
  stop, then terminates and kills those that have not within a few seconds, and frees the shared memory. Workers
  ignore SIGINT (Ctrl-C reaches the main process, which closes them), and a worker whose main process is gone (its
  pipe closed) exits.

As with any multiprocessing start method other than ``fork``, a script that starts workers must do so under
``if __name__ == "__main__":``: each worker runs the script's top-level code again (as ``__mp_main__``; a
package's ``__main__``, as in ``python -m engine`` or ``python -m pytest``, is not re-run).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import time
import traceback
import weakref
from collections.abc import Sequence
from multiprocessing.connection import Connection, wait
from multiprocessing.shared_memory import SharedMemory
from typing import Any

import numpy as np

from ..core.settings import FRAME_SHAPE
from .pipelines import AtariPipeline, BatchStep, PipelineSpec, make_pipeline, quiet_emulator

START_METHOD = "forkserver"
_STOP_WAIT_S = 5.0  # how long close() waits for a worker to stop before terminating it


class EnvWorkerError(RuntimeError):
    """A worker process stepping environments failed, died or stopped answering (its workers are closed)."""


def check_workers(workers: object, num_envs: int) -> int:
    """``workers`` as an int (0: the environments run in this process), or a ValueError naming the setting."""
    if isinstance(workers, bool) or not isinstance(workers, int | np.integer) or not 0 <= workers <= num_envs:
        raise ValueError(
            f"workers must be an integer from 0 (environments stepped in this process) to num_envs ({num_envs}: "
            f"one process per environment), got {workers!r}"
        )
    return int(workers)


def observation_shape(spec: PipelineSpec) -> tuple[int, ...]:
    """The shape of the observations a pipeline of ``spec`` makes."""
    if spec.name == "greydanus2017":
        return (1, 80, 80)
    size = spec.options["screen_size"]
    return (spec.frame_stack, size, size)


def build_pipeline(spec: dict[str, Any], seed: int, time_limit: int | None = None) -> AtariPipeline:
    """The pipeline of ``spec`` (``PipelineSpec.to_dict()``), its action space seeded with ``seed`` as
    :func:`engine.env.rollout._agent_pipeline` seeds it. ``time_limit``: gymnasium's ``max_episode_steps`` on the
    ALE environment (tests use it to end episodes early)."""
    from . import pipelines

    spec_ = PipelineSpec.from_dict(spec)
    original = pipelines.make_env
    if time_limit is not None:  # this process only: a worker builds its environments one at a time

        def make_env(env_id, seed=None, first_seed=None, **kwargs):
            return original(env_id, seed, first_seed, max_episode_steps=time_limit, **kwargs)

        pipelines.make_env = make_env
    try:
        pipeline = make_pipeline(
            spec_.name, spec_.env_id, frame_stack=spec_.frame_stack, first_seed=seed, **spec_.options
        )
    finally:
        pipelines.make_env = original
    pipeline.env.action_space.seed(seed)
    return pipeline


class _Buffers:
    """The shared arrays: ``frames`` (N, 210, 160, 3) and ``observations`` (N, C, H, W), both uint8, in one block of
    shared memory."""

    def __init__(self, memory: SharedMemory, num_envs: int, obs_shape: tuple[int, ...]):
        self.memory = memory
        buf = memory.buf
        assert buf is not None
        frame_bytes = num_envs * int(np.prod(FRAME_SHAPE))
        self.frames = np.ndarray((num_envs, *FRAME_SHAPE), np.uint8, buf[:frame_bytes])
        self.observations = np.ndarray((num_envs, *obs_shape), np.uint8, buf[frame_bytes:])

    @staticmethod
    def size(num_envs: int, obs_shape: tuple[int, ...]) -> int:
        return num_envs * (int(np.prod(FRAME_SHAPE)) + int(np.prod(obs_shape)))

    def release(self) -> None:
        self.frames = self.observations = None  # type: ignore[assignment]  # views of the memory go first


def _worker(
    conn: Connection,
    memory_name: str,
    num_envs: int,
    obs_shape: tuple[int, ...],
    spec: dict[str, Any],
    rows: list[int],
    seeds: list[int],
    time_limits: list[int | None],
) -> None:
    """A worker's loop: build the environments of ``rows`` (their ``seeds``), answer ``ready``, then serve
    ``reset`` / ``step`` / ``close`` messages until ``close`` or until the main process is gone.

    The 2017 pipeline's observations are computed here, once per message over the worker's frames, with
    :func:`engine.core.preprocessing.preprocess_bytes` (each frame on its own: the bytes do not depend on the batch),
    which costs more than that pipeline's emulator step (about 0.75 ms a frame on one core); that pipeline's workers
    import torch for it (one thread each), the others do not."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the main process's: it closes the workers
    quiet_emulator()
    memory = SharedMemory(name=memory_name)
    buffers = _Buffers(memory, num_envs, obs_shape)
    envs: dict[int, AtariPipeline] = {}
    raw = spec["name"] == "greydanus2017"

    def write(row: int, obs: np.ndarray) -> None:
        if raw:  # the raw frame; its observation is made by observe()
            buffers.frames[row] = obs
        else:
            buffers.observations[row] = obs
            buffers.frames[row] = envs[row]._frame_source.frame

    def observe(rows: list[int]) -> None:
        if raw:
            buffers.observations[rows, 0] = preprocess_bytes(buffers.frames[rows]).numpy()

    try:
        try:
            if raw:
                import torch

                from ..core.preprocessing import preprocess_bytes

                torch.set_num_threads(1)  # a core per worker
            for row, seed, limit in zip(rows, seeds, time_limits):
                envs[row] = build_pipeline(spec, seed, limit)
            first = envs[rows[0]]
            if tuple(first.observation_shape) != tuple(obs_shape):
                raise ValueError(f"observations {first.observation_shape}, expected {obs_shape}")
            conn.send(("ready", os.getpid(), first.action_names))
            while True:
                message = conn.recv()
                if message[0] == "step":
                    rewards, dones = [], []
                    for row, action in zip(message[1], message[2]):
                        pipeline = envs[row]
                        obs, reward, terminated, truncated, _ = pipeline._advance(action)
                        done = terminated or truncated
                        if done:
                            obs, _ = pipeline._restart()
                        write(row, obs)
                        rewards.append(reward)
                        dones.append(done)
                    observe(message[1])
                    conn.send(("ok", rewards, dones))
                elif message[0] == "reset":
                    for row, seed in zip(message[1], message[2]):
                        write(row, envs[row]._restart(seed)[0])
                    observe(message[1])
                    conn.send(("ok", None, None))
                else:  # "close"
                    return
        except (EOFError, BrokenPipeError, ConnectionResetError):
            return  # the main process is gone
        except BaseException as exc:
            try:
                conn.send(("error", f"{type(exc).__name__}: {exc}", traceback.format_exc()))
            except Exception:  # noqa: S110  (the main process notices the exit through the sentinel)
                pass
    finally:
        for pipeline in envs.values():
            try:
                pipeline.close()
            except Exception:  # noqa: S110
                pass
        buffers.release()
        memory.close()
        conn.close()


class RemotePipeline:
    """What a :class:`WorkerPipelines` tells about one of its environments (as :class:`AtariPipeline` does):
    ``spec``, ``action_names``, ``observation_shape``, ``num_actions``, ``observes_raw_frames``."""

    def __init__(self, spec: PipelineSpec, action_names: tuple[str, ...], obs_shape: tuple[int, ...]):
        self.spec, self.action_names, self.observation_shape = spec, action_names, obs_shape
        self.num_actions = len(action_names)
        self.observes_raw_frames = spec.name == "greydanus2017"


def _shutdown(
    processes: list[Any], conns: list[Connection], memory: SharedMemory | None, buffers: _Buffers | None
) -> None:
    """Stop the workers (ask, then terminate, then kill) and free the shared memory. Safe to call twice."""
    for conn in conns:
        try:
            conn.send(("close",))
        except Exception:  # noqa: S110  (a worker already gone)
            pass
    deadline = time.monotonic() + _STOP_WAIT_S
    for process in processes:
        process.join(max(0.0, deadline - time.monotonic()))
    for process in processes:
        if process.is_alive():
            process.terminate()
            process.join(1.0)
        if process.is_alive():
            process.kill()
            process.join(1.0)
    for conn in conns:
        conn.close()
    processes.clear()
    conns.clear()
    if buffers is not None:
        buffers.release()
    if memory is not None:
        memory.close()
        try:
            memory.unlink()
        except FileNotFoundError:
            pass


class WorkerPipelines:
    """Pipelines of one spec split over ``workers`` processes, with :class:`PipelineBatch`'s interface
    (``reset(seeds)``, ``step(indices, actions)``, ``close()``, ``pipelines[i].spec`` / ``.action_names``, ``len``)
    and its games, bit for bit.

    Args:
        spec: the pipeline (as made by :func:`engine.env.pipelines.make_pipeline`; its options resolved).
        seeds: one per environment: environment ``i``'s action space is seeded with ``seeds[i]`` when it is built
            (as :func:`engine.env.rollout._agent_pipeline` does); :meth:`reset` seeds the emulators.
        workers: processes, 1 to ``len(seeds)``; environment ``i`` lives in worker ``i * workers // len(seeds)``
            (contiguous shares, sizes differing by at most one).
        time_limits: gymnasium's ``max_episode_steps`` per environment (None: the id's own), for tests that need
            episodes to end early.
        timeout: seconds a worker may take to answer (a step, a reset; building its environments gets this much
            per environment) before it counts as hung.
    """

    def __init__(
        self,
        spec: PipelineSpec,
        seeds: Sequence[int],
        workers: int,
        time_limits: Sequence[int | None] | None = None,
        timeout: float = 60.0,
    ):
        num_envs = len(seeds)
        if num_envs < 1:
            raise ValueError("a WorkerPipelines needs at least one environment")
        if isinstance(workers, bool) or not isinstance(workers, int) or not 1 <= workers <= num_envs:
            raise ValueError(f"workers must be an integer from 1 to the number of environments, got {workers!r}")
        limits = list(time_limits) if time_limits is not None else [None] * num_envs
        if len(limits) != num_envs:
            raise ValueError(f"{len(limits)} time limits for {num_envs} environments")
        self.spec, self.timeout, self.num_envs = spec, float(timeout), num_envs
        obs_shape = observation_shape(spec)
        self.owner = [i * workers // num_envs for i in range(num_envs)]
        self.shares = [[i for i in range(num_envs) if self.owner[i] == w] for w in range(workers)]
        self._processes: list[Any] = []
        self._conns: list[Connection] = []
        self._memory: SharedMemory | None = None
        self._buffers: _Buffers | None = None
        self._closed = False
        self._memory = SharedMemory(create=True, size=_Buffers.size(num_envs, obs_shape))
        self._buffers = _Buffers(self._memory, num_envs, obs_shape)
        self._finalizer = weakref.finalize(self, _shutdown, self._processes, self._conns, self._memory, self._buffers)
        context: Any = mp.get_context(START_METHOD)
        if START_METHOD == "forkserver":
            context.set_forkserver_preload([__name__])  # the fork server imports this module (no torch) once
        try:
            for w, rows in enumerate(self.shares):
                parent, child = context.Pipe()
                process = context.Process(
                    target=_worker,
                    args=(
                        child,
                        self._memory.name,
                        num_envs,
                        obs_shape,
                        spec.to_dict(),
                        rows,
                        [int(seeds[i]) for i in rows],
                        [limits[i] for i in rows],
                    ),
                    name=f"atari-saliency-envs-{w}",
                    daemon=True,
                )
                process.start()
                child.close()
                self._processes.append(process)
                self._conns.append(parent)
            ready = self._gather(range(workers), "building its environments", self.timeout * (1 + len(self.shares[0])))
        except BaseException:
            self.close()
            raise
        self.pids: list[int] = [int(message[1]) for message in ready]
        action_names = tuple(ready[0][2])
        self.pipelines = [RemotePipeline(spec, action_names, obs_shape) for _ in range(num_envs)]

    def __len__(self) -> int:
        return self.num_envs

    def _describe(self, w: int) -> str:
        rows = self.shares[w]
        pid = self._processes[w].pid if w < len(self._processes) else None
        return f"environment worker {w} (pid {pid}, environments {rows[0]}..{rows[-1]} of {self.spec.env_id})"

    def _gather(self, workers: Sequence[int], doing: str, timeout: float | None = None) -> list[tuple]:
        """The answers of ``workers`` (in that order), or an EnvWorkerError (after closing every worker) if one
        reports an error, dies or does not answer within ``timeout`` seconds."""
        answers: dict[int, tuple] = {}
        waiting = {w: self._conns[w] for w in workers}
        timeout = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        while waiting:
            sentinels = {self._processes[w].sentinel: w for w in waiting}
            owners = {id(conn): w for w, conn in waiting.items()}
            ready = wait(list(waiting.values()) + list(sentinels), max(0.0, deadline - time.monotonic()))
            if not ready:
                w = next(iter(waiting))
                self._fail(f"{self._describe(w)} did not answer within {timeout:g} s while {doing}")
            for obj in ready:
                w = owners[id(obj)] if isinstance(obj, Connection) else sentinels[obj]
                if w not in waiting:  # its pipe and its sentinel were both ready
                    continue
                try:
                    message = waiting[w].recv() if waiting[w].poll() else None
                except (EOFError, OSError):
                    message = None
                if message is None:  # the pipe closed, or the process ended without a word
                    self._died(w, doing)
                assert message is not None
                if message[0] == "error":
                    self._fail(f"{self._describe(w)} failed while {doing}: {message[1]}\n{message[2]}")
                answers[w] = message
                del waiting[w]
        return [answers[w] for w in workers]

    def _died(self, w: int, doing: str) -> None:
        self._processes[w].join(1.0)
        self._fail(f"{self._describe(w)} died (exit code {self._processes[w].exitcode}) while {doing}")

    def _fail(self, message: str) -> None:
        self.close()
        raise EnvWorkerError(message)

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("the environment workers are closed")

    def _observe(self, indices: Sequence[int]) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Copies of the observations and frames of ``indices`` out of the shared memory."""
        assert self._buffers is not None
        rows = np.asarray(indices, dtype=np.intp)
        # fancy indexing: copies (the workers overwrite the rows at the next step)
        return list(self._buffers.observations[rows]), list(self._buffers.frames[rows])

    def _send(self, kind: str, indices: Sequence[int], values: Sequence) -> tuple[list[int], list[list[int]]]:
        """Send ``kind`` with each worker's rows and values; the workers written to and each one's positions."""
        rows: dict[int, list[int]] = {}
        for k, i in enumerate(indices):
            rows.setdefault(self.owner[i], []).append(k)
        busy = sorted(rows)
        for w in busy:
            try:
                self._conns[w].send((kind, [indices[k] for k in rows[w]], [values[k] for k in rows[w]]))
            except (BrokenPipeError, ConnectionResetError, OSError):
                self._died(w, "stepping" if kind == "step" else "resetting")
        return busy, [rows[w] for w in busy]

    def reset(self, seeds: Sequence[int | None]) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Reset every environment (``seeds[i]`` for environment i): the observations and frames."""
        self._check_open()
        if len(seeds) != self.num_envs:
            raise ValueError(f"{len(seeds)} seeds for {self.num_envs} environments")
        indices = list(range(self.num_envs))
        try:
            busy, _ = self._send("reset", indices, list(seeds))
            self._gather(busy, "resetting")
        except BaseException:  # e.g. Ctrl-C: the workers are mid-reset, out of step with this process
            self.close()
            raise
        return self._observe(indices)

    def step(self, indices: Sequence[int], actions: Sequence[int]) -> BatchStep:
        """Step environment ``indices[k]`` with ``actions[k]``, resetting (unseeded) those whose episode ended."""
        self._check_open()
        indices = [int(i) for i in indices]
        try:
            busy, positions = self._send("step", indices, [int(a) for a in actions])
            answers = self._gather(busy, "stepping")
        except BaseException:  # e.g. Ctrl-C: the workers are mid-step, out of step with this process
            self.close()
            raise
        rewards: list[float] = [0.0] * len(indices)
        dones: list[bool] = [False] * len(indices)
        for answer, where in zip(answers, positions):
            for k, reward, done in zip(where, answer[1], answer[2]):
                rewards[k], dones[k] = reward, done
        observations, frames = self._observe(indices)
        return BatchStep(observations, frames, rewards, dones)

    def close(self) -> None:
        """Stop the workers and free the shared memory (again: nothing)."""
        self._closed = True
        self._finalizer()
