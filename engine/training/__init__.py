"""Training the agents the engine ships: A2C of the 2017 agent (``a2c``), PPO of CleanRL's ppo_atari_lstm
(``ppo``), their shared resume files (``resume``) and shipping checkpoints into the package (``shipping``). Run them
with ``python -m engine.train algo=ppo|a2c``."""
