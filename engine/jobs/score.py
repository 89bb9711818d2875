"""Scoring a recorded game: saliency of every frame of a rollout store, streamed chunk by chunk into a saliency
store, resumable and shardable."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import asdict
from typing import cast

import torch
from tqdm.auto import tqdm

from ..core.errors import EngineError
from ..core.policy import Policy, State, index_state
from ..core.replay import replay_states
from ..core.saliency import compute_saliency, paper_shift
from ..env.rollout import Rollout
from ..storage.layout import FORMAT, check_scoring_chunk, saliency_layout
from ..storage.store import (
    ChunkStore,
    RolloutStore,
    SaliencyStore,
    check_writable,
    engine_version,
    identity_settings,
    writing_needed,
)


def score_store(
    agent: Policy,
    rollout_root,
    root,
    saliency,
    checkpoint_sha256: str = "",
    frames_per_chunk: int = 64,
    shard: int = 0,
    num_shards: int = 1,
    progress: bool = False,
    storage_options: dict | None = None,
) -> SaliencyStore:
    """Saliency of every frame of a rollout store, streamed chunk by chunk into a saliency store.

    Args:
        rollout_root, root: directories or fsspec URLs (``storage_options`` for fsspec, used for both).
        saliency: a :class:`engine.core.saliency.SaliencyConfig`.
        checkpoint_sha256: identifies ``agent``; if it is the agent that recorded the rollout, the recorded
            states are used, otherwise the agent replays the recorded frames to get its own states (the
            paper's "how does attention change during learning": every checkpoint sees the same game).
        shard, num_shards: this job scores chunks ``k`` with ``k % num_shards == shard``; shards write
            disjoint chunks of the same store, and their union equals a single run.

    Chunks already in the store are skipped, so a killed job started again continues where it stopped. A chunk
    of frames with their recorded steps and maps must fit :data:`engine.storage.layout.MAX_CHUNK_BYTES`: a larger
    ``frames_per_chunk`` is refused before anything is scored. :func:`open_scoring` and :meth:`Scoring.run` are
    its two halves.
    """
    return open_scoring(
        agent,
        rollout_root,
        root,
        saliency,
        checkpoint_sha256,
        frames_per_chunk,
        shard,
        num_shards,
        progress,
        storage_options,
    ).run()


def saliency_identity(
    agent: Policy,
    saliency,
    checkpoint_sha256: str,
    frames_per_chunk: int,
    rollout: dict | None = None,
    recording: str | None = None,
) -> dict:
    """The identity a saliency store's manifest records (a store of other settings is refused on resume): the
    scoring agent, the settings that change maps (``engine.storage.store.identity_settings``), the chunking, the
    scored game's own identity (``rollout``; without it, the part checked before the game is known) and the id of
    its recording (``recording``, :attr:`engine.storage.store.RolloutStore.recording`; stores made before there
    were ids have none, and their saliency stores record none)."""
    identity = dict(
        kind="saliency",
        format=FORMAT,
        engine=engine_version(),
        checkpoint_sha256=checkpoint_sha256,
        dtype=str(agent.dtype),
        saliency=identity_settings(asdict(saliency)),
        frames_per_chunk=frames_per_chunk,
    )
    if rollout is not None:
        identity["rollout"] = rollout
    if recording is not None:
        identity["rollout_recording"] = recording
    return identity


def open_scoring(
    agent: Policy,
    rollout_root,
    root,
    saliency,
    checkpoint_sha256: str = "",
    frames_per_chunk: int = 64,
    shard: int = 0,
    num_shards: int = 1,
    progress: bool = False,
    storage_options: dict | None = None,
    recording: bool = False,
    rstore: RolloutStore | None = None,
) -> Scoring:
    """The first half of :func:`score_store` (same arguments): the settings and stores checked, the saliency store
    opened or created; nothing scored yet (:meth:`Scoring.run`). The rollout store must be complete, unless
    ``recording``: then it is being recorded while it is scored (:mod:`engine.jobs.overlap`), and
    :meth:`Scoring.run` must be given a ``wait`` that returns once the steps it names are written. ``rstore``: the
    rollout store at ``rollout_root`` as its recorder holds it (so a recording that ends early, and truncates it,
    is seen here); opened from ``rollout_root`` otherwise."""
    if not (isinstance(num_shards, int) and num_shards >= 1 and isinstance(shard, int) and 0 <= shard < num_shards):
        raise ValueError(f"need 0 <= shard < num_shards, got shard={shard} num_shards={num_shards}")
    if isinstance(frames_per_chunk, bool) or not isinstance(frames_per_chunk, int) or frames_per_chunk < 1:
        raise ValueError(f"frames_per_chunk must be an integer >= 1, got {frames_per_chunk!r}")
    if writing_needed(root, "saliency", storage_options):
        check_writable(root, storage_options)
    if rstore is None:
        rstore = RolloutStore.open(rollout_root, storage_options)
    if not (recording or rstore.complete):
        raise EngineError(f"the rollout store {rollout_root} is incomplete: finish (resume) its recording first")
    layout = saliency_layout(agent, saliency)
    check_scoring_chunk(rstore.store.layout, layout, frames_per_chunk)
    identity = saliency_identity(
        agent, saliency, checkpoint_sha256, frames_per_chunk, rstore.identity, rstore.recording
    )
    out = SaliencyStore(
        ChunkStore.open_or_create(
            root,
            identity,
            layout,
            rstore.num_steps,
            frames_per_chunk,
            storage_options=storage_options,
        )
    )
    done = out.store.completed()
    todo = [k for k in range(len(out.bounds)) if k % num_shards == shard and not done[k]]
    recorded = uses_recorded_states(agent, rstore, checkpoint_sha256)
    return Scoring(agent, rstore, out, saliency, todo, recorded, progress)


class Scoring:
    """A scoring opened by :func:`open_scoring`: the rollout store read (``rstore``), the saliency store written
    (``out``) and the chunks of it still to score (``todo``), on the recorded states or replayed ones
    (``recorded``, :func:`uses_recorded_states`)."""

    def __init__(
        self,
        agent: Policy,
        rstore: RolloutStore,
        out: SaliencyStore,
        saliency,
        todo: list[int],
        recorded: bool,
        progress: bool,
    ) -> None:
        self.agent, self.rstore, self.out, self.saliency = agent, rstore, out, saliency
        self.todo, self.recorded, self.progress = todo, recorded, progress

    def run(self, wait: Callable[[int], None] | None = None) -> SaliencyStore:
        """Score the chunks of ``todo`` in order; ``wait(stop)`` (see :func:`scored_states`) is called before the
        rollout's steps up to ``stop`` are read."""
        agent, saliency, out = self.agent, self.saliency, self.out
        bounds = out.bounds
        bar = tqdm(
            total=sum(b - a for a, b in (bounds[k] for k in self.todo)),
            desc="saliency",
            unit="frame",
            disable=None if self.progress else True,
        )
        for k, part, states in scored_states(
            agent, self.rstore, bounds, saliency.state_alignment, self.recorded, self.todo, wait
        ):
            a, b = bounds[k]  # each frame's index in the rollout seeds its RISE masks and LIME samples: chunk-invariant
            maps = compute_saliency(
                agent, part.observations, states, saliency, actions=part.actions, frame_indices=range(a, b)
            )
            out.store.write(k, {key: value.numpy() for key, value in maps.items()})
            bar.update(len(part))
        bar.close()
        return out

    def score_chunk(self, k: int) -> int:
        """Score chunk ``k`` of the saliency store as it is now (its bounds follow a truncated store), on the
        recorded states (``recorded`` must hold: nothing is replayed), once the rollout steps it reads are written
        (the caller waits for them); returns the frames scored. :mod:`engine.jobs.games` interleaves the games'
        chunks with it; :meth:`run` gives the same arrays."""
        if not self.recorded:
            raise ValueError("score_chunk scores on the recorded states; replayed states are carried by run()")
        a, b = self.out.bounds[k]
        part, states = recorded_chunk(self.rstore, a, b, self.saliency.state_alignment)
        observations = cast(torch.Tensor, part.observations)  # a Rollout fills them in when it is made
        maps = compute_saliency(
            self.agent, observations, states, self.saliency, actions=part.actions, frame_indices=range(a, b)
        )
        self.out.store.write(k, {key: value.numpy() for key, value in maps.items()})
        return b - a


def recorded_chunk(rstore: RolloutStore, a: int, b: int, state_alignment: str) -> tuple[Rollout, State]:
    """The recorded steps ``a..b`` and the recorded states scoring uses on them (shifted one frame back for
    ``state_alignment="paper"``, the step before read for it)."""
    part = rstore.read(max(a - 1, 0), b)
    previous = None if a == 0 else index_state(part.states, slice(0, 1))
    part = part if a == 0 else part[1:]
    states = part.states
    if state_alignment == "paper":
        states = paper_shift(states, previous)
    return part, states


def uses_recorded_states(agent: Policy, rstore: RolloutStore, checkpoint_sha256: str) -> bool:
    """Whether ``agent`` (``checkpoint_sha256``) recorded the game, in the same dtype: then its recorded states are
    the ones it used, and nothing is replayed."""
    identity = rstore.identity
    same = checkpoint_sha256 == identity.get("checkpoint_sha256") and str(agent.dtype) == identity.get("dtype")
    return bool(checkpoint_sha256) and same


def scored_states(
    agent: Policy,
    rstore: RolloutStore,
    bounds,
    state_alignment: str,
    recorded: bool,
    chunks,
    wait: Callable[[int], None] | None = None,
) -> Iterator:
    """``(k, steps, states)`` for each chunk ``k`` in ``chunks`` (of ``bounds``, frames ``a..b``): the recorded
    steps ``a..b`` (a :class:`engine.env.rollout.Rollout`) and the states that scoring uses on them: the recorded
    ones if ``recorded`` (:func:`uses_recorded_states`), else the agent's own, replayed from the first frame and
    carried across chunks; shifted one frame back for ``state_alignment="paper"`` (the chunk before included).
    Saliency, its metrics and the comparison figure all take their states from here. ``wait(b)``, where given, is
    called before steps up to ``b`` (exclusive) are read: they are read only once it returns (a rollout store
    being recorded while it is scored, :mod:`engine.jobs.overlap`); chunks are read in order, so ``b`` grows."""
    wanted = set(chunks)
    last = max(wanted, default=-1)
    carry = agent.initial_state(1)
    last_used: tuple = ()  # the states of the chunk before (replayed)
    for k, (a, b) in enumerate(bounds):
        if k > last:
            break
        if recorded:
            if k not in wanted:
                continue
            if wait is not None:
                wait(b)
            yield (k, *recorded_chunk(rstore, a, b, state_alignment))
            continue
        if wait is not None:
            wait(b)
        part = rstore.read(a, b)
        observations = cast(torch.Tensor, part.observations)  # a Rollout fills them in when it is made
        states, next_carry = replay_states(agent, observations, part.dones, carry, with_next=True)
        previous = None if a == 0 else tuple(s.cpu() for s in last_used)
        last_used = tuple(s[-1:] for s in states)
        carry = next_carry
        if k not in wanted:
            continue
        if state_alignment == "paper":
            states = paper_shift(states, previous)
        yield k, part, states
