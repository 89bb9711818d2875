"""Training agents the engine ships (``python -m engine.training``)."""
