"""``python -m engine.train algo=ppo|a2c``: the trainers' one entry point (:mod:`engine.cli.train`)."""

from .cli.train import main

if __name__ == "__main__":
    main()
