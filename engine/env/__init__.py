"""Environments: gymnasium + ale-py games played by an agent, recording what saliency needs."""
