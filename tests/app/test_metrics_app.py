"""metrics=... in the app: the faithfulness metrics land in summary.json (in-memory and store jobs give the same
numbers, the store job streaming chunk by chunk) and as scalar columns in the sweep's summary.csv."""

import json

import numpy as np
import pytest
import torch

from engine.cli.app import summary_columns, summary_rows
from engine.core.errors import EngineError
from engine.jobs.config import JobConfig
from engine.jobs.run import run_job
from engine.metrics.faithfulness import deletion_insertion, scalar_columns, temporal_stability
from engine.policies.loading import load_policy
from engine.policies.registry import resolve_checkpoint
from engine.storage.arrays import load_arrays

METRICS = {
    "deletion_insertion": True,
    "objects": True,
    "stability": True,
    "sanity": True,
    "steps": 4,
    "sanity_frames": 2,
    "sanity_window": 10,
}


def job(out_dir, **sections) -> JobConfig:
    data = {
        "agent": {"checkpoint": "builtin/pong"},
        "rollout": {"steps": 10},
        "saliency": {"density": 20},
        "output": {"dir": str(out_dir), "movie": False},
        "metrics": METRICS,
        "progress": False,
        "device": "cpu",
    }
    for key, value in sections.items():
        data[key] = {**data.get(key, {}), **value}
    return JobConfig.from_dict(data)


@pytest.fixture(scope="module")
def in_memory(tmp_path_factory):
    """The job without ``store.rollout``: its output directory, summary and the (rollout, saliency) store roots it
    scored with."""
    from engine.jobs import game as job_module

    out, roots, record_and_score = tmp_path_factory.mktemp("job"), [], job_module.record_and_score
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(  # (config, prepared, rollout_root, saliency_root, ...): the memory stores of the job
            job_module,
            "record_and_score",
            lambda *args, **kwargs: (roots.append(args[2:4]), record_and_score(*args, **kwargs))[1],
        )
        run_job(job(out))
    return out, json.loads((out / "summary.json").read_text()), roots


def test_summary_holds_the_metrics_of_the_job(in_memory):
    out, summary, _ = in_memory
    metrics = summary["metrics"]
    arrays, _ = load_arrays(out / "rollout.npz")
    maps, _ = load_arrays(out / "saliency.npz")
    agent = load_policy(resolve_checkpoint("builtin/pong", [], allow_download=False), device="cpu")
    states = tuple(torch.from_numpy(arrays[f"state_{i}"]) for i in range(2))
    direct = deletion_insertion(
        agent,
        torch.from_numpy(arrays["observations"]),
        states,
        torch.from_numpy(maps["actor"]),
        torch.from_numpy(arrays["actions"]),
        steps=4,
    )
    for key, values in direct.aucs().items():
        assert metrics["actor"][f"{key}_auc"] == pytest.approx(float(values.double().mean()), rel=1e-9)
    assert len(metrics["actor"]["deletion_kl_curve"]) == 5 and metrics["actor"]["deletion_kl_curve"][0] == 0
    rho = temporal_stability(torch.from_numpy(maps["critic"]), arrays["dones"])
    assert metrics["critic"]["stability_temporal"] == pytest.approx(float(rho[~rho.isnan()].mean()), rel=1e-12)
    assert 0 < metrics["actor"]["objects_area"] < 0.1 and 0 <= metrics["actor"]["pointing"] <= 1
    assert metrics["random"]["deletion_kl_auc"] >= 0 and metrics["frames"] == 10
    sanity = metrics["sanity"]
    assert sanity["frames"] == [0, 9] and sanity["stages"][0] == ["critic_linear", "actor_linear"]
    assert isinstance(sanity["actor_flagged"], bool) and -1 <= sanity["actor_spearman_all"] <= 1


def test_the_store_job_streams_the_same_metrics_and_maps(in_memory, tmp_path, monkeypatch):
    """The job on disk stores and the in-memory job (the same path, its stores in memory) give the same arrays
    bit for bit and the same metrics."""
    from engine.metrics import faithfulness as core_metrics
    from engine.storage.keys import is_memory
    from engine.storage.store import RolloutStore, SaliencyStore

    chunks = []
    original = core_metrics.MetricsSummary.update
    monkeypatch.setattr(
        core_metrics.MetricsSummary,
        "update",
        lambda self, agent, obs, *a, **k: (chunks.append(len(obs)), original(self, agent, obs, *a, **k)),
    )
    run_job(job(tmp_path / "run", store={"rollout": str(tmp_path / "rollout_store"), "frames_per_chunk": 4}))
    streamed = json.loads((tmp_path / "run" / "summary.json").read_text())["metrics"]
    assert chunks == [4, 4, 2]
    out, summary, (roots,) = in_memory
    for kind in ("actor", "critic", "random"):
        for key, value in summary["metrics"][kind].items():
            assert streamed[kind][key] == pytest.approx(value, rel=1e-6, abs=1e-9), (kind, key)
    assert streamed["sanity"]["actor_spearman_all"] == pytest.approx(
        summary["metrics"]["sanity"]["actor_spearman_all"], rel=1e-6
    )
    assert all(is_memory(root) for root in roots) and not [p for p in out.iterdir() if p.is_dir()]
    maps, _ = load_arrays(out / "saliency.npz")
    stored = SaliencyStore.open(tmp_path / "run" / "saliency_store").read()
    assert maps.keys() == stored.keys() and all(np.array_equal(maps[k], stored[k]) for k in maps)
    played, _ = load_arrays(out / "rollout.npz")
    recorded = RolloutStore.open(tmp_path / "rollout_store").store.read_range(0, 10)
    assert played.keys() == recorded.keys() and all(np.array_equal(played[k], recorded[k]) for k in played)


def test_sweep_summary_gets_scalar_metric_columns(in_memory, tmp_path):
    out, summary, _ = in_memory
    (tmp_path / "0").mkdir()
    (tmp_path / "0" / "summary.json").write_text(json.dumps(summary))
    rows = summary_rows(tmp_path)
    assert rows[0]["metrics_actor_deletion_kl_auc"] == summary["metrics"]["actor"]["deletion_kl_auc"]
    assert rows[0]["metrics_sanity_actor_flagged"] == summary["metrics"]["sanity"]["actor_flagged"]
    assert "metrics_actor_deletion_kl_curve" not in rows[0]  # curves stay in summary.json
    assert summary_columns(rows)[-1].startswith("metrics_") and scalar_columns({}) == {}


def test_metrics_are_off_by_default_and_checked(tmp_path):
    assert JobConfig().metrics.deletion_insertion is False and not JobConfig().metrics.sanity
    with pytest.raises(EngineError, match="metrics.steps must be in"):
        job(tmp_path, metrics={"steps": 0})
    with pytest.raises(EngineError, match="metrics.kinds must name maps"):
        job(tmp_path, metrics={"kinds": ["policy"]})


def test_curves_of_every_nth_frame_are_those_frames_curves(in_memory, tmp_path):
    """metrics.curve_every=3 on a store job scored 4 frames a chunk: the deletion/insertion AUCs are the means over
    frames 0, 3, 6 and 9 of the rollout (whatever chunk holds them), the other metrics still over every frame."""
    run_job(
        job(
            tmp_path / "run",
            store={"rollout": str(tmp_path / "rollout_store"), "frames_per_chunk": 4},
            metrics={"curve_every": 3, "sanity": False},
        )
    )
    metrics = json.loads((tmp_path / "run" / "summary.json").read_text())["metrics"]
    arrays, _ = load_arrays(in_memory[0] / "rollout.npz")
    maps, _ = load_arrays(in_memory[0] / "saliency.npz")
    agent = load_policy(resolve_checkpoint("builtin/pong", [], allow_download=False), device="cpu")
    rows = [0, 3, 6, 9]
    states = tuple(torch.from_numpy(arrays[f"state_{i}"])[rows] for i in range(2))
    direct = deletion_insertion(
        agent,
        torch.from_numpy(arrays["observations"])[rows],
        states,
        torch.from_numpy(maps["actor"])[rows],
        torch.from_numpy(arrays["actions"])[rows],
        steps=4,
    )
    for key, values in direct.aucs().items():
        assert metrics["actor"][f"{key}_auc"] == pytest.approx(float(values.double().mean()), rel=1e-6), key
    every = in_memory[1]["metrics"]
    assert metrics["critic"]["stability_temporal"] == pytest.approx(every["critic"]["stability_temporal"], rel=1e-6)
    assert metrics["frames"] == 10
    with pytest.raises(Exception, match="metrics.curve_every must be an integer >= 1"):
        job(tmp_path / "bad", metrics={"curve_every": 0})


def test_interrupted_metrics_go_on_after_the_chunks_they_had_added(tmp_path, monkeypatch, caplog):
    """A store job stopped (Ctrl-C) while its metrics add chunk 1 of 3: run again, it adds chunks 1 and 2 only and
    its metrics equal an uninterrupted job's to the bit; run once more, it adds none. Other metrics settings, or a
    damaged file of them, start from the first chunk."""
    from engine.metrics.faithfulness import MetricsSummary

    game = {"rollout": str(tmp_path / "rollout_store"), "frames_per_chunk": 4}
    metrics = {"sanity": False}

    def without_timing(summary_path):
        result = json.loads(summary_path.read_text())["metrics"]
        return {k: v for k, v in result.items() if k != "seconds_per_frame"}

    run_job(job(tmp_path / "whole", store=game, metrics=metrics))
    whole = without_timing(tmp_path / "whole" / "summary.json")

    added, update = [], MetricsSummary.update

    def counted(self, *args, first=0, **kwargs):
        added.append(args[-1] if len(args) >= 7 else first)
        if stop_at is not None and len(added) == stop_at:
            raise KeyboardInterrupt
        return update(self, *args, **kwargs) if len(args) >= 7 else update(self, *args, first=first, **kwargs)

    monkeypatch.setattr(MetricsSummary, "update", counted)
    stop_at = 2
    with pytest.raises(KeyboardInterrupt):
        run_job(job(tmp_path / "cut", store=game, metrics=metrics))
    assert added == [0, 4] and (tmp_path / "cut" / ".saliency_store.metrics.pt").is_file()
    stop_at, added[:] = None, []
    run_job(job(tmp_path / "cut", store=game, metrics=metrics))
    assert added == [4, 8] and without_timing(tmp_path / "cut" / "summary.json") == whole
    added.clear()
    run_job(job(tmp_path / "cut", store=game, metrics=metrics))
    assert added == [] and without_timing(tmp_path / "cut" / "summary.json") == whole
    # other settings: from the first chunk (and the file is theirs from then on)
    run_job(job(tmp_path / "cut", store=game, metrics={**metrics, "steps": 3}))
    assert added == [0, 4, 8]
    (tmp_path / "cut" / ".saliency_store.metrics.pt").write_bytes(b"not a torch file")
    added.clear()
    with caplog.at_level("WARNING"):
        run_job(job(tmp_path / "cut", store=game, metrics=metrics))
    assert added == [0, 4, 8] and without_timing(tmp_path / "cut" / "summary.json") == whole
    assert "is unreadable" in caplog.text


def test_shards_leave_the_metrics_to_the_job_that_completes_the_store(tmp_path):
    """Shard 0 of 2 (its chunks only: the store incomplete) writes no metrics; shard 1 completes the store, and its
    metrics are those of the whole store."""
    game = {"rollout": str(tmp_path / "rollout_store"), "frames_per_chunk": 4}
    metrics = {"sanity": False}
    run_job(job(tmp_path / "whole", store=game, metrics=metrics))
    shared = str(tmp_path / "shared_saliency")
    for shard in (0, 1):
        run_job(
            job(
                tmp_path / f"shard{shard}",
                store={**game, "saliency": shared, "shard": shard, "num_shards": 2},
                metrics=metrics,
            )
        )
    first = json.loads((tmp_path / "shard0" / "summary.json").read_text())
    last = json.loads((tmp_path / "shard1" / "summary.json").read_text())
    whole = json.loads((tmp_path / "whole" / "summary.json").read_text())["metrics"]
    assert "metrics" not in first and not first["complete"]
    assert {k: v for k, v in last["metrics"].items() if k != "seconds_per_frame"} == {
        k: v for k, v in whole.items() if k != "seconds_per_frame"
    }


def test_metrics_that_cannot_be_kept_are_computed_all_the_same(tmp_path, monkeypatch, caplog):
    """A write of their progress that fails (torch.save raises RuntimeError on a full disk): one warning, and the
    job ends with its metrics, those of a job that kept them."""
    from engine.jobs import metrics_state

    game = {"rollout": str(tmp_path / "rollout_store"), "frames_per_chunk": 4}
    run_job(job(tmp_path / "kept", store=game, metrics={"sanity": False}))

    def full_disk(*args, **kwargs):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 4864 vs 4792")

    monkeypatch.setattr(metrics_state.torch, "save", full_disk)
    with caplog.at_level("WARNING"):
        run_job(job(tmp_path / "full", store=game, metrics={"sanity": False}))
    assert "metrics: cannot keep their progress" in caplog.text and caplog.text.count("cannot keep") == 1
    kept, full = (json.loads((tmp_path / d / "summary.json").read_text())["metrics"] for d in ("kept", "full"))
    assert {k: v for k, v in full.items() if k != "seconds_per_frame"} == {
        k: v for k, v in kept.items() if k != "seconds_per_frame"
    }
