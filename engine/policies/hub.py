"""Agents straight from the Hugging Face Hub: ``hf://<owner>/<name>`` (or ``hf://<owner>/<name>@<revision>``), e.g.
``hf://sb3/ppo-BreakoutNoFrameskip-v4``, an RL Zoo repository.

:func:`fetch_hub_agent` asks the Hub which files the repository holds at that revision (and its commit), downloads
through ``huggingface_hub`` (the optional ``hub`` extra: ``pip install huggingface_hub``; imported only here, only
when an ``hf://`` name is loaded) the files the engine reads, and nothing else:

- the model, ``<algo>-<env>.zip`` (the zip named after the repository, else its only other ``.zip`` beside RL Zoo's
  ``train_eval_metrics.zip``), read as every SB3 zip is (:mod:`engine.policies.sb3_zip`: never unpickled);
- ``config.yml``, RL Zoo's hyperparameters: a ``yaml.dump`` of an ``OrderedDict``, read by :func:`read_config`
  with yaml's ``SafeLoader`` plus that one tag (``!!python/object/apply:collections.OrderedDict``, built from its
  ``[key, value]`` pairs) and no other; its ``policy_kwargs`` (a string of Python) is never evaluated, only its
  literal values are read (:func:`literal_kwargs`); its ``env_wrapper`` (which must be SB3's ``AtariWrapper``, or
  absent: AtariWrapper's defaults) and ``frame_stack`` say the pipeline (``sb3_atari``), checked against the zip;
- ``env_kwargs.yml``, the keyword arguments RL Zoo passed to ``gym.make``, read the same way.

``vec_normalize.pkl`` is never downloaded nor unpickled. An agent whose ``config.yml`` normalises observations
(``normalize: true``, or ``norm_obs`` true) needs its statistics from that pickle, and is refused; one that
normalises rewards only sees what the engine feeds it, and the pickle is ignored.

Cache: the files go to ``<cache>/huggingface`` (``<cache>`` is the registry's checkpoint cache,
:data:`engine.core.files.CHECKPOINT_CACHE`, or ``agent.cache_dir``), in ``huggingface_hub``'s own layout
(``models--<owner>--<name>/snapshots/<commit>/...``), and beside them ``models--<owner>--<name>/atari-saliency.json``
records, per commit, each file's sha256 as it was downloaded, and which commit each revision named. A later load
asks the Hub for the revision's commit (one small request) and downloads only what is not cached; every file used,
cached or just downloaded, is hashed again and must have its recorded sha256 (and, while the Hub answers, the
id the Hub lists for it: the sha256 of a file kept in LFS, the git blob id of one kept in git): a file whose bytes
changed is refused, with the folder to delete to download it afresh. Offline (``HF_HUB_OFFLINE=1``, downloads disabled, or the Hub unreachable) the cached commit the revision
last named is used, checked the same way; with nothing cached, a :class:`CheckpointError` says so in one line, as
it does for an unknown repository or revision (404), a repository without a model zip, and a missing
``huggingface_hub`` (:class:`MissingDependencyError`).

:func:`engine.policies.loading.load_policy` takes ``hf://`` names; :func:`engine.policies.registry.resolve_checkpoint`
(the app's ``agent.checkpoint``) turns one into its model zip's path, which ``load_policy`` then recognises (in the
same process). Either way the zip is checked against ``config.yml`` (:func:`configure`: pipeline, frame stack,
screen size) and the policy keeps the :class:`HubAgent` as ``policy.hub``. The configuration files come first: an
agent they refuse is refused before its model is downloaded. AtariWrapper settings other than its defaults are
given as ``policy.hub.pipeline_options`` (and logged) for the caller's rollout, not applied by themselves.
"""

from __future__ import annotations

import ast
import hashlib
import json
import logging
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

# PyYAML: hydra-core's omegaconf and huggingface_hub depend on it; its stubs may be absent
import yaml  # type: ignore[import-untyped, unused-ignore]

from ..core.errors import CheckpointError, MissingDependencyError
from ..core.files import CHECKPOINT_CACHE, atomic_write, sha256_of
from .checkpoint import parse_json

if TYPE_CHECKING:
    from ..core.policy import Policy

log = logging.getLogger(__name__)

HF_PREFIX = "hf://"
CACHE_FOLDER = "huggingface"  # under the registry's checkpoint cache
RECORD_NAME = "atari-saliency.json"  # in the repository's cache folder
CONFIG, ENV_KWARGS, VEC_NORMALIZE = "config.yml", "env_kwargs.yml", "vec_normalize.pkl"
NOT_MODELS = frozenset({"train_eval_metrics.zip"})  # RL Zoo uploads its evaluation logs as a zip too
ATARI_WRAPPER = "stable_baselines3.common.atari_wrappers.AtariWrapper"
# SB3's AtariWrapper keyword arguments and their defaults (stable_baselines3.common.atari_wrappers)
ATARI_WRAPPER_DEFAULTS: dict[str, Any] = dict(
    noop_max=30,
    frame_skip=4,
    screen_size=84,
    terminal_on_life_loss=True,
    clip_reward=True,
    action_repeat_probability=0.0,
)
# AtariWrapper's arguments that change what the agent sees -> the sb3_atari pipeline's option of the same effect;
# terminal_on_life_loss and clip_reward are training-only (the engine plays full games with the game's score)
_PLAY_OPTIONS = {"noop_max": "noop_max", "frame_skip": "frame_skip", "screen_size": "screen_size"}
_LEAST = {"noop_max": 0, "frame_skip": 1, "screen_size": 1}  # the smallest value each one can take
_ENV_KWARGS_OPTIONS = ("full_action_space", "repeat_action_probability")  # gym.make arguments the pipeline takes
MAX_YAML_BYTES = 1 << 20  # RL Zoo's config.yml is about 1 KB
MAX_RECORD_BYTES = 4 << 20
MAX_KWARGS_CHARS = 1 << 16
_REPO_PART = r"[A-Za-z0-9](?:[A-Za-z0-9_.]|-(?!-))*"
_NAME = re.compile(rf"(?P<repo>{_REPO_PART}/{_REPO_PART})(?:@(?P<revision>[A-Za-z0-9][A-Za-z0-9_.\-/]*))?")
_COMMIT = re.compile(r"[0-9a-f]{40}")
_ENV_ID = re.compile(r"[A-Za-z][A-Za-z0-9_]*(?:-[A-Za-z0-9_]+)*-v[0-9]+")
_OFFLINE_FIX = "unset HF_HUB_OFFLINE (and allow downloads) to download it once"


class HubError(CheckpointError):
    """An ``hf://`` agent that cannot be fetched or used: unknown, offline and not cached, changed in the cache, or
    not an Atari agent the engine reads. The message is one line that says why and what to do."""


@dataclass(frozen=True)
class HubAgent:
    """An RL Zoo repository's agent, fetched and checked (:func:`fetch_hub_agent`).

    Attributes:
        name: ``hf://<repo_id>@<revision>``; repo_id, revision (as asked, ``main`` by default), commit (the
            revision's commit when fetched).
        model: the model zip in the cache; files: ``{file: sha256}`` of every file used, as recorded at download.
        algorithm, env_id: from the zip's name (``<algo>-<env>.zip``), where it has that form.
        frame_stack: ``config.yml``'s ``frame_stack`` (None where it has none).
        wrapper_kwargs: SB3's AtariWrapper's keyword arguments, ``config.yml``'s over the defaults.
        env_kwargs: ``env_kwargs.yml``'s ``gym.make`` arguments.
        config: ``config.yml`` (plain values; ``policy_kwargs`` as text, :func:`literal_kwargs` reads it).
        pipeline_options: :func:`engine.env.pipelines.make_pipeline` options that play the agent's game as its
            training saw it (only those that differ from the engine's defaults; training-only wrappers excluded):
            ``rollout(agent, env_id, n, **hub.pipeline_options)``.
        notes: what was ignored or differs, for the log.
    """

    name: str
    repo_id: str
    revision: str
    commit: str
    model: Path
    files: dict[str, str]
    algorithm: str | None
    env_id: str | None
    frame_stack: int | None
    wrapper_kwargs: dict[str, Any] = field(default_factory=dict)
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    pipeline_options: dict[str, Any] = field(default_factory=dict)
    notes: tuple[str, ...] = ()


_FETCHED: dict[str, HubAgent] = {}  # the resolved model path -> its agent, for load_policy(resolve_checkpoint(...))


def is_hub_name(name: object) -> bool:
    """Whether ``name`` is an ``hf://`` name (a string starting with ``hf://``)."""
    return isinstance(name, str) and name.startswith(HF_PREFIX)


def parse_hub_name(name: str) -> tuple[str, str]:
    """``(repo_id, revision)`` of ``hf://<owner>/<name>[@<revision>]`` (revision ``main`` by default)."""
    match = _NAME.fullmatch(name.removeprefix(HF_PREFIX)) if is_hub_name(name) else None
    revision = match["revision"] if match else None
    if match is None or ".." in match["repo"] or (revision and (".." in revision or revision.endswith("/"))):
        raise HubError(
            f"{name!r} is not a Hugging Face Hub agent name: use hf://<owner>/<name> or hf://<owner>/<name>@<revision> "
            "(e.g. hf://sb3/ppo-BreakoutNoFrameskip-v4; letters, digits, '-', '_' and '.')"
        )
    return match["repo"], revision or "main"


def hub_cache(cache_dir: str | os.PathLike | None = None) -> Path:
    """Where ``hf://`` agents are cached: ``<cache>/huggingface``, ``<cache>`` the registry's checkpoint cache."""
    return (Path(cache_dir).expanduser() if cache_dir else CHECKPOINT_CACHE) / CACHE_FOLDER


def repo_folder(root: Path, repo_id: str) -> Path:
    """The repository's folder in the cache, in huggingface_hub's layout (``models--<owner>--<name>``)."""
    return root / ("models--" + repo_id.replace("/", "--"))


# --- config.yml ------------------------------------------------------------------------------------------------


class ConfigLoader(yaml.SafeLoader):
    """yaml's ``SafeLoader`` plus exactly one Python tag, the one ``yaml.dump`` writes for an ``OrderedDict``
    (``!!python/object/apply:collections.OrderedDict`` over a list of ``[key, value]`` pairs), built as a plain
    dict; every other Python tag is an error, as in ``SafeLoader``, and nothing is imported or called."""


def _ordered_dict(loader: yaml.SafeLoader, node: yaml.Node) -> dict:
    if not isinstance(node, yaml.SequenceNode):
        raise yaml.constructor.ConstructorError(
            None, None, "an OrderedDict written other than as its list of [key, value] pairs", node.start_mark
        )
    args = loader.construct_sequence(node, deep=True)
    pairs = args[0] if len(args) == 1 else None
    if not isinstance(pairs, list) or not all(isinstance(p, list) and len(p) == 2 for p in pairs):
        raise yaml.constructor.ConstructorError(
            None, None, "an OrderedDict whose argument is not a list of [key, value] pairs", node.start_mark
        )
    try:
        return {key: value for key, value in pairs}
    except TypeError as exc:  # a key that is not hashable
        raise yaml.constructor.ConstructorError(None, None, f"an OrderedDict key: {exc}", node.start_mark) from None


ConfigLoader.add_constructor("tag:yaml.org,2002:python/object/apply:collections.OrderedDict", _ordered_dict)


def read_config(raw: bytes, source: str) -> dict[str, Any]:
    """The mapping of an RL Zoo ``config.yml`` / ``env_kwargs.yml`` (:class:`ConfigLoader`), keys as strings; an
    empty file is ``{}``; anything else is a :class:`HubError` naming ``source``."""
    if len(raw) > MAX_YAML_BYTES:
        raise HubError(f"{source} is {len(raw)} bytes, beyond the {MAX_YAML_BYTES} of an RL Zoo config: not read")
    try:
        data = yaml.load(raw.decode("utf-8"), Loader=ConfigLoader)  # noqa: S506 (a SafeLoader subclass)
    except yaml.YAMLError as exc:
        problem, mark = getattr(exc, "problem", None), getattr(exc, "problem_mark", None)
        reason = " ".join(str(problem or exc).split()) + (f", line {mark.line + 1}" if mark is not None else "")
        raise HubError(
            f"{source} is not the YAML RL Zoo writes ({reason}); only plain YAML and the OrderedDict tag are read "
            "(nothing in it was run)"
        ) from None
    except (UnicodeDecodeError, RecursionError) as exc:
        raise HubError(f"{source} is not readable YAML ({type(exc).__name__}: {exc})") from None
    if data is None:
        return {}
    if not isinstance(data, dict) or not all(isinstance(k, str) for k in data):
        raise HubError(f"{source} holds a {type(data).__name__}, not a mapping of settings by name")
    return data


def literal_kwargs(text: object) -> dict[str, Any]:
    """The literal values of a keyword-argument string such as RL Zoo's ``policy_kwargs`` (``"dict(a=1, b=[2])"``
    or ``"{'a': 1}"``), never evaluated: it is parsed (:mod:`ast`) and each value read with
    ``ast.literal_eval``; a value that is not a literal (``nn.ReLU``) is kept as its source text. A dict is
    returned as is; anything else (no keyword arguments, not Python, too long) gives ``{}``."""
    if isinstance(text, dict):
        return dict(text)
    if not isinstance(text, str) or len(text) > MAX_KWARGS_CHARS:
        return {}
    try:
        body = ast.parse(text.strip(), mode="eval").body
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return {}
    items: list[tuple[str | None, ast.expr]] = []
    if isinstance(body, ast.Call) and isinstance(body.func, ast.Name) and body.func.id == "dict" and not body.args:
        items = [(kw.arg, kw.value) for kw in body.keywords]
    elif isinstance(body, ast.Dict):
        items = [
            (k.value if isinstance(k, ast.Constant) and isinstance(k.value, str) else None, v)
            for k, v in zip(body.keys, body.values, strict=True)
        ]
    found: dict[str, Any] = {}
    for key, node in items:
        if key is None:
            continue
        try:
            found[key] = ast.literal_eval(node)
        except (ValueError, TypeError, SyntaxError, RecursionError, MemoryError):
            found[key] = ast.unparse(node)
    return found


def normalises_observations(config: dict[str, Any]) -> bool:
    """Whether RL Zoo's ``normalize`` setting wraps the env in a VecNormalize that normalises observations
    (``true``, or keyword arguments whose ``norm_obs`` is not false; VecNormalize's default is true)."""
    setting = config.get("normalize", False)
    if isinstance(setting, bool) or setting is None:
        return bool(setting)
    if isinstance(setting, str) and setting.strip().lower() in ("false", "true"):
        return setting.strip().lower() == "true"
    return bool(literal_kwargs(setting).get("norm_obs", True))


def atari_wrapper_kwargs(config: dict[str, Any], source: str) -> dict[str, Any]:
    """AtariWrapper's keyword arguments from ``config.yml``'s ``env_wrapper`` (a name, ``{name: kwargs}``, or a
    list of those), over :data:`ATARI_WRAPPER_DEFAULTS`; absent, the defaults. Any other wrapper is refused: the
    engine plays SB3 agents in the ``sb3_atari`` pipeline, which is AtariWrapper's chain."""
    setting = config.get("env_wrapper")
    entries = setting if isinstance(setting, list) else [] if setting is None else [setting]
    kwargs = dict(ATARI_WRAPPER_DEFAULTS)
    for entry in entries:
        if isinstance(entry, dict) and len(entry) == 1:
            name, given = next(iter(entry.items()))
        else:
            name, given = entry, None
        if name != ATARI_WRAPPER:
            raise HubError(
                f"{source}: env_wrapper {entry!r} is not SB3's AtariWrapper ({ATARI_WRAPPER}); the engine plays SB3 "
                "agents in AtariWrapper's pipeline (sb3_atari) only"
            )
        if given is not None and not isinstance(given, dict):
            raise HubError(f"{source}: AtariWrapper's arguments are {given!r}, not a mapping")
        unknown = sorted(set(given or {}) - set(ATARI_WRAPPER_DEFAULTS))
        if unknown:
            raise HubError(f"{source}: AtariWrapper has no argument {', '.join(unknown)} (it takes {ATARI_WRAPPER})")
        kwargs.update(given or {})
    return kwargs


# --- fetching --------------------------------------------------------------------------------------------------


def _import_hub(name: str):
    try:
        import huggingface_hub
        import huggingface_hub.constants
        import huggingface_hub.errors  # noqa: F401  (the submodules are attributes of the package once imported)
    except ImportError as exc:
        raise MissingDependencyError(
            f"{name} is on the Hugging Face Hub, which needs the package huggingface_hub ({exc}): pip install "
            "huggingface_hub (or the engine's [hub] extra: pip install 'atari-saliency-engine[hub]')"
        ) from None
    return huggingface_hub


def _read_record(path: Path) -> dict[str, Any]:
    """The repository's record (see the module's doc), or an empty one where there is none yet."""
    empty: dict[str, Any] = {"refs": {}, "commits": {}}
    if not path.is_file():
        return empty
    try:
        data = parse_json(path.read_bytes(), str(path), MAX_RECORD_BYTES)
    except OSError as exc:
        raise HubError(f"{path} cannot be read ({exc.strerror or exc}): delete it and load the agent again") from None
    if (
        not isinstance(data, dict)
        or not isinstance(data.get("refs"), dict)
        or not isinstance(data.get("commits"), dict)
    ):
        raise HubError(f"{path} is not the engine's record of a Hub download: delete it and load the agent again")
    return data


def _sha256(path: Path) -> str:
    try:
        return sha256_of(path)
    except OSError as exc:
        raise HubError(f"the cached file {path} cannot be read ({exc.strerror or exc})") from None


def git_blob_id(path: Path) -> str:
    """The id git (and so the Hub's listing) gives a file's contents: the sha1 of ``blob <size>\\0`` and the bytes.

    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     (Path(folder) / "empty").write_bytes(b"")
    ...     git_blob_id(Path(folder) / "empty")  # git hash-object /dev/null
    0
    'e69de29bb2d1d6434b8b29ae775ad8c2e48c5391'
    """
    try:
        data = path.read_bytes()  # files kept in git are small: the Hub moves large ones to LFS
    except OSError as exc:
        raise HubError(f"the cached file {path} cannot be read ({exc.strerror or exc})") from None
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _choose_files(name: str, repo_id: str, listing: list[str]) -> tuple[str, list[str]]:
    """The model zip and the files to download, from the repository's file list."""
    zips = sorted(f for f in listing if f.endswith(".zip") and "/" not in f and f not in NOT_MODELS)
    own = f"{repo_id.split('/', 1)[1]}.zip"
    if own in zips:
        model = own
    elif len(zips) == 1:
        model = zips[0]
    elif not zips:
        shown = ", ".join(sorted(listing)[:12]) + (" ..." if len(listing) > 12 else "")
        raise HubError(
            f"{name} holds no Atari agent: no model zip (<algo>-<env>.zip, as RL Zoo uploads with model.save) among "
            f"its files ({shown or 'none'}); choose an RL Zoo repository such as hf://sb3/ppo-BreakoutNoFrameskip-v4"
        )
    else:
        raise HubError(
            f"{name} holds several model zips ({', '.join(zips)}) and none is named {own}: the engine cannot tell "
            "which is the agent"
        )
    return model, [f for f in (CONFIG, ENV_KWARGS) if f in listing] + [model]


def _offline_reason(hf, allow_download: bool) -> str | None:
    if not allow_download:
        return "downloads are disabled (agent.allow_download=false)"
    if hf.constants.is_offline_mode():
        return "HF_HUB_OFFLINE is set"
    return None


def fetch_hub_agent(name: str, cache_dir: str | os.PathLike | None = None, allow_download: bool = True) -> HubAgent:
    """Fetch ``hf://<owner>/<name>[@<revision>]`` into the cache, check every file's sha256 and read its
    configuration (module docstring); raises :class:`HubError` (one line) or :class:`MissingDependencyError`."""
    repo_id, revision = parse_hub_name(name)
    shown = f"{HF_PREFIX}{repo_id}" + (f"@{revision}" if revision != "main" else "")
    hf = _import_hub(shown)
    from huggingface_hub import errors as hf_errors

    root = hub_cache(cache_dir)
    folder = repo_folder(root, repo_id)
    record_path = folder / RECORD_NAME
    record = _read_record(record_path)
    endpoint = hf.constants.ENDPOINT
    offline = _offline_reason(hf, allow_download)
    hub_sha: dict[str, str] = {}
    hub_blob: dict[str, str] = {}
    info = None
    if offline is None:
        try:
            info = hf.HfApi().model_info(repo_id, revision=revision, files_metadata=True, timeout=30)
        except hf_errors.RevisionNotFoundError:
            raise HubError(
                f"{shown}: the repository has no revision {revision!r} on the Hub ({endpoint}): check the name after @"
            ) from None
        except hf_errors.RepositoryNotFoundError:
            raise HubError(
                f"{shown}: no such repository on the Hub ({endpoint}; 404, or it is private or gated): check the name, "
                "e.g. hf://sb3/ppo-BreakoutNoFrameskip-v4"
            ) from None
        except hf_errors.HfHubHTTPError as exc:
            offline = f"the Hub ({endpoint}) answered {_status(exc)}"
        except (OSError, hf_errors.OfflineModeIsEnabled) as exc:
            offline = f"the Hub ({endpoint}) could not be reached ({type(exc).__name__}: {_one_line(exc)})"
        except Exception as exc:  # huggingface_hub's HTTP client raises its own network errors (httpx)
            if not _is_network_error(exc):
                raise
            offline = f"the Hub ({endpoint}) could not be reached ({type(exc).__name__}: {_one_line(exc)})"
    if offline is None and info is not None:
        commit = str(info.sha or "")
        if not _COMMIT.fullmatch(commit):
            raise HubError(f"{shown}: the Hub ({endpoint}) gave no commit for revision {revision!r} ({commit!r})")
        siblings = list(info.siblings or [])
        listing = [s.rfilename for s in siblings]
        hub_sha = {s.rfilename: s.lfs.sha256 for s in siblings if s.lfs is not None and s.lfs.sha256}
        # files kept in git itself (config.yml, env_kwargs.yml) are listed with their git blob id instead
        hub_blob = {s.rfilename: s.blob_id for s in siblings if s.lfs is None and s.blob_id}
        model, wanted = _choose_files(shown, repo_id, listing)
        vec_normalize = VEC_NORMALIZE in listing
    else:
        offline = offline or f"the Hub ({endpoint}) gave no answer"
        commit = revision if _COMMIT.fullmatch(revision) and revision in record["commits"] else ""
        commit = commit or str(record["refs"].get(revision, ""))
        entry = record["commits"].get(commit)
        if not isinstance(entry, dict):
            raise HubError(f"{shown} is not in the cache ({folder}) and {offline}: {_fix(offline)}")
        cached_files = entry.get("files")
        model, wanted = str(entry.get("model", "")), sorted(cached_files) if isinstance(cached_files, dict) else []
        vec_normalize = bool(entry.get("vec_normalize", False))
        if model not in wanted:
            raise HubError(f"{record_path} does not name the cached model: delete {folder} and load {shown} again")
        deliberate = offline.startswith(("HF_HUB_OFFLINE", "downloads are disabled"))
        (log.info if deliberate else log.warning)("%s; using the cached %s at commit %s", offline, shown, commit)
    entry = record["commits"].get(commit)
    recorded = entry.get("files") if isinstance(entry, dict) else None
    recorded = recorded if isinstance(recorded, dict) else {}
    files: dict[str, str] = {}

    def get(file: str) -> Path:
        """The file from the cache (downloaded if it is not there), its sha256 checked and kept in ``files``."""
        try:
            local = hf.hf_hub_download(
                repo_id,
                file,
                revision=commit,
                cache_dir=root,
                local_files_only=offline is not None,
                library_name="atari-saliency-engine",
            )
        except hf_errors.RemoteEntryNotFoundError:
            raise HubError(f"{shown}: the Hub ({endpoint}) has no file {file} at commit {commit} (404)") from None
        except hf_errors.LocalEntryNotFoundError:
            raise HubError(
                f"{shown}: {file} of commit {commit} is no longer in the cache ({folder}) and {offline}: "
                f"{_fix(offline or '')}"
            ) from None
        except hf_errors.HfHubHTTPError as exc:
            raise HubError(f"{shown}: downloading {file} from the Hub ({endpoint}) failed: {_status(exc)}") from None
        except Exception as exc:
            if not isinstance(exc, OSError) and not _is_network_error(exc):
                raise
            raise HubError(
                f"{shown}: downloading {file} from the Hub ({endpoint}) failed ({type(exc).__name__}: "
                f"{_one_line(exc)}): check the connection, or HF_ENDPOINT"
            ) from None
        path = Path(str(local))
        found = _sha256(path)
        expected = recorded.get(file)
        if expected is not None and found != expected:
            raise HubError(
                f"the cached {file} of {shown} ({path}) has sha256 {found}, but {expected} when it was downloaded: it "
                f"changed since (damaged or edited) and is not used; delete {folder} and load {shown} again to "
                "download it afresh"
            )
        if file in hub_sha and found != hub_sha[file]:
            raise HubError(
                f"{file} of {shown} ({path}) has sha256 {found}, but the Hub ({endpoint}) says {hub_sha[file]}: it is "
                f"damaged or not the Hub's file, and is not used; delete {folder} and load {shown} again"
            )
        blob = git_blob_id(path) if file in hub_blob else None
        if blob is not None and blob != hub_blob[file]:
            raise HubError(
                f"{file} of {shown} ({path}) has git blob id {blob}, but the Hub ({endpoint}) says "
                f"{hub_blob[file]}: it is damaged or not the Hub's file, and is not used; delete {folder} and load "
                f"{shown} again"
            )
        files[file] = found
        return path

    # the settings first: an agent they refuse is refused before its model is downloaded
    settings = _settings(shown, {f: get(f) for f in wanted if f != model}, vec_normalize)
    model_path = get(model)
    if offline is None:
        _write_record(record_path, record, revision, commit, model, files, vec_normalize)
    algorithm, env_id = _model_name(model)
    agent = HubAgent(
        name=shown,
        repo_id=repo_id,
        revision=revision,
        commit=commit,
        model=model_path,
        files=files,
        algorithm=algorithm,
        env_id=env_id,
        **settings,
    )
    _FETCHED[str(agent.model)] = agent
    _FETCHED[str(agent.model.resolve())] = agent
    return agent


def _write_record(
    path: Path, record: dict, revision: str, commit: str, model: str, files: dict[str, str], vec_normalize: bool
) -> None:
    """Add ``revision``'s commit and files to the repository's record. The record on disk is read again under a
    lock and added to, so that jobs fetching other revisions of the repository at the same time (a sweep's
    parallel jobs) keep each other's entries; ``record`` (read before the download) stands in where none is."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with _locked(path.with_name(path.name + ".lock")):
        current = _read_record(path) if path.is_file() else record
        record = dict(current, refs=dict(current["refs"]), commits=dict(current["commits"]))
        record["refs"][revision] = commit
        record["commits"][commit] = {"model": model, "files": files, "vec_normalize": vec_normalize}
        with atomic_write(path) as partial:
            partial.write_text(json.dumps(record, indent=1, sort_keys=True))


@contextmanager
def _locked(lock: Path) -> Iterator[None]:
    """An exclusive lock on the file ``lock`` (made if missing) between processes, where the system has ``fcntl``
    (POSIX); elsewhere nothing is locked."""
    try:
        import fcntl
    except ImportError:  # Windows
        yield
        return
    with open(lock, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _model_name(model: str) -> tuple[str | None, str | None]:
    """``(algorithm, env_id)`` of a model named ``<algo>-<env>.zip``, where it has that form."""
    stem = model.removesuffix(".zip")
    if "-" not in stem:
        return None, None
    algorithm, rest = stem.split("-", 1)
    return algorithm or None, rest if _ENV_ID.fullmatch(rest) else None


def _probability(value: object) -> bool:
    """Whether ``value`` is a number in [0, 1] (a bool is not)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and 0 <= value <= 1


def _settings(name: str, paths: dict[str, Path], vec_normalize: bool) -> dict[str, Any]:
    """The :class:`HubAgent` fields that ``config.yml`` and ``env_kwargs.yml`` (``paths``) give, read and checked."""
    config = read_config(paths[CONFIG].read_bytes(), f"{CONFIG} of {name}") if CONFIG in paths else {}
    env_kwargs = read_config(paths[ENV_KWARGS].read_bytes(), f"{ENV_KWARGS} of {name}") if ENV_KWARGS in paths else {}
    notes = []
    if normalises_observations(config):
        raise HubError(
            f"{name} was trained on observations normalised by VecNormalize (config.yml normalize: "
            f"{config.get('normalize')!r}), whose statistics are in {VEC_NORMALIZE}, a pickle the engine never loads: "
            "this agent cannot be explained faithfully, choose one trained without normalize"
        )
    if vec_normalize:
        notes.append(f"{VEC_NORMALIZE} was ignored (never downloaded): config.yml normalises no observations")
    if CONFIG not in paths:
        notes.append(f"it has no {CONFIG}: SB3's AtariWrapper defaults are assumed")
    wrapper = atari_wrapper_kwargs(config, f"{CONFIG} of {name}")
    frame_stack = config.get("frame_stack")
    if frame_stack is not None and (
        isinstance(frame_stack, bool) or not isinstance(frame_stack, int) or frame_stack < 1
    ):
        raise HubError(f"{CONFIG} of {name}: frame_stack is {frame_stack!r}, not a positive integer")
    options: dict[str, Any] = {}
    for key, option in _PLAY_OPTIONS.items():
        value = wrapper[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < _LEAST[key]:
            raise HubError(f"{CONFIG} of {name}: AtariWrapper's {key} is {value!r}, not an integer >= {_LEAST[key]}")
        if value != ATARI_WRAPPER_DEFAULTS[key]:
            options[option] = value
    sticky = wrapper["action_repeat_probability"]
    if not _probability(sticky):
        raise HubError(
            f"{CONFIG} of {name}: AtariWrapper's action_repeat_probability is {sticky!r}, not a probability in [0, 1]"
        )
    if sticky:
        options["repeat_action_probability"] = float(sticky)
        notes.append(f"AtariWrapper's action_repeat_probability={sticky} is played as ALE's repeat_action_probability")
    for key, value in env_kwargs.items():
        if key in _ENV_KWARGS_OPTIONS:
            if key == "repeat_action_probability" and not (value is None or _probability(value)):
                raise HubError(f"{ENV_KWARGS} of {name}: {key} is {value!r}, not a probability in [0, 1]")
            if key == "full_action_space" and not isinstance(value, bool):
                raise HubError(f"{ENV_KWARGS} of {name}: {key} is {value!r}, not true or false")
            options[key] = value
        else:
            notes.append(f"{ENV_KWARGS}'s {key}={value!r} is not a pipeline option and is not applied")
    if options:
        notes.append(
            f"it was trained with {options}: pass them to the rollout (rollout(agent, env_id, n, "
            "**agent.hub.pipeline_options)) to play its game as its training did"
        )
    return dict(
        frame_stack=frame_stack,
        wrapper_kwargs=wrapper,
        env_kwargs=env_kwargs,
        config=config,
        pipeline_options=options,
        notes=tuple(notes),
    )


def fetched_agent(path: str | os.PathLike) -> HubAgent | None:
    """The :class:`HubAgent` whose model is ``path``, where this process fetched it (else None)."""
    key = os.fspath(path)
    found = _FETCHED.get(key)
    if found is None:
        try:
            found = _FETCHED.get(str(Path(key).resolve()))
        except OSError:
            return None
    return found


def hub_env_id(name: str, path: str | os.PathLike | None = None) -> str | None:
    """The environment id the ``hf://`` agent ``name`` (its model at ``path``) was trained on, from its zip's name
    (``<algo>-<env>.zip``), where it has that form."""
    agent = fetched_agent(path) if path is not None else None
    if agent is not None:
        return agent.env_id
    return _model_name(Path(path).name)[1] if path is not None else None


def configure(policy: Policy, agent: HubAgent) -> Policy:
    """Check the loaded ``policy`` against its repository's configuration (the SB3 pipeline, ``frame_stack``,
    AtariWrapper's ``screen_size``), attach ``agent`` as ``policy.hub`` and log the notes; a mismatch is a
    :class:`HubError`."""
    if policy.pipeline != "sb3_atari":
        raise HubError(f"{agent.name}: its model is a {policy.pipeline} agent, not an SB3 one (RL Zoo's)")
    if agent.frame_stack is not None and agent.frame_stack != policy.frame_stack:
        raise HubError(
            f"{agent.name}: config.yml stacks {agent.frame_stack} frames but the model sees {policy.frame_stack} "
            f"channels ({tuple(policy.observation_shape)}): the repository's files do not fit each other"
        )
    size = agent.wrapper_kwargs["screen_size"]
    if tuple(policy.observation_shape[1:]) != (size, size):
        raise HubError(
            f"{agent.name}: AtariWrapper's screen_size is {size} but the model sees {tuple(policy.observation_shape)}"
        )
    setattr(policy, "hub", agent)  # noqa: B010 (a Policy is a protocol: nn.Module agents take new attributes)
    for note in agent.notes:
        log.warning("%s: %s", agent.name, note)
    return policy


def _fix(reason: str) -> str:
    if reason.startswith("HF_HUB_OFFLINE"):
        return _OFFLINE_FIX
    if reason.startswith("downloads are disabled"):
        return "allow downloads (agent.allow_download=true) to download it once"
    return "check the connection (or HF_ENDPOINT), then load it again"


def _status(exc: Exception) -> str:
    response = getattr(exc, "response", None)
    code = getattr(response, "status_code", None)
    return f"HTTP {code}" if code is not None else _one_line(exc)


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:300]


def _is_network_error(exc: BaseException) -> bool:
    """Whether ``exc`` is an HTTP client's network error (httpx's, which huggingface_hub uses, are no OSError)."""
    names = {cls.__name__ for cls in type(exc).__mro__}
    module = type(exc).__module__.split(".")[0]
    return module.startswith(("httpx", "httpcore", "requests", "urllib3")) or bool(
        names & {"TransportError", "NetworkError", "TimeoutException", "ConnectError", "ConnectionError"}
    )
