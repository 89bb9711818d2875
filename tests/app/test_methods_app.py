"""The app side of the saliency methods (issue 21, item 3): ``saliency.method`` takes one method or a list of them,
each method's settings live in the typed schema, and each method's maps reach the arrays, the stores, summary.json
and report.html exactly as its engine function computes them."""

import json
import subprocess
import sys
from dataclasses import asdict

import numpy as np
import pytest
import torch

from engine.core.errors import EngineError
from engine.core.jacobian import jacobian_saliency
from engine.core.lime import lime_saliency
from engine.core.occlusion import occlusion_sensitivity
from engine.core.perturbation import perturbation_saliency
from engine.core.rise import rise_saliency
from engine.core.sarfa import sarfa_saliency
from engine.core.settings import MAP_KINDS, SaliencyConfig
from engine.jobs.run import run_job, validate_job
from engine.storage.arrays import load_arrays
from engine.storage.store import SaliencyStore, StoreMismatchError, identity_settings
from engine.viz.report import MAP_LABELS, read_report_data
from tests.conftest import tiny_job

# every method but the Jacobian (whose maps the 'both' test checks), each kept tiny: 4 steps at density 20, windows
# of 20 pixels, 6 RISE masks and 6 LIME samples a frame
SEVERAL = {
    "method": ["perturbation", "occlusion", "rise", "lime", "sarfa"],
    "occlusion": {"window": 20, "stride": 20},
    "rise": {"num_masks": 6, "cell": 16},
    "lime": {"num_samples": 6, "cell": 20},
}
TODAY = {"actor", "critic", "actor_scores", "critic_scores", "jacobian_actor", "jacobian_critic"}


def test_the_schema_holds_the_engine_functions_choices_and_defaults():
    """Each method's settings in the typed schema: the engine function's choices, and its defaults."""
    import inspect

    from engine.core import lime, occlusion, rise, sarfa
    from engine.core.settings import (
        LimeSettings,
        OcclusionBaseline,
        OcclusionResponse,
        OcclusionSettings,
        Response,
        RiseSettings,
        SarfaPerturbation,
        SarfaSettings,
    )

    assert set(OcclusionBaseline) == set(occlusion.BASELINES) and set(OcclusionResponse) == set(occlusion.RESPONSES)
    assert set(Response) == set(rise.RESPONSES) == set(lime.RESPONSES)
    assert set(SarfaPerturbation) == set(sarfa.PERTURBATIONS)
    for schema, function in (
        (OcclusionSettings, occlusion.occlusion_sensitivity),
        (RiseSettings, rise.rise_saliency),
        (LimeSettings, lime.lime_saliency),
        (SarfaSettings, sarfa.sarfa_saliency),
    ):
        parameters = inspect.signature(function).parameters
        for name, value in asdict(schema()).items():
            assert parameters[name].default == value, (function.__name__, name)


def played(out_dir):
    """The job's agent inputs from rollout.npz: observations, states (hx, cx) and actions, as tensors."""
    arrays, _ = load_arrays(out_dir / "rollout.npz")
    states = (torch.from_numpy(arrays["state_0"]), torch.from_numpy(arrays["state_1"]))
    return torch.from_numpy(arrays["observations"]), states, torch.from_numpy(arrays["actions"])


@pytest.fixture(scope="module")
def several(tmp_path_factory):
    """An in-memory job with five methods at once, its arrays and its agent."""
    out = tmp_path_factory.mktemp("several")
    config = tiny_job(out, steps=4, movie=False, saliency=SEVERAL)
    written = run_job(config)
    maps, settings = load_arrays(out / "saliency.npz")
    return dict(out=out, config=config, written=written, maps=maps, settings=settings)


def test_each_method_writes_the_maps_of_its_engine_function(several):
    """The job's arrays equal each engine function called directly on the same frames, states and actions."""
    agent = validate_job(several["config"]).agent
    observations, states, actions = played(several["out"])
    maps = several["maps"]
    grids = ("actor", "critic", "actor_scores", "critic_scores")
    expected = {  # array prefix: (the engine function's result, the fields the job stores)
        "": (perturbation_saliency(agent, observations, states, density=20), grids),
        "occlusion_": (
            occlusion_sensitivity(agent, observations, states, window=20, stride=20, actions=actions),
            grids,
        ),
        "rise_": (rise_saliency(agent, observations, states, num_masks=6, cell=16, actions=actions), grids[:2]),
        "lime_": (lime_saliency(agent, observations, states, num_samples=6, cell=20, actions=actions), grids[:2]),
        "sarfa_": (sarfa_saliency(agent, observations, states, radius=5, density=20), ("actor", "actor_scores")),
    }
    names = set()
    for prefix, (result, fields) in expected.items():
        for field in fields:
            names.add(prefix + field)
            assert np.array_equal(maps[prefix + field], getattr(result, field).numpy()), prefix + field
    assert set(maps) == names  # nothing else: no Jacobian maps, no critic map for SARFA
    for kind in ("rise_actor", "lime_actor", "occlusion_actor", "sarfa_actor"):
        assert np.abs(maps[kind]).max() > 0, kind


def test_summary_and_report_name_each_methods_maps(several):
    summary = json.loads((several["out"] / "summary.json").read_text())
    assert summary["methods"] == ["perturbation", "occlusion", "rise", "lime", "sarfa"]
    assert summary["maps"]["sarfa"] == ["sarfa_actor"] and summary["maps"]["rise"] == ["rise_actor", "rise_critic"]
    assert summary["config"]["saliency"]["rise"]["num_masks"] == 6
    for kind in ("actor", "rise_critic", "sarfa_actor", "lime_actor", "occlusion_critic"):
        assert summary[f"{kind}_max"] == pytest.approx(float(several["maps"][kind].max()))
    data, sheets = read_report_data(several["written"]["report"])
    kinds = ["actor", "critic", "occlusion_actor", "occlusion_critic", "rise_actor", "rise_critic"]
    assert data["kinds"] == kinds + ["lime_actor", "lime_critic", "sarfa_actor"]
    assert data["shown"] == ["actor", "critic"]  # the 2017 method's overlays on at first, the others' toggles off
    assert data["labels"]["rise_actor"] == "actor (RISE)" and set(sheets["maps"][0]) == set(data["kinds"])
    assert tuple(MAP_LABELS) == MAP_KINDS
    assert "perturbation+occlusion+rise+lime+sarfa saliency" in data["title"]


def test_the_viewer_has_a_toggle_per_map(several):
    """In Chromium (as tests/app/test_report_browser.py drives it): the 2017 overlays on, the others off; turning
    one on draws it; nothing is logged as an error."""
    import os

    from tests.app import test_report_browser as viewer

    missing = viewer._missing()
    if missing:
        if os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no"):
            pytest.fail(f"CI is set but the browser test cannot run: {missing}")
        pytest.skip(f"browser test needs headless Chromium and Playwright: {missing}")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=viewer.CHROMIUM, args=viewer.ARGS)
        try:
            page = viewer.Page(browser, several["written"]["report"])
            page.drawn(0)
            kinds = page.page.evaluate("window.viewer.data.kinds")
            assert [page.page.locator(f"#toggle-{k}").is_checked() for k in kinds] == [
                k in ("actor", "critic") for k in kinds
            ]
            page.set_overlay("actor", False)
            page.set_overlay("critic", False)
            plain = page.pixels()
            for kind in ("rise_actor", "sarfa_actor", "lime_critic"):
                page.set_overlay(kind, True)
                drawn = page.pixels()
                assert np.any(drawn[..., :3] != plain[..., :3]), kind
                page.set_overlay(kind, False)
                assert np.array_equal(page.pixels(), plain), kind
            # signed maps (occlusion's, LIME's) show their positive part, as the movie does: the inside of a
            # negative window or superpixel (constant 20x20 blocks here) is left as the frame, in both normalisations
            frames = load_arrays(several["out"] / "rollout.npz")[0]["frames"]
            checked = 0
            for kind in ("occlusion_actor", "occlusion_critic", "lime_actor", "lime_critic"):
                m = several["maps"][kind][0]
                negative = [(i, j) for i in range(0, 80, 20) for j in range(0, 80, 20) if m[i, j] < 0]
                positive = [(i, j) for i in range(0, 80, 20) for j in range(0, 80, 20) if m[i, j] > 0]
                if not negative or not positive:
                    continue
                page.set_overlay(kind, True)
                for normalise in ("frame", "run"):
                    page.page.select_option("#normalise", normalise)
                    page.page.evaluate("document.body.dataset.drawn = ''")
                    page.page.evaluate("window.viewer.setFrame(0)")
                    page.drawn(0)
                    drawn = page.pixels()
                    for i, j in negative:  # the block's middle, far from the bilinear edges
                        y, x = 35 + 2 * (i + 10), 2 * (j + 10)
                        assert np.array_equal(
                            drawn[y - 8 : y + 8, x - 8 : x + 8, :3], frames[0][y - 8 : y + 8, x - 8 : x + 8]
                        ), (kind, normalise, i, j)
                    i, j = max(positive, key=lambda c: m[c])
                    y, x = 35 + 2 * (i + 10), 2 * (j + 10)
                    assert not np.array_equal(drawn[y, x, :3], frames[0][y, x]), (kind, normalise)
                page.page.select_option("#normalise", "frame")
                page.set_overlay(kind, False)
                checked += 1
            assert checked >= 2, "the test's run has no signed map with negative and positive blocks"
            assert page.clean(), page.errors
        finally:
            browser.close()


def test_a_store_job_gives_the_in_memory_jobs_arrays(several, tmp_path):
    """Chunks of 3 frames scored 2 at a time (RISE and LIME seeded by each frame's index in the rollout) give the
    in-memory job's arrays; the store records the selected methods' settings, and resumes with the same methods
    listed in another order, but refuses other settings of a method it ran."""
    store = {"rollout": str(tmp_path / "rollout"), "saliency": str(tmp_path / "saliency"), "frames_per_chunk": 3}
    reordered = dict(SEVERAL, method=["sarfa", "lime", "rise", "occlusion", "perturbation"], frames_per_batch=2)
    run_job(tiny_job(tmp_path / "run", steps=4, movie=False, saliency=reordered, store=store))
    sstore = SaliencyStore.open(tmp_path / "saliency")
    stored = sstore.read()
    assert set(stored) == set(several["maps"])
    for kind, maps in several["maps"].items():
        assert np.array_equal(stored[kind], maps), kind
    recorded = sstore.store.identity["saliency"]
    assert recorded["method"] == ["perturbation", "occlusion", "rise", "lime", "sarfa"]
    assert recorded["rise"]["num_masks"] == 6 and recorded["sarfa"]["perturbation"] == "blur"
    run_job(tiny_job(tmp_path / "again", steps=4, movie=False, saliency=SEVERAL, store=store))  # the same store
    other = dict(SEVERAL, rise={"num_masks": 7, "cell": 16})
    with pytest.raises(StoreMismatchError, match="saliency.rise.num_masks: store has 6, this job 7"):
        run_job(tiny_job(tmp_path / "other", steps=4, movie=False, saliency=other, store=store))


def test_method_both_gives_todays_arrays_and_store_identity(tmp_path):
    config = tiny_job(tmp_path, steps=4, movie=False, saliency={"method": "both"})
    run_job(config)
    maps, _ = load_arrays(tmp_path / "saliency.npz")
    assert set(maps) == TODAY
    agent = validate_job(config).agent
    observations, states, _ = played(tmp_path)
    perturbation = perturbation_saliency(agent, observations, states, density=20)
    jacobian = jacobian_saliency(agent, observations, states)
    for kind in ("actor", "critic", "actor_scores", "critic_scores"):
        assert np.array_equal(maps[kind], getattr(perturbation, kind).numpy()), kind
    assert np.array_equal(maps["jacobian_actor"], jacobian.actor.detach().numpy())
    assert np.array_equal(maps["jacobian_critic"], jacobian.critic.detach().numpy())
    # what a store records is what it recorded before the new methods: stores written then still resume
    before = {"radius", "density", "interp", "score", "blur_sigma", "compat", "state_alignment", "incremental"}
    before |= {"method", "jacobian_backend", "tf32"}
    for method in ("both", ["jacobian", "perturbation"]):
        identity = identity_settings(asdict(SaliencyConfig(method=method)))
        assert set(identity) == before and identity["method"] == "both"
    assert identity_settings(asdict(SaliencyConfig(method="jacobian")))["method"] == "jacobian"


def test_one_method_alone_is_shown_and_rendered(tmp_path):
    """SARFA alone: its actor map (no critic) in the arrays, on in the report, and in the movie."""
    written = run_job(tiny_job(tmp_path, steps=4, movie=True, saliency={"method": "sarfa"}))
    maps, _ = load_arrays(tmp_path / "saliency.npz")
    assert set(maps) == {"sarfa_actor", "sarfa_actor_scores"}
    data, _ = read_report_data(written["report"])
    assert data["kinds"] == data["shown"] == ["sarfa_actor"]
    assert written["movie"].stat().st_size > 0 and "comparison" not in written  # no 2017 maps: no comparison figure


def test_metrics_score_a_new_methods_maps(tmp_path):
    """metrics.kinds names any method's maps: deletion/insertion of RISE's actor map and SARFA's."""
    metrics = {"deletion_insertion": True, "random_baseline": False, "steps": 4, "kinds": ["rise_actor", "sarfa_actor"]}
    saliency = {"method": ["rise", "sarfa"], "rise": {"num_masks": 6, "cell": 16}}
    run_job(tiny_job(tmp_path, steps=4, movie=False, saliency=saliency, metrics=metrics))
    scored = json.loads((tmp_path / "summary.json").read_text())["metrics"]
    assert 0 <= scored["rise_actor"]["deletion_prob_auc"] <= 1 and "insertion_value_auc" in scored["sarfa_actor"]


@pytest.mark.parametrize(
    "saliency,message",
    [
        ({"method": "gradcam"}, "saliency.method must be one of perturbation, jacobian, both, occlusion, rise, lime"),
        ({"method": ["rise", "gradcam"]}, "got 'gradcam' in ['rise', 'gradcam']"),
        ({"method": []}, "saliency.method must be one of"),
        ({"rise": {"num_masks": 0}}, "saliency.rise.num_masks must be an integer >= 1, got 0"),
        ({"rise": {"p": 1.5}}, "saliency.rise.p (the probability that a cell is kept) must be in (0, 1]"),
        ({"lime": {"num_samples": 1}}, "saliency.lime.num_samples must be an integer >= 2, got 1"),
        ({"lime": {"kernel_width": 0}}, "saliency.lime.kernel_width must be a finite number > 0"),
        ({"occlusion": {"window": 4, "stride": 8}}, "saliency.occlusion.stride 8 is larger than occlusion.window 4"),
        ({"occlusion": {"baseline": "zeros"}}, "saliency.occlusion.baseline: Invalid value 'zeros'"),
        ({"sarfa": {"perturbation": "disk"}}, "saliency.sarfa.perturbation: Invalid value 'disk'"),
        ({"sarfa": {"radius": -1.0}}, "saliency.sarfa.radius must be a number > 0"),
        ({"rise": {"masks": 3}}, "saliency.rise.masks: Key 'masks' not in 'RiseSettings'"),
    ],
)
def test_a_bad_method_or_setting_is_one_line_naming_the_key(tmp_path, saliency, message):
    with pytest.raises(EngineError) as info:
        tiny_job(tmp_path, saliency=saliency)
    assert message in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize(
    "saliency,message",
    [
        ({"method": "occlusion", "occlusion": {"window": 100, "stride": 50}}, "larger than the 80x80 observation"),
        ({"method": "rise", "rise": {"cell": 81}}, "saliency.rise.cell must be an integer in 1..80 (pixels), got 81"),
        ({"method": "sarfa", "sarfa": {"density": 81}}, "saliency.sarfa.density must be in 1..80"),
    ],
)
def test_settings_too_large_for_the_agents_observation_are_refused_before_it_plays(tmp_path, saliency, message):
    with pytest.raises(EngineError) as info:
        validate_job(tiny_job(tmp_path, saliency=saliency))
    assert message in str(info.value) and "\n" not in str(info.value) and "saliency." in str(info.value)


def test_the_command_line_takes_a_list_of_methods(tmp_path):
    out = tmp_path / "run"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "engine",
            "agent=builtin_pong",
            "agent.allow_download=false",
            "progress=false",
            "rollout.steps=4",
            "saliency.density=20",
            "saliency.method=[perturbation,rise]",
            "saliency.rise.num_masks=4",
            "output.movie=false",
            f"hydra.run.dir={out}",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    maps, settings = load_arrays(out / "saliency.npz")
    assert set(maps) == {"actor", "critic", "actor_scores", "critic_scores", "rise_actor", "rise_critic"}
    assert settings["config"]["saliency"]["method"] == ["perturbation", "rise"]
    assert settings["config"]["saliency"]["rise"]["num_masks"] == 4
