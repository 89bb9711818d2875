"""``python -m engine.train``: PPO training of CleanRL's ppo_atari_lstm agent (:mod:`engine.training.ppo`)."""

from .training.ppo import main

if __name__ == "__main__":
    main()
