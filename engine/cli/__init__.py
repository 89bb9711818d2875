"""Command lines: one Hydra scaffold (``scaffold``) under the main job (``app``: ``python -m engine``,
``atari-saliency``) and the trainers (``train``: ``python -m engine.train algo=ppo|a2c``)."""
