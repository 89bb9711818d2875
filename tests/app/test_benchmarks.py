"""The benchmark scripts stay runnable: interleaved timing (on a fake clock, so no test depends on the speed of
the machine), and a tiny suite run into a temporary results file."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from benchmarks import common
from benchmarks.common import best_of, best_of_interleaved, roofline_share
from engine.core.batching import padded_row_count
from engine.core.masks import perturbation_masks
from engine.core.perturbation import incremental_plan
from engine.policies.greydanus2017 import ActorCritic

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def fake_clock(monkeypatch):
    """time.perf_counter as the benchmark helpers see it, advanced only by the functions they time."""
    now = [0.0]
    monkeypatch.setattr(common.time, "perf_counter", lambda: now[0])

    def taking(calls: list, name: str, durations: list[float]):
        left = iter(durations)

        def fn():
            calls.append(name)
            now[0] += next(left)

        return fn

    return taking


def test_best_of_interleaved_keeps_each_methods_shortest_timed_round(fake_clock):
    calls = []
    # the first duration of each is the untimed warm-up round: b's (0.1) must not count
    a = fake_clock(calls, "a", [9.0, 3.0, 5.0, 2.0])
    b = fake_clock(calls, "b", [0.1, 4.0, 0.5, 6.0])
    best = best_of_interleaved(3, {"a": a, "b": b})
    assert calls == ["a", "b"] * 4  # one warm-up round, then 3 rounds, alternating
    assert best == {"a": 2.0, "b": 0.5}


def test_best_of_skips_the_warmup_unless_told(fake_clock):
    calls = []
    assert best_of(3, fake_clock(calls, "f", [0.25, 4.0, 1.5, 2.0])) == 1.5
    assert best_of(2, fake_clock(calls, "g", [0.25, 4.0]), warmup=False) == 0.25
    assert calls == ["f"] * 4 + ["g"] * 2


def baby_a3c_forward_flops(inputs: int, actions: int = 6) -> int:
    """FLOPs (2 per multiply-add) of baby-a3c's GRU agent on ``inputs`` 80x80 inputs: 4 convolutions 3x3,
    stride 2, 32 channels (80 -> 40 -> 20 -> 10 -> 5), a GRU cell 800 -> 256, actor and critic heads."""
    convs = sum(side * side * 32 * cin * 9 for side, cin in ((40, 1), (20, 32), (10, 32), (5, 32)))
    gru = 3 * 256 * (32 * 5 * 5) + 3 * 256 * 256
    heads = 256 * (actions + 1)
    return 2 * inputs * (convs + gru + heads)


def test_a_speed_figures_roofline_share_by_hand():
    """baby-a3c's plain pass, 2 frames at density 20 (16 masks): 2 frames/s are 32 perturbed inputs/s of the
    FLOPs counted by hand; with a bandwidth too large to bind, the share is their FLOP/s over the FLOP peak."""
    agent = ActorCritic(6, "gru")
    per_input = baby_a3c_forward_flops(1)
    share = roofline_share(agent, False, 5, 20, 2.0, 2, (1e9, 1e30))
    assert share["plan"] == "plain" and share["flops_per_input"] == per_input
    assert share["roofline_fraction"] == pytest.approx(round(32 * per_input / 1e9, 4))
    # memory bound: the bound is intensity * bandwidth, so halving the bandwidth doubles the share
    low = roofline_share(agent, False, 5, 20, 2.0, 2, (1e30, 1e6))
    assert roofline_share(agent, False, 5, 20, 2.0, 2, (1e30, 5e5))["roofline_fraction"] == pytest.approx(
        2 * low["roofline_fraction"], rel=1e-3
    )
    # "auto" is the plan the engine runs: windows here, fewer FLOPs per input than the plain pass
    masks = perturbation_masks(5, 5, "cpu", torch.float32, (80, 80))
    auto = roofline_share(agent, "auto", 5, 5, 2.0, 2, (1e9, 1e30))
    assert incremental_plan(agent, masks, "auto") is not None and auto["plan"] == "incremental"
    assert auto["flops_per_input"] < per_input


def test_tiny_suite_run_appends_a_result(tmp_path, pong_checkpoint):
    results = tmp_path / "suite.jsonl"
    command = [
        sys.executable,
        "benchmarks/suite.py",
        f"checkpoint='{pong_checkpoint}'",
        "density=20",
        "frames=2",
        "warmup_steps=2",
        "repeats=1",
        "methods=[engine,plain,bare,reference]",
        f"results_file={results}",
        f"hydra.run.dir={tmp_path / 'run'}",
    ]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    (run,) = [json.loads(line) for line in results.read_text().splitlines()]
    assert (run["density"], run["radius"], run["frames"], run["dtype"]) == (20, 5, 2, "float32")
    assert set(run["seconds_per_frame"]) == {"engine", "plain", "bare_forward", "reference"}
    assert all(run["frames_per_second"][m] == pytest.approx(1 / s) for m, s in run["seconds_per_frame"].items())
    assert run["masks_per_frame"] == 16  # centres 0, 20, 40, 60 on each axis
    # one frame's forward pass: the unperturbed input and its 16 perturbed copies, in a batch the agent pads to
    # 24 rows (a frame's outputs must not depend on its batch: tests/unit/test_batching.py)
    assert padded_row_count(16 + 1) == 24 and run["forward_flops_per_frame"] == baby_a3c_forward_flops(24)
    assert run["speedup_vs_reference"]["reference"] == 1.0
    ratio = run["seconds_per_frame"]["plain"] / run["seconds_per_frame"]["engine"]
    assert run["incremental_speedup_over_plain"] == pytest.approx(ratio)
    assert json.loads((tmp_path / "run" / "result.json").read_text()) == run
    # each saliency figure's share of the roofline, against the peaks the run measured
    assert run["peak_flops_per_s"] > 0 and run["peak_bytes_per_s"] > 0
    assert set(run["roofline_fraction"]) == {"engine", "plain", "bare_forward"}
    agent = ActorCritic(6, "gru")
    peaks = (run["peak_flops_per_s"], run["peak_bytes_per_s"])
    for m, incremental in (("engine", "auto"), ("plain", False), ("bare_forward", False)):
        want = roofline_share(agent, incremental, 5, 20, run["frames_per_second"][m], 2, peaks, run["chunk_size"])
        assert run["roofline_fraction"][m] == want["roofline_fraction"] > 0
    assert run["engine_plan"] == roofline_share(agent, "auto", 5, 20, 1.0, 2, peaks)["plan"]


def test_agent_evaluation_chooses_on_some_seeds_and_reports_on_others(tmp_path):
    """benchmarks/evaluate_agent.py: every game listed, the best candidate on the choosing seeds is reported."""
    import json

    import torch

    from benchmarks import evaluate_agent
    from engine.training.ppo import make_agent

    paths = []
    for i in range(2):
        torch.manual_seed(i)
        paths.append(tmp_path / f"step_{i + 1}.pt")
        torch.save(make_agent(6).state_dict(), paths[-1])
        # the metadata the trainer writes beside each checkpoint (shipping requires it)
        paths[-1].with_suffix(".json").write_text(json.dumps({"game": "PongNoFrameskip-v4", "frames": i + 1}))
    out = tmp_path / "evaluation.json"
    # sampled actions: an untrained greedy agent can hold a rally forever
    result = evaluate_agent.main([*map(str, paths), "--choose-seeds", "0", "--report-seeds", "100", "--out", str(out)])
    assert json.loads(out.read_text()) == result
    assert [(c["checkpoint"], c["actions"]) for c in result["candidates"]] == [(str(p), "sampled") for p in paths]
    best = max(result["candidates"], key=lambda c: c["mean"])
    assert (result["chosen"], result["actions"]) == (best["checkpoint"], "sampled")
    assert len(result["report_returns"]) == 1 and result["report_mean"] == result["report_returns"][0]
    assert all(-21 <= r <= 21 for r in result["report_returns"]) and result["precision"].startswith("float16")
    # two worker processes play the same seeded games
    parallel = evaluate_agent.main([*map(str, paths), "--choose-seeds", "0", "--report-seeds", "100", "--jobs", "2"])
    assert {k: v for k, v in parallel.items() if k not in ("seconds",)} == {
        k: v for k, v in result.items() if k not in ("seconds",)
    }


def test_evaluate_agent_chooses_how_to_act_and_rules_out_unfinished_games(tmp_path, monkeypatch):
    """--actions sampled,greedy: every (checkpoint, way of acting) pair is a candidate; a game that does not end
    within --max-steps is listed as null and rules its candidate out instead of failing the evaluation."""
    import torch

    from benchmarks import evaluate_agent
    from engine.training.ppo import make_agent

    path = tmp_path / "step_1.pt"
    torch.save(make_agent(6).state_dict(), path)
    path.with_suffix(".json").write_text('{"game": "PongNoFrameskip-v4", "frames": 1}')
    played = []

    def fake_play(agent, env_id, episodes, seed, greedy, max_steps):
        played.append((seed, greedy))
        if greedy and seed == 1:
            raise evaluate_agent.EpisodesUnfinished("only 0 of 1 episodes ended")
        return [float(seed) + (5.0 if greedy else 0.0)]

    monkeypatch.setattr(evaluate_agent, "play_episodes", fake_play)
    result = evaluate_agent.main(
        [str(path), "--actions", "sampled,greedy", "--choose-seeds", "0-1", "--report-seeds", "7"]
    )
    assert [(c["actions"], c["returns"], c["mean"]) for c in result["candidates"]] == [
        ("sampled", [0.0, 1.0], 0.5),
        ("greedy", [5.0, None], None),
    ]
    assert result["actions"] == "sampled" and result["report_returns"] == [7.0] and result["report_mean"] == 7.0
    assert played[-1] == (7, False)
    with pytest.raises(SystemExit):
        evaluate_agent.main([str(path), "--actions", "greedy,argmax"])


def test_learning_curve_is_drawn_from_progress_csv(tmp_path):
    from benchmarks import plot_training

    csv_path = tmp_path / "progress.csv"
    csv_path.write_text(
        "update,frames,wall_seconds,frames_per_second,mean_return_100\n"
        "1,4096,4.0,1000,\n2,8192,8.0,1010,-20.5\n3,12288,12.0,990,-19.0\n"
    )
    out = plot_training.plot(plot_training.read_progress(csv_path), tmp_path / "curve.png", "test")
    assert out.stat().st_size > 5000 and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # speed over a window of updates, not the CSV's since-start average: 4096 frames in 2 s, then in 4 s
    at, per_second = plot_training.windowed_speed([0, 4096, 8192, 12288], [0.0, 2.0, 6.0, 10.0], window=1)
    assert at == [4096, 8192, 12288] and per_second == [2048.0, 1024.0, 1024.0]
    breakout = plot_training.plot(plot_training.read_progress(csv_path), tmp_path / "b.png", "test", None, None)
    assert breakout.stat().st_size > 5000


def test_settings_benchmark_writes_a_finite_row_and_its_tables(tmp_path):
    """benchmarks/settings.py on a 2-frame sample of an untrained CleanRL LSTM agent (84x84 pipeline, objects
    mapped over the full frame): every measured value is finite, and the CSV and Markdown table are written with
    the checkpoint's training frames (from the .json beside it) in the header."""
    import csv
    import math

    import torch
    from omegaconf import OmegaConf

    from benchmarks import settings
    from engine.training.ppo import make_agent

    torch.manual_seed(0)
    agent = tmp_path / "step_1000.pt"
    torch.save(make_agent(6).state_dict(), agent)
    (tmp_path / "step_1000.json").write_text(json.dumps({"frames": 1000}))
    cfg = OmegaConf.load(ROOT / "benchmarks" / "settings_configs" / "settings.yaml")
    del cfg["hydra"]
    cfg = OmegaConf.merge(
        cfg,
        dict(
            agent=str(agent),
            env="PongNoFrameskip-v4",
            tag="smoke",
            frames=2,
            sanity_frames=1,
            warmup_steps=20,
            radius=5,
            density=10,
            steps=8,
            threads=1,
            checkpoint_dirs=[],
            results_dir=str(tmp_path / "results"),
        ),
    )
    row, written = settings.run(cfg)
    measured = (
        "map_s_per_frame",
        "metrics_s_per_frame",
        "deletion_prob_auc",
        "insertion_prob_auc",
        "deletion_kl_auc",
        "insertion_kl_auc",
        "random_deletion_kl_auc",
        "random_insertion_kl_auc",
        "sanity_spearman_output",
        "sanity_spearman_all",
        "sanity_ssim_output",
        "sanity_ssim_all",
        "objects_share",
        "objects_area",
        "stability_settings",
        "stability_temporal",
    )
    assert all(math.isfinite(row[k]) for k in measured), {k: row[k] for k in measured}
    assert 0 < row["objects_area"] < 0.2 and 0 <= row["objects_share"] <= 1 and row["pointing"] in (0.0, 0.5, 1.0)
    assert -1 <= row["sanity_spearman_all"] <= 1 and row["map_s_per_frame"] > 0 and row["sanity_frames"] == 1
    assert (row["agent_frames"], row["pipeline"], row["observation_shape"]) == (1000, "cleanrl_atari", "1x84x84")
    csv_path, md_path = tmp_path / "results" / "settings_smoke.csv", tmp_path / "results" / "settings_smoke.md"
    assert csv_path in written and md_path in written
    rows = list(csv.DictReader(csv_path.open()))
    assert len(rows) == 1 and float(rows[0]["deletion_kl_auc"]) == pytest.approx(row["deletion_kl_auc"])
    md = md_path.read_text()
    assert "trained on 1,000 frames (cleanrl_atari pipeline, observations 1x84x84)" in md
    assert "| occlude/logit_l2 r5 d10 |" in md


def test_settings_benchmark_runs_the_engines_methods_with_the_documented_settings(tmp_path, monkeypatch):
    """Each of the engine's batched methods in the settings benchmark is the engine function with the settings its
    table documents: occlusion with the blur in 8x8 windows every 4 pixels, RISE with square cells from
    ``rise_cells``, LIME with ``lime_cell``, SARFA on the 2017 masks and SARFA with Huber et al.'s discs."""
    import math

    import torch
    from omegaconf import OmegaConf

    from benchmarks import settings
    from engine.core.lime import lime_saliency
    from engine.core.occlusion import occlusion_sensitivity
    from engine.core.rise import rise_saliency
    from engine.core.sarfa import sarfa_saliency
    from engine.policies.loading import load_policy
    from engine.training.ppo import make_agent

    torch.manual_seed(0)
    path = tmp_path / "step_1000.pt"
    torch.save(make_agent(6).state_dict(), path)
    policy = load_policy(path)
    obs = torch.rand(2, 1, 84, 84)
    states = tuple(torch.randn_like(s) for s in policy.initial_state(2))
    actions = torch.tensor([1, 4])
    cfg = OmegaConf.load(ROOT / "benchmarks" / "settings_configs" / "settings.yaml")
    del cfg["hydra"]
    cfg = OmegaConf.merge(cfg, dict(rise_masks=8, lime_samples=8, radius=5, density=10))
    expected = {
        "occlusion": occlusion_sensitivity(
            policy, obs, states, window=8, stride=4, baseline="blur", actions=actions
        ).actor,
        "rise_engine": rise_saliency(
            policy, obs, states, num_masks=8, cell=math.ceil(84 / 8), seed=0, actions=actions
        ).actor,
        "lime": lime_saliency(policy, obs, states, num_samples=8, cell=10, seed=0, actions=actions).actor,
        "sarfa": sarfa_saliency(policy, obs, states, radius=5, density=10).actor,
    }
    for method, want in expected.items():
        got = settings.method_fn(OmegaConf.merge(cfg, {"method": method}))(policy, obs, states, actions)
        assert torch.equal(got, want), method
    # the discs (1,764 passes a frame at 84x84, their values tested in tests/integration/test_sarfa.py): the call
    import engine.core.sarfa

    class Called(Exception):
        pass

    def recorded(*args, **kwargs):
        raise Called(kwargs)

    monkeypatch.setattr(engine.core.sarfa, "sarfa_saliency", recorded)
    with pytest.raises(Called) as called:
        settings.method_fn(OmegaConf.merge(cfg, {"method": "sarfa_disc"}))(policy, obs, states, actions)
    assert called.value.args == ({"perturbation": "disc"},)
    assert set(expected) | {"sarfa_disc"} == set(settings.ENGINE_PEERS)
