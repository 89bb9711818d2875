"""``python -m engine`` / ``atari-saliency``: a thin Hydra entry point over :mod:`engine.pipeline`.

The configuration (``configs/``) is turned into a typed :class:`engine.config.JobConfig`, checked before any
heavy work, and handed to plain engine functions. Errors in the settings print one clear line and exit 2.
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import hydra
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from .config import JobConfig

PROJECT_ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = PROJECT_ROOT / "configs"
if not OmegaConf.has_resolver("project_root"):
    OmegaConf.register_new_resolver("project_root", lambda: str(PROJECT_ROOT))


def job_config(cfg: DictConfig) -> JobConfig:
    """The typed job configuration of a composed Hydra config (its ``hydra`` node left out)."""
    data = OmegaConf.to_container(cfg, resolve=True)
    data.pop("hydra", None)
    return JobConfig.from_dict(data)


SUMMARY_COLUMNS = (
    "job", "env", "checkpoint", "method", "radius", "density", "interp", "compat", "state_alignment", "shard",
    "num_shards", "frames", "frames_scored", "seconds_per_frame", "actor_mean", "actor_max", "critic_mean",
    "critic_max", "complete", "output_dir",
)


def summary_rows(sweep_dir: Path) -> list[dict]:
    """One row per job of a sweep directory, from each job's summary.json."""
    rows = []
    for path in sorted(sweep_dir.glob("*/summary.json"), key=lambda p: (len(p.parent.name), p.parent.name)):
        s = json.loads(path.read_text())
        c = s["config"]
        rows.append(dict(
            job=path.parent.name, env=c["env"]["id"], checkpoint=s["checkpoint"], method=c["saliency"]["method"],
            radius=c["saliency"]["radius"], density=c["saliency"]["density"], interp=c["saliency"]["interp"],
            compat=c["saliency"]["compat"], state_alignment=c["saliency"]["state_alignment"],
            shard=c["store"]["shard"], num_shards=c["store"]["num_shards"], frames=s["frames"],
            frames_scored=s.get("frames_scored"), seconds_per_frame=s.get("seconds_per_frame"),
            actor_mean=s.get("actor_mean"), actor_max=s.get("actor_max"), critic_mean=s.get("critic_mean"),
            critic_max=s.get("critic_max"), complete=s.get("complete", True), output_dir=str(path.parent),
        ))
    return rows


class SweepSummary(Callback):
    """After a multirun, write ``summary.csv`` (one row per job) into the sweep directory."""

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        rows = summary_rows(sweep_dir)
        with open(sweep_dir / "summary.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=SUMMARY_COLUMNS)
            writer.writeheader()
            writer.writerows(rows)
        print(f"summary of {len(rows)} jobs: {sweep_dir / 'summary.csv'}")


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="main")
def main(cfg: DictConfig) -> None:
    from .pipeline import run_job, validate_job

    try:
        config = job_config(cfg)
        prepared = validate_job(config)
    except ValueError as exc:  # EngineError and the engine's argument checks
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    written = run_job(config, prepared)
    print(f"saliency of {config.env.id} by {prepared.checkpoint} written to {config.output.dir}:")
    for name, path in written.items():
        print(f"  {name:>12}: {path}")


if __name__ == "__main__":
    main()
