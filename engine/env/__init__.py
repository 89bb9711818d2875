"""Environments: gymnasium + ale-py games played by an agent, recording what saliency needs.

``pipelines`` rebuilds each library's Atari wrapper chain (the 2017 preprocessing, Stable-Baselines3's, CleanRL's,
gymnasium's ``AtariPreprocessing``) byte for byte (``wrappers`` holds the re-implemented wrappers); ``rollout``
plays any :class:`engine.core.policy.Policy` in its own pipeline and records frames, observations, states,
outputs, actions, rewards and episode ends.
"""
