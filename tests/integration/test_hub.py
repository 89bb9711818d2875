"""Agents from the Hugging Face Hub (``hf://``, engine.policies.hub), against a local server that answers the Hub's
endpoints as huggingface_hub uses them, never the real Hub.

The server (a thread of this process) serves RL Zoo-like repositories: ``GET /api/models/<repo>/revision/<rev>``
(``model_info``: the commit and the file list, with the LFS sha256 of the zip) and ``HEAD``/``GET
/<repo>/resolve/<rev>/<file>`` with the headers ``hf_hub_download`` needs (``ETag``, ``X-Repo-Commit``,
``Content-Length``; 404s with the Hub's ``X-Error-Code``), and logs every request. huggingface_hub reads
``HF_ENDPOINT`` and ``HF_HUB_OFFLINE`` when it is imported, so each load runs in a subprocess with its environment
(:data:`SCRIPT`: a list of loads, one JSON result each). The model is a real SB3 PPO CnnPolicy zip written by
``model.save`` (tests/sb3_agents.py); ``config.yml`` is written as RL Zoo writes it, ``yaml.dump`` of an OrderedDict.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
from collections import OrderedDict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest
import yaml

pytest.importorskip("huggingface_hub")
pytest.importorskip("stable_baselines3")

from engine.core.errors import CheckpointError  # noqa: E402
from engine.policies import hub  # noqa: E402
from tests.sb3_agents import make_agent  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
REPO = "sb3/ppo-BreakoutNoFrameskip-v4"
NAME = f"hf://{REPO}"
MODEL = "ppo-BreakoutNoFrameskip-v4.zip"
COMMIT = "0123456789abcdef0123456789abcdef01234567"
MARKER = "pwned"  # the file a config.yml's os.system tag would create if it ran

# One process, several loads: argv[1] is a JSON list of {"name", "cache", "route" ("load", "resolve" or "job", with
# "env"), "compare" (a zip on disk whose outputs must equal)}; prints one line "RESULTS <json list>".
SCRIPT = """
import json, os, sys
if os.environ.get("BLOCK_HUB"):
    sys.modules["huggingface_hub"] = None  # as if the extra were not installed: importing it raises ImportError
import torch
from engine.core.errors import EngineError
from engine.policies.loading import load_policy
from engine.policies.registry import resolve_checkpoint, trained_game

def step(s):
    try:
        if s.get("route") == "resolve":  # as the app resolves agent.checkpoint, then loads the file
            policy = load_policy(resolve_checkpoint(s["name"], cache_dir=s["cache"]), device="cpu")
        elif s.get("route") == "job":  # the app's checks of a job: agent.checkpoint=hf://... on env.id
            from engine.jobs.config import JobConfig
            from engine.jobs.run import validate_job
            agent = {"checkpoint": s["name"], "cache_dir": s["cache"], "kind": "sb3", "allow_download": True}
            policy = validate_job(JobConfig.from_dict(dict(agent=agent, env={"id": s["env"]}, progress=False,
                                                           rollout={"steps": 4}, output={"dir": "."}))).agent
        else:
            policy = load_policy(s["name"], device="cpu", cache_dir=s["cache"])
    except EngineError as exc:
        return {"error": type(exc).__name__, "message": str(exc)}
    h = policy.hub
    trained = trained_game(s["name"], h.model)
    out = dict(files=h.files, commit=h.commit, model=str(h.model), env_id=h.env_id, frame_stack=policy.frame_stack,
               pipeline=policy.pipeline, options=h.pipeline_options, notes=list(h.notes),
               trained=[trained.env_id, trained.source] if trained else None)
    if s.get("compare"):
        ref = load_policy(s["compare"], device="cpu")
        obs = torch.rand((5, *policy.observation_shape), generator=torch.Generator().manual_seed(0))
        a, b = policy(obs, policy.initial_state(5)), ref(obs, ref.initial_state(5))
        out["equal"] = bool(torch.equal(a.logits, b.logits) and torch.equal(a.value, b.value))
    return out

print("RESULTS " + json.dumps([step(s) for s in json.loads(sys.argv[1])]))
"""


def rl_zoo_config(**changes) -> bytes:
    """config.yml as RL Zoo writes it: ``yaml.dump`` of an OrderedDict of the hyperparameters, sorted by name."""
    settings = dict(
        batch_size=256,
        clip_range="lin_0.1",
        ent_coef=0.01,
        env_wrapper=["stable_baselines3.common.atari_wrappers.AtariWrapper"],
        frame_stack=4,
        learning_rate="lin_2.5e-4",
        n_envs=8,
        n_epochs=4,
        n_steps=128,
        n_timesteps=10000000.0,
        policy="CnnPolicy",
        policy_kwargs="dict(ortho_init=False, activation_fn=nn.ReLU, net_arch=dict(pi=[], vf=[]))",
        vf_coef=0.5,
    )
    settings.update(changes)
    return yaml.dump(OrderedDict(sorted(settings.items()))).encode()


class FakeHub(ThreadingHTTPServer):
    """The Hub's endpoints for ``repos`` ({repo_id: {file: bytes}}, all at commit :data:`COMMIT`, revision
    ``main``); ``missing`` files are listed but answer 404, as a file deleted after the listing would."""

    daemon_threads = True

    def __init__(self, repos: dict[str, dict[str, bytes]], missing: set[tuple[str, str]]):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.repos, self.missing = repos, missing
        self.log: list[tuple[str, str]] = []
        self.lock = threading.Lock()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def requests(self) -> list[tuple[str, str]]:
        with self.lock:
            return list(self.log)

    def clear(self) -> None:
        with self.lock:
            self.log.clear()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: FakeHub

    def log_message(self, *args) -> None:  # quiet
        pass

    def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _answer(self) -> None:
        path = unquote(urlsplit(self.path).path)
        with self.server.lock:
            self.server.log.append((self.command, path))
        parts = path.strip("/").split("/")
        if parts[:2] == ["api", "models"] and len(parts) == 6 and parts[4] == "revision":
            return self._model_info("/".join(parts[2:4]), parts[5])
        if len(parts) >= 5 and parts[2] == "resolve":
            return self._resolve("/".join(parts[:2]), parts[3], "/".join(parts[4:]))
        self._send(404, b"not found")

    do_GET = do_HEAD = _answer

    def _repo(self, repo_id: str, revision: str) -> dict[str, bytes] | None:
        if repo_id not in self.server.repos:
            self._send(404, b"Repository not found", {"X-Error-Code": "RepoNotFound"})
            return None
        if revision not in ("main", COMMIT):
            self._send(404, b"Revision not found", {"X-Error-Code": "RevisionNotFound"})
            return None
        return self.server.repos[repo_id]

    def _model_info(self, repo_id: str, revision: str) -> None:
        files = self._repo(repo_id, revision)
        if files is None:
            return
        siblings = []
        for name, data in sorted(files.items()):
            blob_id = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()  # git's id of the contents
            sibling: dict = {"rfilename": name, "size": len(data), "blobId": blob_id}
            if name.endswith((".zip", ".pkl", ".mp4")):  # the Hub keeps binaries in LFS, with their sha256
                sibling["lfs"] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest(), "pointerSize": 134}
            siblings.append(sibling)
        body = json.dumps({"id": repo_id, "sha": COMMIT, "siblings": siblings}).encode()
        self._send(200, body, {"Content-Type": "application/json"})

    def _resolve(self, repo_id: str, revision: str, name: str) -> None:
        files = self._repo(repo_id, revision)
        if files is None:
            return
        if name not in files or (repo_id, name) in self.server.missing:
            self._send(404, b"Entry not found", {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": COMMIT})
            return
        data = files[name]
        lfs = name.endswith((".zip", ".pkl", ".mp4"))
        etag = hashlib.sha256(data).hexdigest() if lfs else hashlib.sha1(data).hexdigest()
        self._send(200, data, {"ETag": f'"{etag}"', "X-Repo-Commit": COMMIT, "Accept-Ranges": "bytes"})


@pytest.fixture(scope="module")
def model_zip(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("sb3") / MODEL
    make_agent("ppo", path)  # a PPO CnnPolicy on (4, 84, 84) uint8 images, saved by model.save
    return path


@pytest.fixture(scope="module")
def server(model_zip):
    model = model_zip.read_bytes()
    rl_zoo = {
        MODEL: model,
        "config.yml": rl_zoo_config(),
        "env_kwargs.yml": yaml.dump({}).encode(),
        "vec_normalize.pkl": b"\x80\x04cos\nsystem\n(S'touch pwned'\ntR.",  # a pickle that must never be loaded
        "README.md": b"# PPO Agent playing BreakoutNoFrameskip-v4\n",
        "replay.mp4": b"\x00" * 64,
        "train_eval_metrics.zip": b"PK\x05\x06" + b"\x00" * 18,
    }
    repos = {
        REPO: rl_zoo,
        "sb3/no-model": {k: v for k, v in rl_zoo.items() if k != MODEL},
        "sb3/ppo-PongNoFrameskip-v4": {"ppo-PongNoFrameskip-v4.zip": model, "config.yml": rl_zoo_config()},
        "sb3/a2c-PongNoFrameskip-v4": {
            "a2c-PongNoFrameskip-v4.zip": model,
            "config.yml": b"!!python/object/apply:os.system\n- touch " + MARKER.encode() + b"\n",
        },
        "sb3/ppo-SpaceInvadersNoFrameskip-v4": {
            "ppo-SpaceInvadersNoFrameskip-v4.zip": model,
            "config.yml": rl_zoo_config(normalize="{'norm_obs': True, 'norm_reward': False}"),
            "vec_normalize.pkl": b"not read",
        },
        "sb3/dqn-QbertNoFrameskip-v4": {"dqn-QbertNoFrameskip-v4.zip": model, "config.yml": rl_zoo_config()},
    }
    hub_server = FakeHub(repos, missing={("sb3/dqn-QbertNoFrameskip-v4", "dqn-QbertNoFrameskip-v4.zip")})
    thread = threading.Thread(target=hub_server.serve_forever, daemon=True)
    thread.start()
    yield hub_server
    hub_server.shutdown()
    hub_server.server_close()


def run(steps: list[dict], endpoint: str, cwd: Path, **env) -> list[dict]:
    """Run :data:`SCRIPT` on ``steps`` in a fresh Python with huggingface_hub's settings in its environment."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_"))}
    environ.update(
        HF_ENDPOINT=endpoint,
        HF_HOME=str(cwd / "hf_home"),
        HF_HUB_DISABLE_PROGRESS_BARS="1",
        HF_HUB_DISABLE_TELEMETRY="1",
        HF_HUB_DISABLE_XET="1",
        PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        **env,
    )
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, json.dumps(steps)],
        cwd=cwd,
        env=environ,
        capture_output=True,
        text=True,
        timeout=120,
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULTS ")]
    assert done.returncode == 0 and lines, f"the subprocess failed ({done.returncode}):\n{done.stderr[-3000:]}"
    results = json.loads(lines[-1].removeprefix("RESULTS "))
    for result in results:
        result["stderr"] = done.stderr
    return results


def closed_port_endpoint() -> str:
    """An address where nothing listens: the Hub as seen with the network down."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def one_line(result: dict, *fragments: str) -> None:
    assert "error" in result, f"expected a refusal, got {result}"
    message = result["message"]
    assert "\n" not in message, message
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"


@pytest.fixture(scope="module")
def downloaded(server, model_zip, tmp_path_factory):
    """The first load of hf://sb3/ppo-BreakoutNoFrameskip-v4 into an empty cache: (its result, the cache, the
    requests it made)."""
    work = tmp_path_factory.mktemp("hub")
    cache = work / "cache"
    server.clear()
    [result] = run([dict(name=NAME, cache=str(cache), compare=str(model_zip))], server.endpoint, work)
    return result, cache, server.requests()


def copy_cache(cache: Path, tmp_path: Path) -> Path:
    target = tmp_path / "cache"
    shutil.copytree(cache, target, symlinks=True)  # huggingface_hub's snapshots link to relative blobs
    return target


# --- download, cache, hashes -----------------------------------------------------------------------------------


def test_download_and_load(downloaded, server, model_zip):
    result, cache, requests = downloaded
    assert "error" not in result, result
    assert result["equal"]  # the same outputs as the zip loaded from disk
    assert result["pipeline"] == "sb3_atari" and result["frame_stack"] == 4 and result["options"] == {}
    assert result["env_id"] == "BreakoutNoFrameskip-v4" and result["trained"] == ["BreakoutNoFrameskip-v4", "hub"]
    assert result["commit"] == COMMIT
    served = server.repos[REPO]
    assert result["files"] == {
        f: hashlib.sha256(served[f]).hexdigest() for f in (MODEL, "config.yml", "env_kwargs.yml")
    }
    assert Path(result["model"]).is_relative_to(cache / "huggingface") and Path(result["model"]).name == MODEL
    # what was asked: the listing, then only the three files (vec_normalize.pkl, README, videos: never)
    downloads = sorted(p.rsplit("/", 1)[-1] for m, p in requests if m == "GET" and "/resolve/" in p)
    assert downloads == sorted([MODEL, "config.yml", "env_kwargs.yml"])
    assert not any("vec_normalize" in p for _, p in requests)
    assert any(n.startswith("vec_normalize.pkl was ignored") for n in result["notes"])
    record = json.loads(
        (cache / "huggingface" / "models--sb3--ppo-BreakoutNoFrameskip-v4" / hub.RECORD_NAME).read_text()
    )
    assert record["refs"] == {"main": COMMIT} and record["commits"][COMMIT]["files"] == result["files"]
    assert not (model_zip.parent / MARKER).exists()


def test_cache_hit(downloaded, server, tmp_path):
    first, cache, _ = downloaded
    cache = copy_cache(cache, tmp_path)
    server.clear()
    # the app's route (registry.resolve_checkpoint, then load_policy of the file): only the listing is asked
    [again] = run([dict(name=NAME, cache=str(cache), route="resolve")], server.endpoint, tmp_path)
    assert "error" not in again, again
    assert again["files"] == first["files"] and again["trained"] == ["BreakoutNoFrameskip-v4", "hub"]
    assert [p for m, p in server.requests() if "/resolve/" in p] == []
    assert [p for _, p in server.requests()] == [f"/api/models/{REPO}/revision/main"]
    # the Hub unreachable: the cached commit, checked, with a warning
    [down] = run([dict(name=NAME, cache=str(cache))], closed_port_endpoint(), tmp_path)
    assert "error" not in down, down
    assert down["files"] == first["files"] and "could not be reached" in down["stderr"]


def test_app_job(server, tmp_path):
    """agent.checkpoint=hf://... in a job: resolved, loaded and checked against env.id (the game in its name)."""
    pong = "hf://sb3/ppo-PongNoFrameskip-v4"
    cache = str(tmp_path / "cache")
    same, other = run(
        [
            dict(name=pong, cache=cache, route="job", env="PongNoFrameskip-v4"),
            dict(name=pong, cache=cache, route="job", env="BreakoutNoFrameskip-v4"),
        ],
        server.endpoint,
        tmp_path,
    )
    assert "error" not in same, same
    assert same["pipeline"] == "sb3_atari" and same["trained"] == ["PongNoFrameskip-v4", "hub"]
    one_line(other, pong, "was trained on Pong", "env=pong")


def _edit(cache: Path, name: str) -> Path:
    """Append bytes that leave the file readable (a YAML comment; after a zip's end), so that only its hash tells."""
    path = cache / "huggingface" / "models--sb3--ppo-BreakoutNoFrameskip-v4" / "snapshots" / COMMIT / name
    with open(path, "ab") as f:  # through the snapshot's link: the cached blob itself
        f.write(b"\n# edited\n" if name.endswith(".yml") else b"\x00")
    return path


def test_hash_mismatch(downloaded, server, tmp_path):
    cache = copy_cache(downloaded[1], tmp_path)
    _edit(cache, "config.yml")  # not in LFS: only the engine's record knows its sha256
    folder = cache / "huggingface" / "models--sb3--ppo-BreakoutNoFrameskip-v4"
    [online, offline] = run([dict(name=NAME, cache=str(cache))], server.endpoint, tmp_path) + run(
        [dict(name=NAME, cache=str(cache))], server.endpoint, tmp_path, HF_HUB_OFFLINE="1"
    )
    for result in (online, offline):
        assert result["error"] == "HubError"
        one_line(result, "the cached config.yml of hf://sb3/ppo-BreakoutNoFrameskip-v4", "changed since", str(folder))


def test_a_changed_file_kept_in_git_is_found_by_its_blob_id(downloaded, server, tmp_path):
    """config.yml is not in LFS, so the Hub lists no sha256 for it, but its git blob id: with the engine's own
    record gone, an edited cached copy is still found (and refused) while the Hub can be asked."""
    cache = copy_cache(downloaded[1], tmp_path)
    _edit(cache, "config.yml")
    folder = cache / "huggingface" / "models--sb3--ppo-BreakoutNoFrameskip-v4"
    (folder / hub.RECORD_NAME).unlink()
    [result] = run([dict(name=NAME, cache=str(cache))], server.endpoint, tmp_path)
    assert result.get("error") == "HubError", result
    one_line(result, "config.yml of hf://sb3/ppo-BreakoutNoFrameskip-v4", "git blob id", "but the Hub", str(folder))


def test_offline(downloaded, server, tmp_path):
    good = copy_cache(downloaded[1], tmp_path / "good")
    edited = copy_cache(downloaded[1], tmp_path / "edited")
    _edit(edited, MODEL)
    server.clear()
    empty, cached, changed = run(
        [
            dict(name=NAME, cache=str(tmp_path / "empty")),
            dict(name=NAME, cache=str(good)),
            dict(name=NAME, cache=str(edited)),
        ],
        server.endpoint,
        tmp_path,
        HF_HUB_OFFLINE="1",
    )
    one_line(empty, "hf://sb3/ppo-BreakoutNoFrameskip-v4 is not in the cache", "HF_HUB_OFFLINE is set", "unset")
    assert "error" not in cached, cached
    assert cached["files"] == downloaded[0]["files"] and cached["commit"] == COMMIT
    one_line(changed, f"the cached {MODEL}", "changed since")
    assert server.requests() == []  # offline: nothing asked


# --- refusals, each one line -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def refusals(server, tmp_path_factory):
    """The loads that must be refused, in one process (online): (name -> result, the folder it ran in, the
    requests they made)."""
    work = tmp_path_factory.mktemp("refused")
    names = [
        "hf://sb3/does-not-exist",
        f"{NAME}@v9",
        "hf://sb3/no-model",
        "hf://sb3/a2c-PongNoFrameskip-v4",
        "hf://sb3/ppo-SpaceInvadersNoFrameskip-v4",
        "hf://sb3/dqn-QbertNoFrameskip-v4",
    ]
    server.clear()
    results = run([dict(name=n, cache=str(work / "cache")) for n in names], server.endpoint, work)
    return dict(zip(names, results, strict=True)), work, server.requests()


@pytest.mark.parametrize(
    "name, fragments",
    [
        ("hf://sb3/does-not-exist", ["no such repository on the Hub", "404"]),
        (f"{NAME}@v9", ["has no revision 'v9'"]),
        ("hf://sb3/dqn-QbertNoFrameskip-v4", ["has no file dqn-QbertNoFrameskip-v4.zip", "404"]),
    ],
)
def test_404(refusals, name, fragments):
    result = refusals[0][name]
    assert result["error"] == "HubError"
    one_line(result, name, *fragments)


def test_repository_without_an_atari_model(refusals):
    result = refusals[0]["hf://sb3/no-model"]
    one_line(result, "holds no Atari agent", "no model zip", "config.yml")


def test_config_with_another_python_tag_is_refused_unrun(refusals):
    result, work = refusals[0]["hf://sb3/a2c-PongNoFrameskip-v4"], refusals[1]
    one_line(result, "config.yml of hf://sb3/a2c-PongNoFrameskip-v4", "python/object/apply:os.system", "nothing in it")
    assert not (work / MARKER).exists()
    assert not any(p.endswith("a2c-PongNoFrameskip-v4.zip") for _, p in refusals[2])  # refused before the model


def test_normalised_observations_are_refused(refusals):
    result = refusals[0]["hf://sb3/ppo-SpaceInvadersNoFrameskip-v4"]
    one_line(result, "normalised by VecNormalize", "vec_normalize.pkl", "never loads")
    assert not any("vec_normalize" in p or p.endswith(".zip") for _, p in refusals[2] if "SpaceInvaders" in p)


def test_missing_extra(server, tmp_path):
    [result] = run([dict(name=NAME, cache=str(tmp_path / "cache"))], server.endpoint, tmp_path, BLOCK_HUB="1")
    assert result["error"] == "MissingDependencyError"
    one_line(result, "needs the package huggingface_hub", "pip install huggingface_hub", "[hub]")


# --- the pieces, in this process (huggingface_hub is not imported by them) ---------------------------------------


def test_config_reader():
    config = hub.read_config(rl_zoo_config(), "config.yml")
    assert config["frame_stack"] == 4 and config["env_wrapper"] == [hub.ATARI_WRAPPER] and config["n_envs"] == 8
    assert hub.atari_wrapper_kwargs(config, "config.yml") == hub.ATARI_WRAPPER_DEFAULTS
    kwargs = {hub.ATARI_WRAPPER: {"terminal_on_life_loss": False, "frame_skip": 2}}
    wrapped = hub.read_config(rl_zoo_config(env_wrapper=[kwargs]), "config.yml")
    assert hub.atari_wrapper_kwargs(wrapped, "c")["frame_skip"] == 2
    for other in ("!!python/object/apply:subprocess.call [[ls]]", "a: !!python/name:os.system ''"):
        with pytest.raises(CheckpointError, match="not the YAML RL Zoo writes"):
            hub.read_config(other.encode(), "config.yml")
    with pytest.raises(CheckpointError, match="is not SB3's AtariWrapper"):
        hub.atari_wrapper_kwargs({"env_wrapper": "rl_zoo3.wrappers.HistoryWrapper"}, "config.yml")


def test_policy_kwargs_are_never_evaluated(tmp_path):
    text = f"dict(ortho_init=False, net_arch=[64], activation_fn=__import__('os').system('touch {tmp_path}/x'))"
    assert hub.literal_kwargs(text) == {
        "ortho_init": False,
        "net_arch": [64],
        "activation_fn": f"__import__('os').system('touch {tmp_path}/x')",
    }
    assert not (tmp_path / "x").exists()
    assert hub.literal_kwargs("{'norm_obs': False}") == {"norm_obs": False} and hub.literal_kwargs("os.system") == {}
    assert not hub.normalises_observations({"normalize": "{'norm_obs': False, 'norm_reward': True}"})
    assert hub.normalises_observations({"normalize": True}) and not hub.normalises_observations({})


@pytest.mark.parametrize("name", ["hf://sb3", "hf://a/b/c", "hf://sb3/../x", "hf://sb3/x@", "hf://sb3/a--b", "sb3/x"])
def test_bad_names(name):
    with pytest.raises(CheckpointError, match="not a Hugging Face Hub agent name"):
        hub.parse_hub_name(name)
    assert hub.parse_hub_name(f"{NAME}@{COMMIT}") == (REPO, COMMIT)


@pytest.mark.parametrize(
    "wrapper, env_kwargs, fragment",
    [
        ({"action_repeat_probability": "high"}, None, "action_repeat_probability is 'high', not a probability"),
        ({"action_repeat_probability": [1]}, None, r"action_repeat_probability is \[1\], not a probability"),
        ({"action_repeat_probability": 7.5}, None, "action_repeat_probability is 7.5, not a probability"),
        ({"frame_skip": 0}, None, "frame_skip is 0, not an integer >= 1"),
        ({"screen_size": 0}, None, "screen_size is 0, not an integer >= 1"),
        ({"noop_max": -1}, None, "noop_max is -1, not an integer >= 0"),
        (None, "repeat_action_probability: -3\n", "env_kwargs.yml of hf://x/y: repeat_action_probability is -3"),
        (None, "full_action_space: maybe\n", "full_action_space is 'maybe', not true or false"),
    ],
)
def test_play_settings_out_of_range_are_refused(tmp_path, wrapper, env_kwargs, fragment):
    """config.yml's AtariWrapper arguments and env_kwargs.yml are checked as they are read: a value the pipeline
    cannot play is one HubError line, never a traceback or an option passed on."""
    paths = {}
    if wrapper is not None:
        config = tmp_path / hub.CONFIG
        config.write_bytes(rl_zoo_config(env_wrapper=[{hub.ATARI_WRAPPER: wrapper}]))
        paths[hub.CONFIG] = config
    if env_kwargs is not None:
        kwargs = tmp_path / hub.ENV_KWARGS
        kwargs.write_text(env_kwargs)
        paths[hub.ENV_KWARGS] = kwargs
    with pytest.raises(hub.HubError, match=fragment):
        hub._settings("hf://x/y", paths, False)  # noqa: SLF001 (the reader fetch_hub_agent calls)
    good = tmp_path / "good.yml"
    good.write_bytes(rl_zoo_config(env_wrapper=[{hub.ATARI_WRAPPER: {"action_repeat_probability": 0.25}}]))
    options = hub._settings("hf://x/y", {hub.CONFIG: good}, False)["pipeline_options"]  # noqa: SLF001
    assert options == {"repeat_action_probability": 0.25}


def test_jobs_recording_other_revisions_at_once_keep_each_others_entries(tmp_path):
    """Each job reads the repository's record before its download and adds its revision after: written at once
    (threads standing in for a sweep's processes), every revision stays recorded."""
    path = tmp_path / "models--sb3--x" / hub.RECORD_NAME
    stale = {"refs": {}, "commits": {}}  # what each job read before the others wrote

    def record(i):
        hub._write_record(path, stale, f"v{i}", f"{i:040x}", "m.zip", {"m.zip": "0" * 64}, False)  # noqa: SLF001

    threads = [threading.Thread(target=record, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    written = json.loads(path.read_text())
    assert written["refs"] == {f"v{i}": f"{i:040x}" for i in range(16)} and len(written["commits"]) == 16
