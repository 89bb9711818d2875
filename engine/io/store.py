"""On-disk stores for long rollouts and their saliency: chunked ``.npz`` files plus a manifest.

A store is a directory with ``manifest.json`` and ``chunks/NNNNNN.npz``. Every chunk is written to a temporary
file and renamed when complete, so a chunk file that exists is a finished chunk: a job killed at any point
leaves at most a ``.partial`` file, which is removed when the store is opened again, and the job resumes at
the first missing chunk. The manifest's ``identity`` (environment, seed, checkpoint sha256, settings, chunk
sizes, engine version) must match exactly to add chunks to an existing store: a store written with other
settings or another checkpoint is refused, never mixed.

Memory: recording holds one chunk of steps; scoring holds one chunk of frames, its maps and one batch of
perturbations, whatever the rollout length.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..core.batching import chunk_bounds, pad_rows
from ..core.errors import EngineError
from ..core.policy import Policy, State, state_to
from ..core.saliency import SaliencyConfig, compute_saliency, paper_shift
from ..env.rollout import Player, Rollout, rollout_from_steps
from .arrays import atomic_path, load_arrays, save_arrays

FORMAT = 2  # 2: observations, the pipeline and the agent's state shapes recorded (any policy)
ROLLOUT_FIELDS = ("frames", "observations", "logits", "values", "actions", "rewards", "dones")


class StoreMismatchError(EngineError):
    """An existing store was written with other settings, another checkpoint or another engine version."""


def engine_version() -> str:
    try:
        return version("atari-saliency-engine")
    except PackageNotFoundError:
        return "unknown"


class ChunkStore:
    """A directory of atomically written chunks and a manifest (see the module docstring)."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        manifest = self.root / "manifest.json"
        if not manifest.is_file():
            raise EngineError(f"{self.root} is not a store (no manifest.json): write one first")
        self.manifest = json.loads(manifest.read_text())

    @classmethod
    def open_or_create(cls, root, identity: dict, extra: dict | None = None) -> "ChunkStore":
        root = Path(root)
        identity = json.loads(json.dumps(identity, default=str))  # as it reads back from JSON
        manifest = root / "manifest.json"
        if manifest.is_file():
            existing = json.loads(manifest.read_text())["identity"]
            if existing != identity:
                keys = sorted(k for k in set(existing) | set(identity) if existing.get(k) != identity.get(k))
                detail = "; ".join(f"{k}: store has {existing.get(k)!r}, this job {identity.get(k)!r}" for k in keys)
                raise StoreMismatchError(
                    f"the store {root} was written with other settings ({detail}): refusing to mix them; "
                    "use another directory, or delete this one to start over"
                )
        else:
            (root / "chunks").mkdir(parents=True, exist_ok=True)
            tmp = atomic_path(manifest, ".json")
            tmp.write_text(json.dumps({"identity": identity, **(extra or {})}, indent=2, default=str))
            os.replace(tmp, manifest)
        for leftover in (root / "chunks").glob(".*.partial"):  # from a killed writer: never a finished chunk
            leftover.unlink(missing_ok=True)
        return cls(root)

    @classmethod
    def open_kind(cls, root, kind: str) -> "ChunkStore":
        """Open an existing store and check that it holds ``kind`` ("rollout" or "saliency")."""
        store = cls(root)
        if store.identity.get("kind") != kind:
            raise EngineError(f"{root} is a {store.identity.get('kind')} store, not a {kind} store")
        return store

    @property
    def identity(self) -> dict:
        return self.manifest["identity"]

    def chunk_path(self, index: int) -> Path:
        return self.root / "chunks" / f"{index:06d}.npz"

    def has(self, index: int) -> bool:
        return self.chunk_path(index).is_file()

    def write(self, index: int, arrays: dict) -> None:
        save_arrays(self.chunk_path(index), arrays, {"chunk": index})

    def read(self, index: int, keys: tuple[str, ...] | None = None) -> dict[str, np.ndarray]:
        if keys is None:
            return load_arrays(self.chunk_path(index))[0]
        with np.load(self.chunk_path(index), allow_pickle=False) as data:  # only the arrays asked for
            return {k: data[k] for k in keys}


@dataclass
class RolloutStore:
    """A recorded rollout on disk; :meth:`read` gives the same :class:`Rollout` an in-memory rollout gives."""

    store: ChunkStore

    @classmethod
    def open(cls, root) -> "RolloutStore":
        return cls(ChunkStore.open_kind(root, "rollout"))

    @property
    def identity(self) -> dict:
        return self.store.identity

    @property
    def num_steps(self) -> int:
        return self.identity["num_steps"]

    @property
    def bounds(self) -> list[tuple[int, int]]:
        return chunk_bounds(self.num_steps, self.identity["chunk_steps"])

    def completed_chunks(self) -> int:
        """How many leading chunks are finished."""
        done = 0
        while done < len(self.bounds) and self.store.has(done):
            done += 1
        return done

    @property
    def complete(self) -> bool:
        return self.completed_chunks() == len(self.bounds)

    def read(self, start: int = 0, stop: int | None = None) -> Rollout:
        """Steps ``start..stop-1`` as a :class:`Rollout`, loading only the chunks that hold them."""
        stop = self.num_steps if stop is None else stop
        if not 0 <= start < stop <= self.num_steps:
            raise ValueError(f"steps {start}..{stop} are outside the store's 0..{self.num_steps}")
        if not self.complete:
            missing = self.completed_chunks()
            if self.bounds[missing][0] < stop:
                raise EngineError(f"the rollout store {self.store.root} is incomplete (chunk {missing} missing): resume recording first")
        parts = [
            (a, self.store.read(k))
            for k, (a, b) in enumerate(self.bounds)
            if a < stop and b > start
        ]
        cat = {key: np.concatenate([p[key] for _, p in parts]) for key in parts[0][1]}
        offset = start - parts[0][0]
        window = slice(offset, offset + stop - start)
        states = tuple(torch.from_numpy(cat[f"state_{i}"][window]) for i in range(len(self.identity["state_shapes"])))
        fields = {name: torch.from_numpy(cat[name][window]) for name in ROLLOUT_FIELDS}
        return Rollout(states=states, env_id=self.identity["env_id"], seed=self.identity["seed"],
                       greedy=self.identity["greedy"], action_names=tuple(self.identity["action_names"]),
                       pipeline=self.identity["pipeline"], **fields)


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
    **pipeline_options,
) -> RolloutStore:
    """Play and record ``num_steps`` steps into a store, chunk by chunk; resumes an interrupted recording.

    The agent plays in its own environment pipeline (``pipeline_options`` as for :func:`engine.env.rollout.rollout`);
    the pipeline's settings, the action names and the shapes of the agent's state are recorded in the manifest.

    Resuming replays the recorded actions in a fresh environment (seeded as before; checked against the
    recorded frames of the last chunk), restores the action sampler's saved state and recomputes the
    recurrent state from the last recorded step, so the finished store equals an uninterrupted recording.
    """
    if num_steps < 1 or chunk_steps < 1:
        raise ValueError("num_steps and chunk_steps must be >= 1")
    player = Player(agent, env_id, seed, greedy, **pipeline_options)
    identity = dict(
        kind="rollout", format=FORMAT, engine=engine_version(), env_id=env_id, seed=seed, greedy=greedy,
        num_steps=num_steps, chunk_steps=chunk_steps, checkpoint_sha256=checkpoint_sha256,
        num_actions=agent.num_actions, state_shapes=[list(s.shape[1:]) for s in agent.initial_state(1)],
        dtype=str(agent.dtype), pipeline=player.spec.to_dict(), action_names=list(player.action_names),
    )
    try:
        rstore = RolloutStore(ChunkStore.open_or_create(root, identity, {"extra": extra or {}}))
    except BaseException:
        player.close()
        raise
    first = rstore.completed_chunks()
    if first == len(rstore.bounds):
        player.close()
        return rstore
    try:
        if first > 0:
            _resume_player(player, rstore, first)
        bar = tqdm(total=num_steps, initial=rstore.bounds[first][0], desc=f"record {env_id}", unit="step", disable=None if progress else True)
        for k in range(first, len(rstore.bounds)):
            a, b = rstore.bounds[k]
            steps = [player.step() for _ in range(b - a)]
            r = rollout_from_steps(steps)
            arrays = {name: getattr(r, name) for name in ROLLOUT_FIELDS}
            arrays.update({f"state_{i}": s for i, s in enumerate(r.states)})
            arrays["sampler_state"] = player.sampler.get_state()
            rstore.store.write(k, arrays)
            bar.update(b - a)
        bar.close()
    finally:
        player.close()
    return rstore


def _resume_player(player: Player, rstore: RolloutStore, done_chunks: int) -> None:
    actions, dones = [], []
    for k in range(done_chunks):
        part = rstore.store.read(k, ("actions", "dones"))
        actions.append(part["actions"])
        dones.append(part["dones"])
    last = rstore.store.read(done_chunks - 1)
    player.replay(np.concatenate(actions), np.concatenate(dones), frames=last["frames"], observations=last["observations"])
    player.sampler.set_state(torch.from_numpy(last["sampler_state"]))
    if not last["dones"][-1]:
        agent = player.agent
        state = tuple(torch.from_numpy(last[f"state_{i}"][-1:]) for i in range(len(rstore.identity["state_shapes"])))
        device, dtype = torch.device(agent.device), agent.dtype
        with torch.inference_mode():
            obs = torch.from_numpy(last["observations"][-1:]).to(device=device, dtype=dtype) / 255
            out = agent(obs, state_to(state, device, dtype))
        player.state = out.state


def replay_states(agent: Policy, observations, dones, state: State) -> tuple[State, State]:
    """The states ``agent`` uses on each of ``observations`` (uint8 (T, C, H, W)) when it sees them in order from
    ``state`` (reset after a recorded episode end), and the state after the last one. Bit-identical to playing
    (batch-invariant kernels), so replaying the recording agent reproduces its recorded states. Agents that expose
    their features (``features`` / ``from_features``, as the engine's own and its adapters do) run the convolutions
    batched and only the recurrent part step by step; others run whole forward passes step by step."""
    device, dtype = torch.device(agent.device), agent.dtype
    with torch.inference_mode():
        x = torch.as_tensor(observations).to(device=device, dtype=dtype) / 255
        split = hasattr(agent, "features") and hasattr(agent, "from_features")
        features = agent.features(pad_rows(x))[: x.shape[0]] if split else None
        state = state_to(state, device, dtype)
        used = []
        ends = torch.as_tensor(dones).to(torch.bool)
        for t in range(x.shape[0]):
            used.append(state)
            if split:
                out = agent.from_features(pad_rows(features[t : t + 1]), tuple(pad_rows(s) for s in state), 1)
            else:
                out = agent(x[t : t + 1], state)
            state = agent.reset_state(out.state, ends[t : t + 1]) if state else ()
    if not used[0]:
        return (), ()
    return tuple(torch.cat(parts) for parts in zip(*used)), state


# settings that do not change a single bit of the maps (tested) and so may differ between resumed runs
_RESULT_NEUTRAL = ("perturbations_per_eval", "memory_budget_mb", "frames_per_batch")


@dataclass
class SaliencyStore:
    """Maps and score grids of a rollout store, chunk by chunk (``actor``, ``critic``, ``actor_scores``, ...)."""

    store: ChunkStore

    @classmethod
    def open(cls, root) -> "SaliencyStore":
        return cls(ChunkStore.open_kind(root, "saliency"))

    @property
    def bounds(self) -> list[tuple[int, int]]:
        return chunk_bounds(self.store.identity["rollout"]["num_steps"], self.store.identity["frames_per_chunk"])

    def missing(self) -> list[int]:
        return [k for k in range(len(self.bounds)) if not self.store.has(k)]

    @property
    def complete(self) -> bool:
        return not self.missing()

    def read(self) -> dict[str, np.ndarray]:
        """All chunks concatenated (the store must be complete)."""
        missing = self.missing()
        if missing:
            raise EngineError(f"the saliency store {self.store.root} lacks chunks {missing[:10]}: run the missing shards")
        parts = [self.store.read(k) for k in range(len(self.bounds))]
        return {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}


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
) -> SaliencyStore:
    """Saliency of every frame of a rollout store, streamed chunk by chunk into a saliency store.

    Args:
        saliency: a :class:`engine.core.saliency.SaliencyConfig`.
        checkpoint_sha256: identifies ``agent``; if it is the agent that recorded the rollout, the recorded
            states are used, otherwise the agent replays the recorded frames to get its own states (the
            paper's "how does attention change during learning": every checkpoint sees the same game).
        shard, num_shards: this job scores chunks ``k`` with ``k % num_shards == shard``; shards write
            disjoint chunks of the same store, and their union equals a single run.

    Chunks already in the store are skipped, so a killed job started again continues where it stopped.
    """
    from dataclasses import asdict

    if not (isinstance(num_shards, int) and num_shards >= 1 and isinstance(shard, int) and 0 <= shard < num_shards):
        raise ValueError(f"need 0 <= shard < num_shards, got shard={shard} num_shards={num_shards}")
    if frames_per_chunk < 1:
        raise ValueError(f"frames_per_chunk must be >= 1, got {frames_per_chunk}")
    rstore = RolloutStore.open(rollout_root)
    if not rstore.complete:
        raise EngineError(f"the rollout store {rollout_root} is incomplete: finish (resume) its recording first")
    dtype = str(agent.dtype)
    settings = {k: v for k, v in asdict(saliency).items() if k not in _RESULT_NEUTRAL}
    identity = dict(
        kind="saliency", format=FORMAT, engine=engine_version(), rollout=rstore.identity,
        checkpoint_sha256=checkpoint_sha256, dtype=dtype, saliency=settings,
        frames_per_chunk=frames_per_chunk,
    )
    out = SaliencyStore(ChunkStore.open_or_create(root, identity))
    bounds = out.bounds
    todo = [k for k in range(len(bounds)) if k % num_shards == shard and not out.store.has(k)]
    own_states = bool(checkpoint_sha256) and checkpoint_sha256 == rstore.identity["checkpoint_sha256"] and dtype == rstore.identity["dtype"]
    bar = tqdm(total=sum(b - a for a, b in (bounds[k] for k in todo)), desc="saliency", unit="frame", disable=None if progress else True)
    carry = agent.initial_state(1)
    previous = None  # the state of the frame before the chunk (for the paper's off-by-one)
    for k in range(len(bounds)):
        if not todo or k > todo[-1]:
            break
        a, b = bounds[k]
        if own_states:
            if k not in todo:
                continue
            part = rstore.read(max(a - 1, 0), b)
            states = part.states if a == 0 else tuple(s[1:] for s in part.states)
            previous = None if a == 0 else tuple(s[:1] for s in part.states)
            frames = part.observations if a == 0 else part.observations[1:]
            actions = part.actions if a == 0 else part.actions[1:]
        else:
            part = rstore.read(a, b)
            frames, actions = part.observations, part.actions
            states, next_carry = replay_states(agent, frames, part.dones, carry)
            previous = None if a == 0 else tuple(s.cpu() for s in last_used)
            last_used = tuple(s[-1:] for s in states)
            carry = next_carry
            if k not in todo:
                continue
        if saliency.state_alignment == "paper":
            states = paper_shift(states, previous)
        maps = compute_saliency(agent, frames, states, saliency, actions=actions)
        out.store.write(k, {key: value.numpy() for key, value in maps.items()})
        bar.update(b - a)
    bar.close()
    return out
