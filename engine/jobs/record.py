"""Recording games into rollout stores, chunk by chunk, resumable after an interruption: one game
(:func:`record_rollout`, :func:`open_recording`, :class:`Recording`) or many played together, one store each
(:func:`record_games`, :func:`open_games_recording`, :class:`GamesRecording`; ``rollout.num_envs``)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

import numpy as np
import torch
from tqdm.auto import tqdm

from ..core.policy import Policy, state_to
from ..env.pipelines import PipelineSpec
from ..env.rollout import Player, Step, VectorPlayer, check_num_envs, rollout_from_steps
from ..storage.keys import RecordingLocks, is_memory, place, store_exists
from ..storage.layout import FORMAT, ROLLOUT_FIELDS, check_chunk_count, rollout_layout
from ..storage.store import (
    RolloutStore,
    check_writable,
    engine_version,
    writing_needed,
)

log = logging.getLogger(__name__)


def _is_count(value: object) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool) and bool(value >= 1)


def record_rollout(
    agent: Policy,
    env_id: str,
    num_steps: int,
    root,
    seed: int = 0,
    greedy: bool = False,
    chunk_steps: int = 256,
    checkpoint_sha256: str = "",
    extra: dict | None = None,
    progress: bool = False,
    storage_options: dict | None = None,
    max_episodes: int | None = None,
    **pipeline_options,
) -> RolloutStore:
    """Play and record ``num_steps`` steps into a store, chunk by chunk; resumes an interrupted recording.

    ``root`` is a directory, an fsspec URL (``s3://bucket/game``; ``storage_options`` for fsspec) or a
    :class:`zarr.storage.MemoryStore`. The agent plays in its own environment pipeline (``pipeline_options`` as for
    :func:`engine.env.rollout.rollout`); the pipeline's settings, the action names and the shapes of the agent's
    state are recorded in the manifest. ``max_episodes`` stops the recording once that many episodes ended, as
    :func:`engine.env.rollout.rollout` does, and the store ends with that step: a memory store only, the one kind
    whose length may change after it is created.

    Resuming replays the recorded actions in a fresh environment (seeded as before; checked against the
    recorded frames of the last chunk), restores the action sampler's saved state and recomputes the
    recurrent state from the last recorded step, so the finished store equals an uninterrupted recording.

    A store holds at most :data:`engine.storage.layout.MAX_CHUNKS` chunks of at most
    :data:`engine.storage.layout.MAX_CHUNK_BYTES` each (a memory store: what fits the memory available); more steps,
    or larger chunks, are refused before anything is played. An existing store that is damaged, edited or not a
    rollout store is refused before anything is played too.

    :func:`open_recording` and :meth:`Recording.run` are the two halves of this function (the overlapped job,
    :mod:`engine.jobs.overlap`, scores the store while :meth:`Recording.run` fills it).
    """
    return open_recording(
        agent,
        env_id,
        num_steps,
        root,
        seed=seed,
        greedy=greedy,
        chunk_steps=chunk_steps,
        checkpoint_sha256=checkpoint_sha256,
        extra=extra,
        progress=progress,
        storage_options=storage_options,
        max_episodes=max_episodes,
        **pipeline_options,
    ).run()


def rollout_identity(
    agent: Policy,
    env_id: str,
    seed: int,
    greedy: bool,
    num_steps: int,
    chunk_steps: int,
    checkpoint_sha256: str,
    spec: PipelineSpec | None = None,
    action_names: Sequence[str] | None = None,
) -> dict:
    """The identity a rollout store's manifest records for a game (a store of other settings is refused on
    resume). ``spec`` and ``action_names`` come from the game's environment; without them, the part a job can check
    before any environment is made (``engine.jobs.prepare.check_game_stores``)."""
    identity = dict(
        kind="rollout",
        format=FORMAT,
        engine=engine_version(),
        env_id=env_id,
        seed=seed,
        greedy=greedy,
        num_steps=num_steps,
        chunk_steps=chunk_steps,
        checkpoint_sha256=checkpoint_sha256,
        num_actions=agent.num_actions,
        state_shapes=[list(s.shape[1:]) for s in agent.initial_state(1)],
        dtype=str(agent.dtype),
    )
    if spec is not None:
        identity["pipeline"] = spec.to_dict()
    if action_names is not None:
        identity["action_names"] = list(action_names)
    return identity


def open_recording(
    agent: Policy,
    env_id: str,
    num_steps: int,
    root,
    seed: int = 0,
    greedy: bool = False,
    chunk_steps: int = 256,
    checkpoint_sha256: str = "",
    extra: dict | None = None,
    progress: bool = False,
    storage_options: dict | None = None,
    max_episodes: int | None = None,
    **pipeline_options,
) -> Recording:
    """The first half of :func:`record_rollout` (same arguments): the settings and the store checked, the store
    opened or created (its manifest written), the environment made; nothing played yet. :meth:`Recording.run`
    plays and records the missing chunks; :meth:`Recording.close` closes the environment of a recording that will
    not run."""
    if not (_is_count(num_steps) and _is_count(chunk_steps)):
        raise ValueError(f"num_steps and chunk_steps must be integers >= 1, got {num_steps!r} and {chunk_steps!r}")
    num_steps, chunk_steps = int(num_steps), int(chunk_steps)
    if max_episodes is not None and (max_episodes < 1 or not is_memory(root)):
        raise ValueError(
            f"max_episodes must be >= 1 and needs a memory store (its length is fixed otherwise), "
            f"got {max_episodes!r} for {root}"
        )
    check_chunk_count("rollout", num_steps, chunk_steps, f"recording into {root}")
    if store_exists(root, storage_options):
        RolloutStore.open(root, storage_options)  # refuses a damaged, edited or foreign store before playing
    if writing_needed(root, "rollout", storage_options):
        check_writable(root, storage_options)
    locks = RecordingLocks([root])
    locks.acquire(_waiting)
    try:
        player = Player(agent, env_id, seed, greedy, **pipeline_options)
    except BaseException:
        locks.release()
        raise
    try:
        identity = rollout_identity(
            agent, env_id, seed, greedy, num_steps, chunk_steps, checkpoint_sha256, player.spec, player.action_names
        )
        layout = rollout_layout(agent, np.shape(player.frame), np.shape(player.observation))
        rstore = RolloutStore.open_or_create(
            root, identity, layout, num_steps, chunk_steps, extra, storage_options, shortened=max_episodes is not None
        )
        first = rstore.completed_chunks()
    except BaseException:
        player.close()
        locks.release()
        raise
    return Recording(player, rstore, first, progress, max_episodes, locks)


def _waiting(store) -> None:
    log.info("the rollout store %s is being recorded by another process: waiting for it to finish", store)


PlayerT = TypeVar("PlayerT", Player, VectorPlayer)


def steps_recorded(rstore: RolloutStore, first: int) -> int:
    """The steps of ``rstore`` an earlier run recorded, where a recording goes on at chunk ``first`` (all of them
    where ``first`` is past its last chunk)."""
    return rstore.bounds[first][0] if first < len(rstore.bounds) else rstore.num_steps


class _PlayerRecording(Generic[PlayerT]):
    """What both recordings share: the player whose environments they own, closed once (by ``run`` when it ends, or
    by ``close``)."""

    player: PlayerT
    locks: RecordingLocks
    _closed = False

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            try:
                self.player.close()
            finally:
                self.locks.release()


class Recording(_PlayerRecording[Player]):
    """A recording opened by :func:`open_recording`: its store (``rstore``), the first chunk still to record
    (``first``; ``len(rstore.bounds)`` when the store is complete) and the environment that will play them."""

    def __init__(
        self,
        player: Player,
        rstore: RolloutStore,
        first: int,
        progress: bool,
        max_episodes: int | None,
        locks: RecordingLocks | None = None,
    ) -> None:
        self.player, self.rstore, self.first = player, rstore, first
        self.progress, self.max_episodes = progress, max_episodes
        self.locks = locks or RecordingLocks([])

    def run(
        self,
        before_chunk: Callable[[int], None] | None = None,
        after_chunk: Callable[[int], None] | None = None,
        each_step: Callable[[], None] | None = None,
    ) -> RolloutStore:
        """Play and record chunks ``first..`` in order (resuming the game first where ``first > 0``), then close
        the environment. ``before_chunk(k)`` is called before chunk k is played, ``after_chunk(k)`` once it is
        written (marker included), ``each_step()`` before every step; an exception from any of them stops the
        recording there (the chunks written are kept, as after a kill)."""
        rstore, player, max_episodes = self.rstore, self.player, self.max_episodes
        try:
            if self._closed:
                raise RuntimeError("this recording's environment is closed")
            if self.first == len(rstore.bounds):
                return rstore
            if self.first > 0:
                log.info(
                    "resuming the recording in %s at chunk %d of %d (step %d): its recorded actions are replayed first",
                    place(rstore.store.root),
                    self.first,
                    len(rstore.bounds),
                    rstore.bounds[self.first][0],
                )
                _resume_player(player, rstore, self.first)
            bar = tqdm(
                total=rstore.num_steps,
                initial=rstore.bounds[self.first][0],
                desc=f"record {player.env_id}",
                unit="step",
                disable=None if self.progress else True,
            )
            episodes = _episodes_before(rstore, self.first)  # a resumed recording counts those it holds
            for k in range(self.first, len(rstore.bounds)):
                if before_chunk is not None:
                    before_chunk(k)
                a, b = rstore.bounds[k]
                steps: list[Step] = []
                while len(steps) < b - a and (max_episodes is None or episodes < max_episodes):
                    if each_step is not None:
                        each_step()
                    steps.append(player.step())
                    episodes += steps[-1].done
                ended = max_episodes is not None and episodes >= max_episodes
                if ended and a + len(steps) < rstore.num_steps:  # the store ends with the last episode
                    rstore.store.truncate(a + len(steps))
                r = rollout_from_steps(steps)
                arrays = {name: getattr(r, name) for name in ROLLOUT_FIELDS}
                arrays.update({f"state_{i}": s for i, s in enumerate(r.states)})
                arrays["sampler_state"] = player.sampler.get_state()
                rstore.store.write(k, arrays)
                bar.update(len(steps))
                if after_chunk is not None:
                    after_chunk(k)
                if ended:
                    break
            bar.close()
        finally:
            self.close()
        return rstore


def _resume_player(player: Player, rstore: RolloutStore, done_chunks: int) -> None:
    played = rstore.store.read_range(0, rstore.bounds[done_chunks][0], ("actions", "dones"))
    last = rstore.store.read(done_chunks - 1)
    player.replay(played["actions"], played["dones"], frames=last["frames"], observations=last["observations"])
    player.sampler.set_state(torch.from_numpy(np.ascontiguousarray(last["sampler_state"])))
    # the state the agent passed on after the last recorded step: its output there, reset where the step ended an
    # episode (agent.reset_state, as in play: a reset need not give the initial state)
    agent = player.agent
    state = tuple(torch.from_numpy(last[f"state_{i}"][-1:]) for i in range(len(rstore.identity["state_shapes"])))
    device, dtype = torch.device(agent.device), agent.dtype
    with torch.inference_mode():
        obs = torch.from_numpy(last["observations"][-1:]).to(device=device, dtype=dtype) / 255
        out = agent(obs, state_to(state, device, dtype))
        ended = bool(last["dones"][-1])
        player.state = (
            agent.reset_state(out.state, torch.ones(1, dtype=torch.bool, device=device)) if ended else out.state
        )


def _episodes_before(rstore: RolloutStore, first: int) -> int:
    """How many episodes the recording in ``rstore`` ended before its chunk ``first`` (a resumed recording goes on
    counting towards ``max_episodes`` from there)."""
    if first == 0:
        return 0
    return int(rstore.store.read_range(0, rstore.bounds[first - 1][1], ("dones",))["dones"].sum())


def record_games(*args, **kwargs) -> list[RolloutStore]:
    """Play ``len(roots)`` games together and record game ``i`` (seed ``seed + i``) into the rollout store at
    ``roots[i]``, chunk by chunk; resumes an interrupted recording (the arguments of
    :func:`open_games_recording`, whose :meth:`GamesRecording.run` does the playing)."""
    return open_games_recording(*args, **kwargs).run()


def open_games_recording(
    agent: Policy,
    env_id: str,
    num_steps: int,
    roots: list,
    seed: int = 0,
    greedy: bool = False,
    chunk_steps: int = 256,
    checkpoint_sha256: str = "",
    extras: list[dict] | None = None,
    progress: bool = False,
    storage_options: dict | None = None,
    max_episodes: int | None = None,
    workers: int = 0,
    **pipeline_options,
) -> GamesRecording:
    """``len(roots)`` games opened for recording together, game ``i`` (seed ``seed + i``) into the rollout store at
    ``roots[i]``: the settings and stores checked, the stores opened or created, the environments made; nothing
    played yet (:meth:`GamesRecording.run` plays and records the missing chunks, resuming an interrupted
    recording).

    Each store is the one :func:`engine.jobs.record.record_rollout` records with seed ``seed + i`` (its identity,
    layout, chunks and sampler states; ``extras[i]`` is its manifest's ``extra``), bit for bit where the agent's rows
    do not depend on the batch (the engine's agents on the CPU). ``num_steps`` and ``max_episodes`` are per game;
    ``max_episodes`` needs memory stores, as for one game. ``workers`` processes step the emulators
    (:class:`engine.env.workers.WorkerPipelines`; 0: this process): the games do not depend on it. Chunk k of every game is written once the games still
    playing have played its steps. Resuming starts at the fewest complete leading chunks of any game: each game's
    recorded actions are replayed, its sampler and recurrent state restored, and chunks already complete are not
    written again.
    """
    num_envs = check_num_envs(len(roots))
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(f"num_steps must be an integer >= 1, got {num_steps!r}")
    if isinstance(chunk_steps, bool) or not isinstance(chunk_steps, int) or chunk_steps < 1:
        raise ValueError(f"chunk_steps must be an integer >= 1, got {chunk_steps!r}")
    if max_episodes is not None and (max_episodes < 1 or not all(is_memory(r) for r in roots)):
        raise ValueError(
            f"max_episodes must be >= 1 and needs memory stores (their length is fixed otherwise), got {max_episodes!r}"
        )
    extras = extras or [{} for _ in roots]
    check_chunk_count("rollout", num_steps, chunk_steps, f"recording into {roots[0]}")
    for root in roots:
        if store_exists(root, storage_options):
            RolloutStore.open(root, storage_options)  # refuses a damaged, edited or foreign store before playing
        if writing_needed(root, "rollout", storage_options):
            check_writable(root, storage_options)
    locks = RecordingLocks(list(roots))
    locks.acquire(_waiting)
    try:
        player = VectorPlayer(agent, env_id, num_envs, seed, greedy, workers=workers, **pipeline_options)
    except BaseException:
        locks.release()
        raise
    try:
        layout = rollout_layout(agent, np.shape(player.frames[0]), np.shape(player.observations[0]))
        rstores = []
        for i, root in enumerate(roots):
            identity = rollout_identity(
                agent,
                env_id,
                seed + i,
                greedy,
                num_steps,
                chunk_steps,
                checkpoint_sha256,
                player.spec,
                player.action_names,
            )
            rstores.append(
                RolloutStore.open_or_create(
                    root, identity, layout, num_steps, chunk_steps, extras[i], storage_options, max_episodes is not None
                )
            )
    except BaseException:
        player.close()
        locks.release()
        raise
    return GamesRecording(player, rstores, max_episodes, progress, locks)


class GamesRecording(_PlayerRecording[VectorPlayer]):
    """N games opened for recording by :func:`open_games_recording`: their stores (``rstores``), the first chunk
    still to record in some game (``first``: the fewest complete leading chunks of any game; the number of chunks
    when every store is complete) and the player of all of them."""

    def __init__(
        self,
        player: VectorPlayer,
        rstores: list[RolloutStore],
        max_episodes: int | None,
        progress: bool,
        locks: RecordingLocks | None = None,
    ) -> None:
        self.player, self.rstores, self.max_episodes, self.progress = player, rstores, max_episodes, progress
        self.locks = locks or RecordingLocks([])
        # every game's, but a game that ended early (max_episodes) shortened its own: the longest store's
        self.bounds = max((list(r.bounds) for r in rstores), key=len)
        self.finished = [r.complete for r in rstores]  # recorded to their end (resumed: not played again)
        self.first = min(
            (r.completed_chunks() for r, f in zip(rstores, self.finished) if not f), default=len(self.bounds)
        )

    def run(
        self,
        before_chunk: Callable[[int], None] | None = None,
        after_chunk: Callable[[int], None] | None = None,
        each_step: Callable[[], None] | None = None,
    ) -> list[RolloutStore]:
        """Play and record chunks ``first..`` of every game (each game resumed first where ``first > 0``), then
        close the environments. ``before_chunk(k)`` is called before chunk k is played, ``after_chunk(k)`` once it
        is written in every game still playing (a game that ended wrote its last chunk, its store truncated, by
        then), ``each_step()`` before every step; an exception from any of them stops the recording there (the
        chunks written are kept, as after a kill)."""
        try:
            if self._closed:
                raise RuntimeError("these games' environments are closed")
            if self.first < len(self.bounds):
                if self.first > 0:
                    log.info(
                        "resuming the recording of %d games at chunk %d of %d (step %d): their recorded actions are "
                        "replayed first",
                        len(self.rstores),
                        self.first,
                        len(self.bounds),
                        self.bounds[self.first][0],
                    )
                episodes = []
                for i, rstore in enumerate(self.rstores):
                    if self.finished[i]:
                        self.player.stop(i)
                    elif self.first > 0:
                        _resume_game(self.player, i, rstore, self.first)
                    episodes.append(0 if self.finished[i] else _episodes_before(rstore, self.first))
                hooks = (before_chunk, after_chunk, each_step)
                _play_chunks(
                    self.player,
                    self.rstores,
                    self.bounds,
                    self.first,
                    episodes,
                    self.max_episodes,
                    self.progress,
                    *hooks,
                )
        finally:
            self.close()
        return self.rstores


def _resume_game(player: VectorPlayer, index: int, rstore: RolloutStore, done_chunks: int) -> None:
    """Game ``index`` brought to the end of its chunk ``done_chunks - 1`` (as :func:`_resume_player` does for one
    game)."""
    played = rstore.store.read_range(0, rstore.bounds[done_chunks][0], ("actions", "dones"))
    last = rstore.store.read(done_chunks - 1)
    state = tuple(torch.from_numpy(last[f"state_{i}"][-1:]) for i in range(len(rstore.identity["state_shapes"])))
    player.replay(
        index,
        played["actions"],
        played["dones"],
        frames=last["frames"],
        observations=last["observations"],
        sampler_state=torch.from_numpy(np.ascontiguousarray(last["sampler_state"])),
        last_state=state,
    )


def _play_chunks(
    player: VectorPlayer,
    rstores: list[RolloutStore],
    bounds: list[tuple[int, int]],
    first: int,
    episodes: list[int],
    max_episodes: int | None,
    progress: bool,
    before_chunk: Callable[[int], None] | None = None,
    after_chunk: Callable[[int], None] | None = None,
    each_step: Callable[[], None] | None = None,
) -> None:
    total = bounds[-1][1] * len(rstores)
    bar = tqdm(
        total=total,
        initial=bounds[first][0] * len(rstores),
        desc=f"record {player.env_id} x{len(rstores)}",
        unit="step",
        disable=None if progress else True,
    )
    try:
        for k in range(first, len(bounds)):
            if before_chunk is not None:
                before_chunk(k)
            a, b = bounds[k]
            steps: dict[int, list[Step]] = {i: [] for i in player.active}
            for _ in range(b - a):
                if not player.active:
                    break
                if each_step is not None:
                    each_step()
                for i, step in player.step().items():
                    steps[i].append(step)
                    if step.done:
                        episodes[i] += 1
                        if max_episodes is not None and episodes[i] >= max_episodes:
                            player.stop(i)
            for i, played in steps.items():
                rstore = rstores[i]
                if i not in player.active and a + len(played) < rstore.num_steps:  # ends with its last episode
                    rstore.store.truncate(a + len(played))
                if not rstore.store.has(k):  # a chunk complete before an interruption is this very chunk
                    r = rollout_from_steps(played)
                    arrays = {name: getattr(r, name) for name in ROLLOUT_FIELDS}
                    arrays.update({f"state_{j}": s for j, s in enumerate(r.states)})
                    arrays["sampler_state"] = player.samplers[i].get_state()
                    rstore.store.write(k, arrays)
                bar.update(len(played))
            if after_chunk is not None:
                after_chunk(k)
            if not player.active:
                break
    finally:
        bar.close()
