"""A job checked before anything runs: its settings, environment id, checkpoints (the game each was trained on,
where known, and their actions), its agents loaded, and the manifests of the stores it would open
(:func:`validate_game_job`, :func:`check_game_stores`; :mod:`engine.jobs.games` checks a job of many games with
them, game by game). A bad override fails here in a second, with a message that names the fix, before any rollout
or scoring starts and before anything in the output directory is touched.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, cast

import torch

from ..core.device import resolve_device, resolve_dtype
from ..core.errors import CheckpointError, EngineError
from ..core.files import check_writable_directory, sha256_of
from ..core.inputs import float_bytes
from ..core.policy import Policy
from ..core.settings import FRAME_SHAPE, validate_method_settings, validate_settings
from ..env.pipelines import library_defaults, pipeline_observation_shape, quiet_emulator
from ..env.rollout import make_env
from ..policies.loading import load_policy
from ..policies.registry import (
    HF_PREFIX,
    TrainedGame,
    ale_game,
    resolve_checkpoint,
    same_game,
    trained_game,
)
from ..storage.keys import is_memory, is_url, store_exists, store_root
from ..storage.layout import (
    available_memory,
    check_scoring_chunk,
    game_root,
    memory_bytes,
    rollout_layout,
    saliency_layout,
    size_text,
    step_bytes,
)
from ..storage.store import (
    IDENTITY_DEFAULTS,
    ChunkStore,
    RolloutStore,
    StoreMismatchError,
    check_writable,
    writing_needed,
)
from .config import JobConfig, bundled_envs, check_config, engine_saliency
from .record import rollout_identity
from .score import saliency_identity

if TYPE_CHECKING:
    from gymnasium.spaces import Discrete


@dataclass
class PreparedJob:
    """A job whose settings, environment, agents and stores are checked (:func:`validate_game_job`, or
    :func:`engine.jobs.games.validate_games_job`): its agent loaded, ``store.player``'s too (None: the agent plays),
    and what the job says once it runs (``warnings``: logged, and kept in summary.json)."""

    config: JobConfig
    checkpoint: Path
    agent: Policy
    player: Policy | None = None
    player_checkpoint: Path | None = None
    warnings: list[str] = field(default_factory=list)
    checkpoint_sha256: str = ""  # of the bytes ``agent`` was loaded from (:func:`load_job_agent`)
    player_sha256: str = ""  # of ``player_checkpoint``'s, where there is one

    @property
    def played_by_sha256(self) -> str:
        """The sha256 of the checkpoint that plays the game: ``store.player``'s, else the agent's."""
        return self.player_sha256 if self.player_checkpoint is not None else self.checkpoint_sha256


def pipeline_options(config: JobConfig, agent: Policy) -> dict:
    """The environment-pipeline options of the job for ``agent``'s pipeline (``engine.env.pipelines``)."""
    e = config.env
    options: dict[str, object] = dict(
        repeat_action_probability=e.repeat_action_probability, full_action_space=e.full_action_space
    )
    if e.pipeline:
        options["pipeline"] = e.pipeline
    if e.training_wrappers:
        trained = library_defaults(e.pipeline or agent.pipeline)
        options.update({k: trained[k] for k in ("episodic_life", "clip_rewards") if k in trained})
    return options


def load_job_agent(config: JobConfig, path) -> tuple[Policy, str]:
    """The agent of ``path`` as the job's settings ask (kind, device, dtype; the core of a 2017 agent), and the
    sha256 of the file it was loaded from, hashed before and after loading: a file replaced meanwhile (a training
    run writing it) is refused, so the stores never record one file's hash beside another file's maps."""
    device, dtype = resolve_device(str(config.device)), resolve_dtype(str(config.dtype))
    sha256 = sha256_of(path)
    agent = load_policy(path, device=device, dtype=dtype, kind=str(config.agent.kind))
    if sha256_of(path) != sha256:
        raise CheckpointError(
            f"{path} changed while it was being loaded (another program is writing it): run the job again once "
            "the file is complete"
        )
    core = getattr(agent, "core", None)
    if core is not None and config.agent.core not in ("auto", core):
        raise CheckpointError(f"agent.core is {str(config.agent.core)!r} but {path} holds a {core.upper()} agent")
    return agent, sha256


def validate_game_job(config: JobConfig, output_known: bool = True) -> PreparedJob:
    """Check the settings (:func:`engine.jobs.config.check_config`), the environment id, the checkpoints (the game
    each was trained on, where known, and their actions), load the agent and ``store.player``'s, and check the stores
    the job would open (:func:`check_game_stores`; ``output_known=False`` while ``output.dir`` is not the job's yet);
    nothing is played or written."""
    check_config(config)
    quiet_emulator()
    e = config.env
    actions = env_actions(e.id, e.full_action_space)  # an unknown id fails here
    if config.render.style == "paper" and (config.render.actor_gain is None or config.render.critic_gain is None):
        from ..viz.rendering import paper_gains

        try:
            paper_gains(e.id)
        except ValueError as exc:  # a game without published gains
            raise EngineError(str(exc)) from None
    a, st = config.agent, config.store
    path = resolve_checkpoint(a.checkpoint, a.checkpoint_dirs, a.cache_dir, a.allow_download)
    warnings = checked_game("agent.checkpoint", a.checkpoint, path, e.id)
    agent, sha256 = load_job_agent(config, path)
    check_actions("agent.checkpoint", a.checkpoint, path, agent, config, actions)
    warnings += three_channel_warning(a.checkpoint, agent)
    player, player_path, player_sha256 = None, None, ""
    if st.player:
        try:
            player_path = resolve_checkpoint(st.player, a.checkpoint_dirs, a.cache_dir, a.allow_download)
        except CheckpointError as exc:  # the same words as agent.checkpoint's: say which setting named it
            raise CheckpointError(f"store.player: {exc}") from None
        warnings += checked_game("store.player", st.player, player_path, e.id)
        player, player_sha256 = (agent, sha256) if player_path == path else load_job_agent(config, player_path)
        check_actions("store.player", st.player, player_path, player, config, actions)
        if (player.pipeline, player.frame_stack) != (agent.pipeline, agent.frame_stack):
            raise EngineError(
                f"store.player {st.player} plays in the {player.pipeline} pipeline ({player.frame_stack} frames "
                f"stacked) but agent.checkpoint {a.checkpoint} sees the {agent.pipeline} pipeline "
                f"({agent.frame_stack}): the game it records would not fit the agent; choose a player of the agent's "
                "kind, or unset store.player"
            )
    prepared = PreparedJob(config, path, agent, player, player_path, warnings, sha256, player_sha256)
    check_memory_fits(prepared)
    check_game_stores(prepared, output_known)
    return prepared


@functools.cache
def env_actions(env_id: str, full_action_space: bool) -> int:
    """How many actions ``env_id`` has (all 18 of the ALE with ``full_action_space``)."""
    env = make_env(env_id, full_action_space=full_action_space)
    try:
        return int(cast("Discrete", env.action_space).n)  # the Atari environments' actions are discrete
    finally:
        env.close()


def env_choice(env_id: str) -> str:
    """How to choose ``env_id``'s game on the command line: ``env=<option>`` of a bundled environment config of that
    game (of that very id, if one is), else ``env.id=<env_id>``."""
    options = sorted(
        ((other != env_id, option) for option, other in bundled_envs().items() if same_game(other, env_id)),
    )
    return f"env={options[0][1]}" if options else f"env.id={env_id}"


def checked_game(key: str, name: str, path: Path, env_id: str) -> list[str]:
    """Refuse the checkpoint ``name`` (setting ``key``) where its registry entry or built-in metadata names another
    game than ``env_id``; where a user's file has metadata that does, the warning (one, returned) that says so."""
    trained = trained_game(name, path)
    if trained is None or same_game(trained.env_id, env_id):
        return []
    fix, game = env_choice(trained.env_id), ale_game(env_id)
    if trained.source != "metadata":
        raise EngineError(
            f"{key} {name} was trained on {ale_game(trained.env_id)} ({trained.env_id}), but env.id is {env_id}: "
            f"set {fix} to run it on its own game, or choose an agent trained on {game}"
        )
    return [
        f"{key} {name} was trained on {trained.env_id} (its metadata {path.with_suffix('.json')} says so), not on "
        f"{env_id}: its maps show it playing a game it never learned; set {fix} to run it on its own game"
    ]


def three_channel_warning(name: str, agent: Policy) -> list[str]:
    """The warning (one, returned) for an agent of a frame-stacking pipeline that takes 3 channels: 3 stacked
    grayscale frames, or RGB frames, which its file cannot tell apart (an ``hf://`` agent's config.yml can, and is
    checked against the model by :mod:`engine.policies.hub`)."""
    if agent.observation_shape[0] != 3 or agent.frame_stack != 3 or str(name).startswith(HF_PREFIX):
        return []
    return [
        f"agent.checkpoint {name} takes 3 channels: it is played as 3 stacked grayscale frames ({agent.pipeline}); "
        "an agent trained on RGB frames takes 3 channels too, and is not one the engine plays: its maps would "
        "show nothing it looks at"
    ]


def check_actions(key: str, name: str, path: Path, agent: Policy, config: JobConfig, actions: int) -> None:
    """Refuse an agent whose action count is not the environment's, naming an environment that fits it."""
    if agent.num_actions == actions:
        return
    e = config.env
    where = f"{e.id} with env.full_action_space=true" if e.full_action_space else e.id
    file = "" if Path(name).expanduser().resolve() == path.resolve() else f" ({path})"
    raise EngineError(
        f"{where} has {actions} actions but {key} {name}{file} has {agent.num_actions}: "
        f"{fitting_env(agent.num_actions, trained_game(name, path), e.id, e.full_action_space)}"
    )


def fitting_env(num_actions: int, trained: TrainedGame | None, env_id: str, full_action_space: bool) -> str:
    """What to set for an agent of ``num_actions`` actions (trained on ``trained``, where known) instead of
    ``env_id``: its own game, the other action set of this one, or the bundled games with that many actions."""
    if trained is not None and not same_game(trained.env_id, env_id):
        return f"it was trained on {trained.env_id}: set {env_choice(trained.env_id)}"
    if env_actions(env_id, not full_action_space) == num_actions:
        return f"set env.full_action_space={str(not full_action_space).lower()}"
    if trained is not None:
        return f"it was trained on {trained.env_id}, whose action sets have other sizes: check the checkpoint"
    counts = {option: env_actions(other, full_action_space) for option, other in bundled_envs().items()}
    games = bundled_envs()
    fits = [f"env={option} ({games[option]})" for option, n in counts.items() if n == num_actions]
    if fits:
        return f"of the bundled games, {' and '.join(fits)} {'has' if len(fits) == 1 else 'have'} {num_actions} " + (
            "actions: set the one it was trained on (or env.id=<its game>)"
        )
    sizes = ", ".join(f"env={option}: {n}" for option, n in counts.items())
    return f"no bundled game has {num_actions} actions ({sizes}): set env.id to the game it was trained on"


def check_agent_settings(prepared: PreparedJob) -> None:
    """Refuse the job's settings that do not fit its (loaded) agent: the methods' settings that depend on the
    observation's size (an occlusion window larger than it, ...), ``saliency.compat=paper`` on observations that are
    not the 2017 agents' 80x80, an ``env.pipeline`` whose observations the agent cannot take. Cheap (nothing is
    played): every job of a sweep runs it, also where the jobs share one loaded agent."""
    config, agent = prepared.config, prepared.agent
    size = cast("tuple[int, int]", tuple(agent.observation_shape[1:]))
    s = config.saliency
    try:
        validate_settings(s.radius, s.density, str(s.interp), s.blur_sigma, str(s.compat), size)
        itemsize = float_bytes(agent.dtype)
        validate_method_settings(s, size, itemsize, budget_name="saliency.memory_budget_mb")
    except ValueError as exc:
        raise EngineError(f"saliency.{exc}") from None
    if str(s.compat) == "paper" and size != (80, 80):
        raise EngineError(
            f"saliency.compat=paper reproduces the 2017 code's upsampling of 80x80 maps, but the observations of "
            f"agent.checkpoint {config.agent.checkpoint} are {size[0]}x{size[1]}: use saliency.compat=exact with this "
            "agent"
        )
    options = pipeline_options(config, agent)
    chosen = options.pop("pipeline", None)
    name = str(chosen or agent.pipeline)
    try:
        shape = pipeline_observation_shape(name, agent.frame_stack, **options)
        own = pipeline_observation_shape(agent.pipeline, agent.frame_stack, **options)
    except (TypeError, ValueError) as exc:
        raise EngineError(f"env.pipeline {name}: {exc}") from None
    if own != tuple(agent.observation_shape):  # whatever env.pipeline says: unsetting it would not help
        raise EngineError(
            f"agent.checkpoint {config.agent.checkpoint} takes observations {tuple(agent.observation_shape)}, but "
            f"its kind's pipeline ({agent.pipeline}) makes {own} and the engine has no other for it: a "
            f"{agent.pipeline} agent must take {own}"
        )
    if shape != tuple(agent.observation_shape):
        raise EngineError(
            f"env.pipeline={name} makes observations {shape} but agent.checkpoint {config.agent.checkpoint} takes "
            f"{tuple(agent.observation_shape)}: unset env.pipeline to play it in its own pipeline ({agent.pipeline})"
        )


def check_memory_fits(prepared: PreparedJob, games: int = 1) -> None:
    """Refuse a job without ``store.rollout``, whose stores are in memory, where they would not fit the memory
    available (as a store does when it is made, but for all of them together, before any is made): each of the
    ``games`` games' rollout store, and the saliency stores alive at once (one game's, or every game's where the
    games are scored as they are recorded, ``store.overlap``). With ``store.rollout``, where the chunk of
    ``store.chunk_steps`` steps each of the games holds while it is recorded would not fit."""
    config, agent = prepared.config, prepared.agent
    st, r = config.store, config.rollout
    available = available_memory()
    if available is None:
        return
    layout = rollout_layout(agent, FRAME_SHAPE, agent.observation_shape)
    if st.rollout:
        per_step = games * step_bytes(layout)  # a step of every game
        if per_step * min(st.chunk_steps, r.steps) > available and not all_recorded(store_root(st.rollout), games):
            fit = available // per_step
            raise EngineError(
                f"{games} game{'s' if games > 1 else ''} recorded into a store hold a chunk of store.chunk_steps="
                f"{st.chunk_steps} steps each in memory, {size_text(per_step * min(st.chunk_steps, r.steps))}, more "
                f"than the {size_text(available)} of memory available: "
                + (f"use store.chunk_steps={fit} or less, or fewer" if fit else "use fewer")
                + " rollout.num_envs"
            )
        return
    rollout = memory_bytes(layout, r.steps, st.chunk_steps)
    saliency = memory_bytes(saliency_layout(agent, config.saliency), r.steps, st.frames_per_chunk)
    at_once = games > 1 and (st.overlap if st.overlap is not None else torch.device(agent.device).type == "cuda")
    need = games * rollout + (games if at_once else 1) * saliency
    if need <= available:
        return
    per_step = -(-need // r.steps)
    what = f"{games} games of rollout.steps={r.steps}" if games > 1 else f"rollout.steps={r.steps}"
    raise EngineError(
        f"{what} held in memory (no store.rollout) need up to {size_text(need)} for their rollout and saliency "
        f"stores ({size_text(per_step)} a step), more than the {size_text(available)} of memory available: at most "
        f"{available // per_step} steps fit; use fewer rollout.steps"
        + (" or rollout.num_envs" if games > 1 else "")
        + ", or set store.rollout to a path to keep the stores on disk"
    )


def all_recorded(root, games: int) -> bool:
    """Whether the rollout store at ``root`` (a games root where ``games > 1``: each game's) is complete: a job
    then replays it, recording nothing."""
    roots = [root] if games == 1 else [game_root(root, i) for i in range(games)]
    try:
        found = [existing_store(r, "rollout") for r in roots]
    except EngineError:  # refused as the job's own checks refuse it, with their message
        return False
    return all(f is not None and RolloutStore(f).complete for f in found)


def check_game_stores(prepared: PreparedJob, output_known: bool = True) -> None:
    """Refuse what the job's settings (:func:`check_agent_settings`) and its stores would refuse once it runs, before
    anything is written or removed: a path holding something that is no store, a store of another kind, an old
    format or damaged, a store written with other settings, a recorded game of another environment or pipeline, a
    place that is not writable (``output.dir`` too). Reads manifests only. The default saliency store lies in
    ``output.dir``: checked where ``output_known``."""
    check_agent_settings(prepared)
    config, st = prepared.config, prepared.config.store
    player = prepared.player or prepared.agent
    try:  # the chunk of frames scoring holds, with the recorded steps it reads: refused here, not after playing
        check_scoring_chunk(
            rollout_layout(player, FRAME_SHAPE, player.observation_shape),
            saliency_layout(prepared.agent, config.saliency),
            st.frames_per_chunk,
        )
    except EngineError as exc:
        raise EngineError(f"store.{exc}") from None
    if output_known:
        check_writable_directory(config.output.dir, "output.dir")
    if not st.rollout:
        return
    rollout_root = store_root(st.rollout)
    recorded = existing_store(rollout_root, "rollout")
    if recorded is not None and RolloutStore(recorded).complete:
        check_recorded(RolloutStore(recorded), rollout_root, config, prepared.agent)
        check_replayed(RolloutStore(recorded), rollout_root, config)
        check_recorded_by_player(RolloutStore(recorded), rollout_root, prepared)
    elif recorded is not None:
        r = config.rollout
        wanted = rollout_identity(
            player, config.env.id, r.seed, r.greedy, r.steps, st.chunk_steps, prepared.played_by_sha256
        )
        check_identity(rollout_root, recorded.identity, wanted)
    if writing_needed(rollout_root, "rollout", None):
        check_writable(rollout_root)
    if not (st.saliency or output_known):
        return
    saliency_root = store_root(st.saliency) if st.saliency else Path(config.output.dir) / "saliency_store"
    scored = existing_store(saliency_root, "saliency")
    if scored is not None:
        wanted = saliency_identity(
            prepared.agent,
            engine_saliency(config.saliency),
            prepared.checkpoint_sha256,
            st.frames_per_chunk,
            None if recorded is None else recorded.identity,
            None if recorded is None else RolloutStore(recorded).recording,
        )
        if recorded is None and "rollout_recording" in scored.identity:
            raise StoreMismatchError(
                f"the saliency store {saliency_root} scored a recording that {rollout_root} no longer holds (no rollout "
                "store is there): a game recorded again may differ, so delete the saliency store to score it afresh, "
                "or put the rollout store it scored back"
            )
        in_job_folder = (
            " (it is in the job's own folder; in a sweep, job folders are numbered in its order, so a sweep "
            "reordered or extended goes into another hydra.sweep.dir)"
            if not st.saliency
            else ""
        )
        check_identity(saliency_root, scored.identity, wanted, in_job_folder)
    if writing_needed(saliency_root, "saliency", None):
        check_writable(saliency_root)


def existing_store(root, kind: str) -> ChunkStore | None:
    """The store of ``kind`` at ``root``, opened read-only (an old format, a group without a manifest, a store of
    another kind or a damaged one refused as opening it refuses), or None where there is none yet; a local path that
    holds a file, or a folder of other files, is refused: a store never adopts them."""
    if store_exists(root):
        return ChunkStore.open_kind(root, kind, read_only=True)
    if is_memory(root) or is_url(root):
        return None  # the store's own check refuses foreign keys or objects when the job creates it
    path = Path(root)
    if path.exists() and not path.is_dir():
        raise EngineError(f"the store path {path} is a file, not a directory: use another path")
    if path.is_dir() and any(path.iterdir()):
        if (path / "manifest.json").is_file():
            ChunkStore.open_kind(path, kind, read_only=True)  # refuses an older engine's store, saying so
        raise EngineError(
            f"{path} is not empty but has no store manifest (zarr.json): not adopting its files; delete it or use "
            "another path"
        )
    return None


def check_identity(root, found: dict, wanted: dict, where: str = "") -> None:
    """Refuse a store whose manifest differs from this job's settings in any of ``wanted`` (nested dicts compared
    key by key); ``where``: what else to say of the place (a store in the job's own folder)."""
    wanted = json.loads(json.dumps(wanted, default=str))  # as a manifest reads back
    differences = identity_differences(found, wanted)
    if differences:
        raise StoreMismatchError(
            f"the store {root} was written with other settings ({'; '.join(differences)}): refusing to mix them; use "
            f"another directory, or delete this one to start over{where}"
        )


# what sets each field of a store's identity (engine.jobs.record.rollout_identity, engine.jobs.score.saliency_identity)
SETTING_OF_FIELD = {
    "env_id": "env.id",
    "seed": "rollout.seed",
    "greedy": "rollout.greedy",
    "num_steps": "rollout.steps",
    "chunk_steps": "store.chunk_steps",
    "frames_per_chunk": "store.frames_per_chunk",
    "checkpoint_sha256": "another checkpoint's bytes: agent.checkpoint; a recorded game's, store.player",
    "num_actions": "the agent's actions: agent.checkpoint",
    "state_shapes": "the agent's recurrent state: agent.checkpoint",
    "dtype": "dtype",
    "pipeline": "env.pipeline and the agent's kind",
    "engine": "the engine's version",
}


def identity_differences(found: dict, wanted: dict, prefix: str = "") -> list[str]:
    """Each field in which a store's identity (``found``) differs from this job's (``wanted``), with the setting
    that sets it (:data:`SETTING_OF_FIELD`) where it is not the field's own name."""
    differences = []
    # a setting left out at its default (saliency.precision 'exact') compares, and is named, as that default
    left_out = [k for k in found if k not in wanted and f"{prefix}{k}" in IDENTITY_DEFAULTS]
    for key in [*wanted, *left_out]:
        have = found.get(key, IDENTITY_DEFAULTS.get(f"{prefix}{key}"))
        value = wanted.get(key, IDENTITY_DEFAULTS.get(f"{prefix}{key}"))
        if isinstance(value, dict) and isinstance(have, dict):
            differences += identity_differences(have, value, f"{prefix}{key}.")
        elif have != value:
            setting = SETTING_OF_FIELD.get(key) if not prefix else None
            label = f"{key} ({setting})" if setting and setting != key else f"{prefix}{key}"
            differences.append(f"{label}: store has {have!r}, this job {value!r}")
    return differences


def check_recorded(rstore: RolloutStore, root, config: JobConfig, agent: Policy) -> None:
    """Refuse a recorded game of another environment than the job's, or recorded in another pipeline than the
    agent's."""
    if rstore.identity["env_id"] != config.env.id:
        raise EngineError(
            f"the rollout store {root} holds {rstore.identity['env_id']}, not {config.env.id}: use another "
            f"store.rollout for {config.env.id} (or env.id={rstore.identity['env_id']} to replay it)"
        )
    recorded, played = rstore.identity["pipeline"], config.env.pipeline or agent.pipeline
    if (recorded["name"], recorded["frame_stack"]) != (played, agent.frame_stack):
        raise EngineError(
            f"the rollout store {root} was recorded in the {recorded['name']} pipeline ({recorded['frame_stack']} "
            f"frames stacked), but this job plays the agent in the {played} pipeline ({agent.frame_stack}): replay a "
            "game recorded for agents of the same kind (or set env.pipeline to the store's)"
        )


def check_replayed(rstore: RolloutStore, root, config: JobConfig) -> None:
    """Refuse to replay a complete rollout store of another seed, length or action choice than the job's: it is
    replayed as it is, so the job's rollout settings (and the summary that records them) must describe it. Its
    chunking is the store's own (the summary records the store's ``store.chunk_steps``)."""
    r, identity = config.rollout, rstore.identity
    asked = {"rollout.seed": r.seed, "rollout.steps": r.steps, "rollout.greedy": r.greedy}
    held = {
        "rollout.seed": identity["seed"],
        "rollout.steps": identity["num_steps"],
        "rollout.greedy": identity["greedy"],
    }
    differ = [k for k in asked if asked[k] != held[k]]
    if differ:

        def show(values: dict) -> str:
            return ", ".join(f"{k}={str(values[k]).lower()}" for k in differ)

        raise EngineError(
            f"the rollout store {root} holds a game recorded with {show(held)}, but this job asks for {show(asked)}: a "
            "recorded game is replayed as it is; set those to the store's, or give another store.rollout"
        )


def check_recorded_by_player(rstore: RolloutStore, root, prepared: PreparedJob) -> None:
    """Refuse ``store.player`` naming another agent than the one that recorded the complete store it replays: the
    game is replayed as it was played, and the job's summary records ``store.player`` as the game's player."""
    player = prepared.config.store.player
    recorder = rstore.identity.get("checkpoint_sha256")
    if not player or not recorder or recorder == prepared.player_sha256:
        return
    by = rstore.store.manifest.get("extra", {}).get("checkpoint") or f"the checkpoint of sha256 {recorder[:12]}"
    raise EngineError(
        f"store.player {player} did not play the game in the rollout store {root}: {by} did, and a complete store "
        "is replayed as it was played; unset store.player (or name the agent that played), or give another "
        "store.rollout to record a game of this player"
    )
