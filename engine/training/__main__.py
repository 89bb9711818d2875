import sys

print(
    "error: python -m engine.training has moved: run python -m engine.train algo=a2c (A2C of the 2017 agent) "
    "or algo=ppo (PPO, the default)",
    file=sys.stderr,
)
sys.exit(2)
