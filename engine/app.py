"""``python -m engine`` / ``atari-saliency``: a thin Hydra entry point over :mod:`engine.pipeline`.

The configuration (``configs/``) is turned into a typed :class:`engine.config.JobConfig`, checked before any
heavy work, and handed to plain engine functions. Errors in the settings print one clear line and exit 2.
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
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
