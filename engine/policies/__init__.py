"""Agents from other libraries behind the engine's policy interface (:class:`engine.core.policy.Policy`).

Each adapter loads the files its library writes, without running any code from them (no unpickling), rebuilds
the network in plain torch, and declares its environment pipeline. The libraries themselves are optional
extras: nothing here imports them.
"""
