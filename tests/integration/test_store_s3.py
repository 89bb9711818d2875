"""The stores on object storage (S3 through fsspec), against moto's S3 server on loopback: record, shard, resume,
refuse to mix, name and recompute a corrupt chunk, never adopt objects without a manifest, open with xarray, fail with
one line (library and command line) where no credentials are found.

Not tested here because it does not hold on S3: creation is not atomic against a concurrent creator (docs/stores.md)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("moto.server", reason="moto's S3 server is not installed: pip install 'moto[server]' s3fs")
s3fs = pytest.importorskip("s3fs", reason="s3fs is not installed: pip install 'moto[server]' s3fs")

from engine.core.errors import EngineError  # noqa: E402
from engine.core.settings import SaliencyConfig  # noqa: E402
from engine.jobs.record import record_rollout  # noqa: E402
from engine.jobs.score import score_store  # noqa: E402
from engine.policies.greydanus2017 import load_agent  # noqa: E402
from engine.policies.registry import resolve_checkpoint  # noqa: E402
from engine.storage.keys import store_exists  # noqa: E402
from engine.storage.layout import FORMAT  # noqa: E402
from engine.storage.store import RolloutStore, SaliencyStore, StoreIntegrityError, StoreMismatchError  # noqa: E402
from tests.conftest import ROOT  # noqa: E402

STEPS, SETTINGS, SHA = 20, SaliencyConfig(density=20), "c" * 64


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """A bucket on moto's S3 server (127.0.0.1, a free port) and the fsspec options that reach it."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    options = {
        "key": "testing",
        "secret": "testing",
        "client_kwargs": {"endpoint_url": f"http://{host}:{port}", "region_name": "us-east-1"},
    }
    import boto3

    boto3.client(
        "s3",
        endpoint_url=f"http://{host}:{port}",
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    ).create_bucket(Bucket="saliency-test")
    fs = s3fs.S3FileSystem(**options)
    try:
        yield fs, options
    finally:
        server.stop()


@pytest.fixture(scope="module")
def agent():
    return load_agent(resolve_checkpoint("builtin/pong", [], allow_download=False), device="cpu")


@pytest.fixture(scope="module")
def local(agent, tmp_path_factory):
    """The same game and maps on a local path, for comparison."""
    base = tmp_path_factory.mktemp("local")
    rollout = record_rollout(agent, "Pong-v4", STEPS, base / "r", seed=1, chunk_steps=8, checkpoint_sha256=SHA)
    return rollout.read(), score_store(agent, base / "r", base / "s", SETTINGS, SHA, frames_per_chunk=4).read()


@pytest.fixture(scope="module")
def game(agent, s3):
    fs, options = s3
    url = "s3://saliency-test/game"
    record_rollout(agent, "Pong-v4", STEPS, url, seed=1, chunk_steps=8, checkpoint_sha256=SHA, storage_options=options)
    return url


def equal_maps(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_recording_on_s3_equals_a_local_one_and_resumes(agent, s3, game, local):
    fs, options = s3
    assert store_exists(game, options) and fs.exists("saliency-test/game/frames/c/2/0/0/0")
    back = RolloutStore.open(game, options).read()
    for name in ("frames", "observations", "logits", "values", "actions", "rewards", "dones"):
        assert np.array_equal(getattr(back, name).numpy(), getattr(local[0], name).numpy()), name
    assert all(np.array_equal(a.numpy(), b.numpy()) for a, b in zip(back.states, local[0].states))
    # as if killed in chunk 1: its marker and frames gone; the next run re-records from there
    fs.rm("saliency-test/game/complete/c/1", recursive=True)
    fs.rm("saliency-test/game/frames/c/1", recursive=True)
    assert RolloutStore.open(game, options).completed_chunks() == 1
    again = record_rollout(
        agent, "Pong-v4", STEPS, game, seed=1, chunk_steps=8, checkpoint_sha256=SHA, storage_options=options
    )
    assert again.complete and np.array_equal(again.read().frames.numpy(), local[0].frames.numpy())


def test_shards_fill_one_s3_store_and_the_union_equals_a_local_run(agent, s3, game, local):
    fs, options = s3
    url = "s3://saliency-test/maps"
    first = score_store(
        agent, game, url, SETTINGS, SHA, frames_per_chunk=4, shard=1, num_shards=2, storage_options=options
    )
    assert first.missing() == [0, 2, 4]
    union = score_store(
        agent, game, url, SETTINGS, SHA, frames_per_chunk=4, shard=0, num_shards=2, storage_options=options
    )
    assert union.complete and equal_maps(union.read(), local[1])
    with pytest.raises(StoreMismatchError, match="saliency.density: store has 20, this job 10"):
        score_store(agent, game, url, SaliencyConfig(density=10), SHA, frames_per_chunk=4, storage_options=options)


def test_corrupt_chunk_on_s3_is_named_and_recomputed(agent, s3, game, local):
    fs, options = s3
    url = "s3://saliency-test/corrupt"
    score_store(agent, game, url, SETTINGS, SHA, frames_per_chunk=4, storage_options=options)
    key = "saliency-test/corrupt/actor/c/2/0/0"
    data = bytearray(fs.cat(key))
    data[len(data) // 3] ^= 0x10
    fs.pipe(key, bytes(data))
    with pytest.raises(StoreIntegrityError, match=r"chunk 2 \(steps 8\.\.11\) of 'actor' is damaged \(.*checksum"):
        SaliencyStore.open(url, options).read()
    assert SaliencyStore.open(url, options).missing() == [2]
    again = score_store(agent, game, url, SETTINGS, SHA, frames_per_chunk=4, storage_options=options)
    assert again.complete and equal_maps(again.read(), local[1])


def test_objects_without_a_manifest_are_never_adopted(agent, s3, game):
    fs, options = s3
    url = "s3://saliency-test/orphan"
    score_store(agent, game, url, SETTINGS, SHA, frames_per_chunk=4, storage_options=options)
    fs.rm("saliency-test/orphan/zarr.json")
    fs.invalidate_cache()
    with pytest.raises(EngineError, match="holds objects but no store manifest"):
        score_store(
            agent,
            game,
            url,
            SaliencyConfig(density=20, radius=3),
            "d" * 64,
            frames_per_chunk=4,
            storage_options=options,
        )


def test_xarray_opens_an_s3_store(s3, game, local):
    xr = pytest.importorskip("xarray", reason="xarray is not installed (pip install xarray)")
    fs, options = s3
    ds = xr.open_zarr(game, storage_options=options)
    assert ds["frames"].dims == ("step", "frame_y", "frame_x", "frame_rgb") and ds.sizes["step"] == STEPS
    assert ds.attrs["manifest"]["identity"]["seed"] == 1
    assert np.array_equal(ds["observations"][8:16].values, local[0].observations[8:16].numpy())
    assert json.loads(fs.cat("saliency-test/game/zarr.json"))["attributes"]["manifest"]["format"] == FORMAT


def without_credentials(tmp_path) -> dict[str, str]:
    """The environment with no AWS credentials anywhere botocore looks (variables, files, instance metadata)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(
        AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "no-credentials"),
        AWS_CONFIG_FILE=str(tmp_path / "no-config"),
        AWS_EC2_METADATA_DISABLED="true",
    )
    return env


def test_a_store_without_credentials_fails_with_one_line(agent, s3, game, tmp_path, monkeypatch):
    """botocore's NoCredentialsError (a traceback) became one line naming the store and how to give credentials."""
    fs, options = s3
    monkeypatch.setattr(os, "environ", without_credentials(tmp_path))
    no_keys = {"client_kwargs": options["client_kwargs"]}
    for job in (
        lambda: record_rollout(agent, "Pong-v4", STEPS, "s3://saliency-test/no-keys", storage_options=no_keys),
        lambda: SaliencyStore.open("s3://saliency-test/corrupt", no_keys),
        lambda: score_store(agent, game, "s3://saliency-test/no-keys-maps", SETTINGS, SHA, storage_options=no_keys),
    ):
        with pytest.raises(EngineError) as caught:
            job()
        message = str(caught.value)
        assert "\n" not in message and "s3://saliency-test/" in message and "credentials" in message, message
        assert "AWS_ACCESS_KEY_ID" in message


def test_the_command_line_without_credentials_says_so_in_one_line(s3, tmp_path):
    fs, options = s3
    env = without_credentials(tmp_path)
    env.update(AWS_ENDPOINT_URL=options["client_kwargs"]["endpoint_url"], AWS_DEFAULT_REGION="us-east-1")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "engine",
            "agent.checkpoint=builtin/pong",
            "rollout.steps=4",
            "saliency.density=20",
            "output.movie=false",
            f"output.dir={tmp_path / 'out'}",
            "store.rollout=s3://saliency-test/cli-no-keys",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert lines[-1].startswith("error: ") and "credentials" in lines[-1], result.stderr[-3000:]


def test_credentials_that_expire_mid_run_stop_it_with_one_line_and_the_rerun_resumes(agent, s3, local, monkeypatch):
    """The credentials stop working while chunk 1 is written: one line naming the store, the fix and that the
    chunks written are kept; with credentials back, the same call finishes the store as an uninterrupted run."""
    from botocore.exceptions import NoCredentialsError

    from engine.storage.keys import Keys

    fs, options = s3
    url = "s3://saliency-test/expiring"
    real_set = Keys.set

    async def expired_from_chunk_1(self, key, value):
        if "/c/1/" in f"/{key}":
            raise NoCredentialsError()
        return await real_set(self, key, value)

    monkeypatch.setattr(Keys, "set", expired_from_chunk_1)
    with pytest.raises(EngineError) as caught:
        record_rollout(
            agent, "Pong-v4", STEPS, url, seed=1, chunk_steps=8, checkpoint_sha256=SHA, storage_options=options
        )
    message = str(caught.value)
    assert "\n" not in message and url in message and "AWS_ACCESS_KEY_ID" in message, message
    assert "chunks written so far are kept" in message and "resume" in message
    monkeypatch.undo()
    assert RolloutStore.open(url, options).completed_chunks() == 1
    again = record_rollout(
        agent, "Pong-v4", STEPS, url, seed=1, chunk_steps=8, checkpoint_sha256=SHA, storage_options=options
    )
    assert again.complete and np.array_equal(again.read().frames.numpy(), local[0].frames.numpy())
