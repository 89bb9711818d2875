"""Benchmarking perturbation settings: how fast and how faithful each method and setting is, on one fixed sample.

    python benchmarks/settings.py                                       # one setting (settings_configs/settings.yaml)
    python benchmarks/settings.py -m interp=occlude,searchlight score=logit_l2,action_logprob radius=3,5,8 density=5,10
    python benchmarks/settings.py -m method=jacobian,captum,rise        # the Jacobian and the peers
    python benchmarks/settings.py -m agent=baby-a3c/breakout env=Breakout-v4 tag=breakout_baby_a3c ...   # other agents
    python benchmarks/settings.py -m agent=<run>/checkpoints/step_<frames>.pt env=PongNoFrameskip-v4 tag=pong_ppo_lstm ...

Any agent engine.load_policy reads works in its own pipeline: the 2017 agents' maps cover the 80x80 crop of frame
rows 35..194, the standard pipelines' 84x84 maps the whole 210x160 frame (object regions are mapped accordingly).
The table's header names the checkpoint's training frames (the ``.json`` beside a ``step_<frames>.pt``, or
baby-a3c's ``model.<millions>.tar``) and the agent's pipeline and observation shape.

Every run plays the same seeded game, takes the same ``frames`` consecutive frames after ``warmup_steps``, computes
the actor maps of one setting and measures on them (engine.metrics.faithfulness): seconds per frame of the maps and of the
metrics (deletion, insertion, object agreement, stability at ``steps`` K); deletion and insertion AUCs of the
action's probability and of the KL divergence from the unperturbed policy, with random-order references; the sanity
check (cascading randomisation, on ``sanity_frames`` frames: Spearman and SSIM after the output layer and after all
layers, flagged at Spearman >= 0.5 for both); the share of saliency on the game's objects and the pointing game;
Spearman of each frame's map with the neighbouring radius's, and of consecutive frames. It appends one JSON line to
``results/settings_<tag>.jsonl`` and rewrites ``settings_<tag>.csv``, ``.md`` and ``.png`` from all lines (delete
the .jsonl to start a table afresh). Peers (captum ``Occlusion``, xaitk-saliency RISE) run only where installed
(``pip install -e ".[bench]"``); otherwise the run prints why and writes nothing.
"""

from __future__ import annotations

import csv
import json
import math
import sys
import time
from pathlib import Path

import hydra
import numpy as np
import torch
from omegaconf import DictConfig

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # benchmarks.* when run as a script
from benchmarks.common import machine  # noqa: E402

COLUMNS = (
    "method",
    "interp",
    "score",
    "radius",
    "density",
    "frames",
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
    "sanity_flagged",
    "sanity_frames",
    "objects_share",
    "objects_area",
    "pointing",
    "stability_settings",
    "stability_temporal",
    "agent",
    "env",
    "machine",
    "date",
    "checkpoint",
    "agent_frames",
    "pipeline",
    "observation_shape",
)


def setting_name(row: dict) -> str:
    if row["method"] == "perturbation":
        return f"{row['interp']}/{row['score']} r{row['radius']:g} d{row['density']}"
    return row["method"]


# --- the methods: (policy, observations (n, C, H, W) float, states, actions (n,)) -> actor maps (n, H, W) -------------


def method_fn(cfg: DictConfig, radius: float | None = None):
    from engine.core.jacobian import jacobian_saliency
    from engine.core.perturbation import perturbation_saliency

    method = cfg.method
    if method == "perturbation":
        r = cfg.radius if radius is None else radius

        def maps(policy, obs, states, actions):
            return perturbation_saliency(
                policy, obs, states, radius=r, density=cfg.density, interp=cfg.interp, score=cfg.score, actions=actions
            ).actor

        return maps
    if method == "jacobian":
        return lambda policy, obs, states, actions: jacobian_saliency(policy, obs, states).actor
    if method == "captum":
        return captum_maps(cfg)
    if method == "rise":
        return rise_maps(cfg)
    if method in ENGINE_PEERS:
        return engine_maps(cfg)
    raise SystemExit(f"method must be one of {', '.join(METHODS)}, got {method!r}")


# the other methods as the engine batches them (issue 21); "captum" and "rise" are the peers' own code
ENGINE_PEERS = ("occlusion", "rise_engine", "lime", "sarfa", "sarfa_disc")
METHODS = ("perturbation", "jacobian", "captum", "rise", *ENGINE_PEERS)


def engine_maps(cfg):
    """The engine's occlusion sensitivity (windows filled with the blur), RISE (masks filled with 0, a grid of
    ``rise_cells`` per side as xaitk's), LIME (square superpixels of ``lime_cell`` pixels) and SARFA (the 2017
    method's masks at ``radius``/``density``; ``sarfa_disc``: Huber et al.'s black discs, radius 2 every 2 pixels):
    each the map of the probability of the action taken (SARFA: of the most likely action, as its paper defines
    it)."""
    from engine.core.lime import lime_saliency
    from engine.core.occlusion import occlusion_sensitivity
    from engine.core.rise import rise_saliency
    from engine.core.sarfa import sarfa_saliency

    def maps(policy, obs, states, actions):
        if cfg.method == "occlusion":
            return occlusion_sensitivity(
                policy,
                obs,
                states,
                window=cfg.occlusion_window,
                stride=cfg.occlusion_stride,
                baseline="blur",
                actions=actions,
            ).actor
        if cfg.method == "rise_engine":
            cell = math.ceil(max(obs.shape[-2:]) / cfg.rise_cells)
            return rise_saliency(
                policy, obs, states, num_masks=cfg.rise_masks, cell=cell, seed=cfg.seed, actions=actions
            ).actor
        if cfg.method == "lime":
            return lime_saliency(
                policy, obs, states, num_samples=cfg.lime_samples, cell=cfg.lime_cell, seed=cfg.seed, actions=actions
            ).actor
        if cfg.method == "sarfa_disc":  # Huber et al.'s variant: black discs of radius 2 every 2 pixels
            return sarfa_saliency(policy, obs, states, perturbation="disc").actor
        return sarfa_saliency(policy, obs, states, radius=cfg.radius, density=cfg.density).actor

    return maps


def captum_maps(cfg):
    """captum ``Occlusion``: square windows of side and stride ``density``, the blurred observation as baseline,
    the perturbation's L2 logit score as the attributed quantity, one frame per call."""
    from captum.attr import Occlusion

    from engine.core.blur import gaussian_blur

    def maps(policy, obs, states, actions):
        out = []
        for i in range(obs.shape[0]):  # captum attributes one input at a time here (its API's unit)
            image, state = obs[i : i + 1], tuple(s[i : i + 1] for s in states)
            with torch.inference_mode():
                reference = policy(image, state).logits

            def score(x, *state_tensors):
                return 0.5 * (policy(x, tuple(state_tensors)).logits - reference).pow(2).sum(-1)

            with torch.no_grad():
                attr = Occlusion(score).attribute(
                    image,
                    sliding_window_shapes=(image.shape[1], cfg.density, cfg.density),
                    strides=(image.shape[1], cfg.density, cfg.density),
                    baselines=gaussian_blur(image, 3),
                    additional_forward_args=state,
                    perturbations_per_eval=64,
                )
            # Occlusion attributes f(input) - f(occluded) = 0 - score: negated, larger is more salient
            out.append(-attr.sum(1))
        return torch.cat(out)

    return maps


def rise_maps(cfg):
    """xaitk-saliency RISE: ``RISEGrid`` random masks (blurred observation as fill), ``RISEScoring`` of the
    action probabilities; the map of the action taken."""
    from scipy.ndimage import gaussian_filter
    from xaitk_saliency.impls.gen_classifier_conf_sal.rise_scoring import RISEScoring
    from xaitk_saliency.impls.perturb_image.rise import RISEGrid
    from xaitk_saliency.utils.masking import occlude_image_batch

    def maps(policy, obs, states, actions):
        out = []
        for i in range(obs.shape[0]):
            image = obs[i].permute(1, 2, 0).double().cpu().numpy()  # (H, W, C)
            masks = RISEGrid(n=cfg.rise_masks, s=cfg.rise_cells, p1=0.5, seed=cfg.seed + i, threads=1).perturb(image)
            fill = np.stack([gaussian_filter(image[..., c], 3) for c in range(image.shape[-1])], -1)
            perturbed = occlude_image_batch(image, masks, fill=fill)  # (M, H, W, C)
            x = torch.as_tensor(np.concatenate([image[None], perturbed]), dtype=policy.dtype).permute(0, 3, 1, 2)
            state = tuple(s[i : i + 1].expand(x.shape[0], *s.shape[1:]) for s in states)
            with torch.inference_mode():
                probs = torch.softmax(policy(x.contiguous(), state).logits, -1).double().numpy()
            sal = RISEScoring().generate(probs[0], probs[1:], masks)  # (actions, H, W)
            out.append(torch.as_tensor(sal[int(actions[i])]))
        return torch.stack(out).to(obs.dtype)

    return maps


def peer_missing(method: str) -> str | None:
    module = {"captum": "captum", "rise": "xaitk_saliency"}.get(method)
    if module is None:
        return None
    try:
        __import__(module)
    except ImportError as exc:
        return f'{method} needs {module} (pip install -e ".[bench]"): {exc}'
    return None


def trained_frames(path: Path) -> int | None:
    """Frames an agent was trained on, as its checkpoint says: the ``frames`` of the ``.json`` written beside
    the trainers' (python -m engine.train) and CleanRL runs' ``step_<frames>.pt``, or baby-a3c's ``model.<millions>.tar`` name."""
    sidecar = path.with_suffix(".json")
    if sidecar.is_file():
        try:
            frames = json.loads(sidecar.read_text()).get("frames")
        except (OSError, ValueError):
            frames = None
        if isinstance(frames, int):
            return frames
    parts = path.name.split(".")
    if len(parts) == 3 and parts[0] == "model" and parts[2] == "tar" and parts[1].isdigit():
        return int(parts[1]) * 1_000_000
    return None


def neighbour_radius(radius: float, radii) -> float | None:
    others = [r for r in radii if r != radius]
    return min(others, key=lambda r: (abs(r - radius), r)) if others else None


def nanmean(t) -> float:
    t = torch.as_tensor(t, dtype=torch.float64)
    kept = t[~torch.isnan(t)]
    return float(kept.mean()) if kept.numel() else float("nan")


def measure(cfg: DictConfig) -> dict:
    from engine.core.inputs import prepare_observations
    from engine.core.preprocessing import CROP_ROWS
    from engine.env.rollout import rollout
    from engine.metrics.faithfulness import (
        deletion_insertion,
        object_agreement,
        random_maps,
        rank_stability,
        sanity_check,
        temporal_stability,
    )
    from engine.metrics.regions import game_object_cells, game_of
    from engine.policies.loading import load_policy
    from engine.policies.registry import resolve_checkpoint

    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))
    path = Path(resolve_checkpoint(cfg.agent, list(cfg.checkpoint_dirs), allow_download=False))
    agent = load_policy(path, device="cpu")
    played = rollout(agent, cfg.env, cfg.warmup_steps + cfg.frames, seed=cfg.seed, progress=False)
    sample = slice(cfg.warmup_steps, cfg.warmup_steps + cfg.frames)
    obs = prepare_observations(agent, played.observations[sample])
    states, actions = tuple(s[sample] for s in played.states), played.actions[sample]
    fn = method_fn(cfg)

    fn(agent, obs[:1], tuple(s[:1] for s in states), actions[:1])  # warm-up (first-call allocations), not timed
    deletion_insertion(
        agent, obs[:1], tuple(s[:1] for s in states), torch.rand(1, *obs.shape[2:]), actions[:1], steps=cfg.steps
    )
    started = time.perf_counter()
    maps = fn(agent, obs, states, actions).detach().cpu().float()
    map_s = (time.perf_counter() - started) / cfg.frames

    # the metrics the cost target covers: deletion, insertion, objects, stability (K steps)
    started = time.perf_counter()
    curves = deletion_insertion(agent, obs, states, maps, actions, steps=cfg.steps).aucs()
    game = game_of(cfg.env)
    objects = {}
    if game is not None:
        rows = CROP_ROWS if agent.pipeline == "greydanus2017" else None
        cells = game_object_cells(played.frames[sample], game, tuple(maps.shape[1:]), rows, cfg.distance)
        objects = object_agreement(maps, cells).summary()
    temporal = nanmean(temporal_stability(maps, played.dones[sample]))
    metrics_s = (time.perf_counter() - started) / cfg.frames

    settings_rho = float("nan")
    if cfg.method == "perturbation" and neighbour_radius(cfg.radius, cfg.radii) is not None:
        other = method_fn(cfg, neighbour_radius(cfg.radius, cfg.radii))(agent, obs, states, actions).cpu().float()
        settings_rho = nanmean(rank_stability(maps, other))
    rand = deletion_insertion(
        agent, obs, states, random_maps(cfg.frames, tuple(maps.shape[1:]), seed=cfg.seed), actions, steps=cfg.steps
    ).aucs()

    picks = (
        torch.linspace(cfg.warmup_steps, cfg.warmup_steps + cfg.frames - 1, cfg.sanity_frames).round().long().unique()
    )
    recorded = played.observations[: int(picks.max()) + 1]
    taken = played.actions[picks]
    sanity = sanity_check(
        agent,
        recorded,
        lambda p, o, s: {"actor": fn(p, o, s, taken).detach().float()},
        dones=played.dones[: int(picks.max()) + 1],
        frames=picks,
        seed=cfg.seed,
    ).summary()
    return dict(
        method=cfg.method,
        interp=cfg.interp if cfg.method == "perturbation" else "",
        score=cfg.score if cfg.method == "perturbation" else "",
        radius=cfg.radius if cfg.method == "perturbation" else "",
        density=cfg.density if cfg.method in ("perturbation", "captum") else "",
        frames=cfg.frames,
        map_s_per_frame=map_s,
        metrics_s_per_frame=metrics_s,
        deletion_prob_auc=nanmean(curves["deletion_prob"]),
        insertion_prob_auc=nanmean(curves["insertion_prob"]),
        deletion_kl_auc=nanmean(curves["deletion_kl"]),
        insertion_kl_auc=nanmean(curves["insertion_kl"]),
        random_deletion_kl_auc=nanmean(rand["deletion_kl"]),
        random_insertion_kl_auc=nanmean(rand["insertion_kl"]),
        sanity_spearman_output=sanity["actor_spearman_output"],
        sanity_spearman_all=sanity["actor_spearman_all"],
        sanity_ssim_output=sanity["actor_ssim_output"],
        sanity_ssim_all=sanity["actor_ssim_all"],
        sanity_flagged=sanity["actor_flagged"],
        sanity_frames=len(picks),
        objects_share=objects.get("objects_share", float("nan")),
        objects_area=objects.get("objects_area", float("nan")),
        pointing=objects.get("pointing", float("nan")),
        stability_settings=settings_rho,
        stability_temporal=temporal,
        agent=cfg.agent,
        env=cfg.env,
        machine=machine(),
        date=time.strftime("%Y-%m-%d %H:%M"),
        checkpoint=str(path),
        agent_frames=trained_frames(path) or "",
        pipeline=agent.pipeline,
        observation_shape="x".join(str(d) for d in agent.observation_shape),
    )


def fmt(value) -> str:
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.4g}"
    return str(value)


def write_report(jsonl: Path) -> list[Path]:
    """CSV, Markdown table and plot of every row in ``jsonl`` (the latest row per setting)."""
    rows = {}
    for line in jsonl.read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            rows[setting_name(row)] = row
    rows = list(rows.values())
    stem = jsonl.with_suffix("")
    with open(stem.with_suffix(".csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    shown = (
        "map_s_per_frame",
        "metrics_s_per_frame",
        "deletion_kl_auc",
        "insertion_kl_auc",
        "deletion_prob_auc",
        "insertion_prob_auc",
        "sanity_spearman_output",
        "sanity_spearman_all",
        "sanity_flagged",
        "objects_share",
        "pointing",
        "stability_settings",
        "stability_temporal",
    )
    first = rows[0]
    info = next((r for r in reversed(rows) if r.get("pipeline")), first)  # rows written before these columns lack them
    trained = f", trained on {int(info['agent_frames']):,} frames" if info.get("agent_frames") else ""
    pipeline = (
        f" ({info['pipeline']} pipeline, observations {info['observation_shape']})" if info.get("pipeline") else ""
    )
    lines = [
        f"Agent {first['agent']}{trained}{pipeline} on {first['env']}, {first['frames']} frames, sanity checks on "
        f"{rows[0]['sanity_frames']} of them; {rows[0]['machine']}. Random-order reference: deletion KL AUC "
        f"{fmt(rows[0]['random_deletion_kl_auc'])}, insertion KL AUC {fmt(rows[0]['random_insertion_kl_auc'])}; "
        f"objects cover {fmt(rows[0]['objects_area'])} of the screen.",
        "",
        "| setting | " + " | ".join(shown) + " |",
        "| --- " * (len(shown) + 1) + "|",
    ]
    lines += [f"| {setting_name(r)} | " + " | ".join(fmt(r[k]) for k in shown) + " |" for r in rows]
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    written = [stem.with_suffix(".csv"), stem.with_suffix(".md")]
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return written
    fig, axes = plt.subplots(1, 2, figsize=(12, 5))
    for r in rows:
        flagged = bool(r["sanity_flagged"])
        axes[0].scatter(r["map_s_per_frame"], r["deletion_kl_auc"], marker="x" if flagged else "o")
        axes[0].annotate(setting_name(r), (r["map_s_per_frame"], r["deletion_kl_auc"]), fontsize=6)
        axes[1].scatter(r["sanity_spearman_all"], r["insertion_kl_auc"], marker="x" if flagged else "o")
        axes[1].annotate(setting_name(r), (r["sanity_spearman_all"], r["insertion_kl_auc"]), fontsize=6)
    axes[0].set(xscale="log", xlabel="s / frame (map)", ylabel="deletion KL AUC (higher: more faithful)")
    axes[0].axhline(rows[0]["random_deletion_kl_auc"], ls="--", c="gray", lw=0.8)
    axes[1].set(
        xlabel="Spearman after all layers randomised (x: flagged)", ylabel="insertion KL AUC (lower: more faithful)"
    )
    axes[1].axvline(0.5, ls="--", c="gray", lw=0.8)
    fig.suptitle(f"{rows[0]['agent']}{trained} on {rows[0]['env']}: settings, {rows[0]['frames']} frames")
    fig.tight_layout()
    fig.savefig(stem.with_suffix(".png"), dpi=120)
    plt.close(fig)
    return written + [stem.with_suffix(".png")]


def run(cfg: DictConfig) -> tuple[dict, list[Path]] | None:
    """Measure one setting, append its row to ``<results_dir>/settings_<tag>.jsonl`` and rewrite the table:
    the row and the files written, or None (and why, printed) when the method's peer library is missing."""
    missing = peer_missing(cfg.method)
    if missing:
        print(f"skipped: {missing}")
        return None
    row = measure(cfg)
    results = Path(cfg.results_dir)
    results.mkdir(parents=True, exist_ok=True)
    jsonl = results / f"settings_{cfg.tag}.jsonl"
    with open(jsonl, "a") as f:
        f.write(json.dumps(row) + "\n")
    print(json.dumps({k: row[k] for k in COLUMNS[:20]}, default=str))
    written = write_report(jsonl)
    print("wrote", ", ".join(str(p) for p in written))
    return row, written


@hydra.main(version_base="1.3", config_path="settings_configs", config_name="settings")
def main(cfg: DictConfig) -> None:
    run(cfg)


if __name__ == "__main__":
    main()
