"""Saliency of many frames with one set of settings: the engine's own entry point over its methods (the 2017
perturbation method, the Jacobian, occlusion sensitivity, RISE, LIME, SARFA; several at once), used by the app, the
stores and the benchmarks.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import numpy as np
import torch
from tqdm.auto import tqdm

from .jacobian import jacobian_saliency
from .lime import lime_saliency
from .occlusion import occlusion_sensitivity
from .perturbation import _check_actions, perturbation_saliency
from .policy import Policy, State, index_state
from .rise import rise_saliency
from .sarfa import check_sarfa_agent, sarfa_result, sarfa_saliency, sarfa_scores
from .settings import (
    Incremental,
    JacobianBackend,
    LimeSettings,
    OcclusionSettings,
    RiseSettings,
    SaliencyConfig,
    SarfaSettings,
    check_incremental,
    check_passes_settings,
    check_perturbations_per_eval,
    map_prefix,
    memory_budget,
    plain_numbers,
    sarfa_geometry,
    selected_methods,
)

__all__ = ["SaliencyConfig", "compute_saliency", "paper_shift"]


def paper_shift(states: State, previous: State | None = None) -> State:
    """The original code's off-by-one (spec, section 7): frame t gets the state the agent had one step
    earlier than the one it used (``states[t-1]``). ``previous`` is the state before the first frame (a
    chunk's predecessor); without one, the first frame gets the zero state of an episode start."""
    if previous is None:
        previous = tuple(torch.zeros_like(s[:1]) for s in states)
    return tuple(torch.cat([p.to(s.device, s.dtype), s[:-1]]) for p, s in zip(previous, states))


def actions_needed(s: SaliencyConfig, methods: tuple[str, ...]) -> list[str]:
    """The settings of ``s``'s selected ``methods`` that score the action taken (so need ``actions``)."""
    needing = []
    if "perturbation" in methods and s.score == "action_logprob":
        needing.append("score='action_logprob'")
    if "occlusion" in methods and s.occlusion.response == "action_prob":
        needing.append("occlusion.response='action_prob'")
    for name in ("rise", "lime"):  # their responses of the action taken: its probability or its logit
        if name in methods and getattr(s, name).response != "value":
            needing.append(f"{name}.response={str(getattr(s, name).response)!r}")
    return needing


def compute_saliency(
    agent: Policy,
    frames: np.ndarray | torch.Tensor,
    states: State,
    s: SaliencyConfig,
    progress: bool = False,
    actions: np.ndarray | torch.Tensor | None = None,
    frame_indices: Sequence[int] | np.ndarray | torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Maps (and score grids) of every frame for every method ``s.method`` selects, scored ``s.frames_per_batch``
    frames at a time (CPU tensors).

    Arrays, by method (:func:`engine.core.settings.map_names`): the 2017 method's ``actor``, ``critic``,
    ``actor_scores``, ``critic_scores``; the Jacobian's ``jacobian_actor``, ``jacobian_critic`` (``actor`` and
    ``critic`` when it runs alone); ``occlusion_actor``, ``occlusion_critic`` and their window scores
    ``occlusion_actor_scores``, ``occlusion_critic_scores``; ``rise_actor``, ``rise_critic``; ``lime_actor``,
    ``lime_critic``; ``sarfa_actor`` and its score grid ``sarfa_actor_scores`` (no critic map). Each equals its
    engine function called with ``s``'s settings on all the frames at once.

    ``actions`` (N,): the action taken on each frame, needed by ``score="action_logprob"`` and the responses of
    the action taken (occlusion, RISE, LIME). ``frame_indices`` (N,): each frame's index in its rollout, which
    seeds its RISE masks and LIME samples (default ``0..N-1``), so that a rollout's frames scored in several
    calls get the maps of one call."""
    for name, kind in (
        ("occlusion", OcclusionSettings),
        ("rise", RiseSettings),
        ("lime", LimeSettings),
        ("sarfa", SarfaSettings),
    ):
        if not isinstance(getattr(s, name), kind):
            raise TypeError(
                f"{name} must be an engine.core.settings.{kind.__name__} (e.g. {name}={kind.__name__}(...)), got "
                f"{type(getattr(s, name)).__name__}"
            )
    s = plain_numbers(s)  # numpy scalars (a sweep over np.arange) as the numbers they hold
    methods = selected_methods(s.method)
    check_passes_settings(s)
    if isinstance(s.frames_per_batch, bool) or not isinstance(s.frames_per_batch, int) or s.frames_per_batch < 1:
        raise ValueError(
            f"frames_per_batch must be an integer >= 1 (frames scored together), got {s.frames_per_batch!r}"
        )
    # checked whichever methods run, as the app checks them
    check_perturbations_per_eval(s.perturbations_per_eval)
    memory_budget(s.memory_budget_mb)
    n = frames.shape[0]
    # the forms perturbation_saliency takes: None (a feed-forward agent's empty state), one tensor, a tuple
    states = () if states is None else (states,) if isinstance(states, torch.Tensor) else states
    if not isinstance(states, (tuple, list)):
        raise TypeError(f"states must be a tuple of tensors (or None, or one tensor), got {type(states).__name__}")
    rows = sorted({int(part.shape[0]) for part in states})
    if rows and rows != [n]:  # () is a feed-forward agent's state
        raise ValueError(
            f"state/frame count mismatch: {n} frames but state rows {rows}; pass the state the agent used on each "
            "frame (e.g. rollout.states for rollout.frames)"
        )
    indices = torch.arange(n) if frame_indices is None else torch.as_tensor(frame_indices)
    if indices.shape != (n,):
        raise ValueError(f"frame_indices must hold one index per frame ({n}), got shape {tuple(indices.shape)}")
    # checked once for the whole call, before any work (each batch checks its slice again)
    needing = actions_needed(s, methods)
    if needing and actions is None:
        raise ValueError(f"{' and '.join(needing)} need the action taken on each frame: pass actions=rollout.actions")
    if actions is not None:
        actions = _check_actions(actions, n, agent.num_actions, agent.device)
    if "jacobian" in methods and s.jacobian_backend not in tuple(JacobianBackend):
        raise ValueError(f"jacobian_backend must be one of {', '.join(JacobianBackend)}, got {s.jacobian_backend!r}")
    # an Incremental member or its name ("auto", "true", "false"); else the value itself (True, False)
    named = isinstance(s.incremental, str) and s.incremental in tuple(Incremental)
    incremental = check_incremental(Incremental(s.incremental).setting if named else s.incremental)
    ppe, budget = s.perturbations_per_eval, s.memory_budget_mb
    batches = [(a, min(a + s.frames_per_batch, n)) for a in range(0, n, s.frames_per_batch)]
    parts: dict[str, list[torch.Tensor]] = {}

    def keep(method: str, result: object, keys: tuple[str, ...]) -> None:
        prefix = map_prefix(method, methods)
        for key in keys:
            parts.setdefault(prefix + key, []).append(getattr(result, key).detach().cpu())

    # SARFA with the 2017 method's blur and masks reads its scores off that method's passes: no pass of its own.
    # Not off fast passes: their extra scores would put the 2017 maps back on the exact path.
    sarfa_shares = (
        "perturbation" in methods
        and s.precision == "exact"
        and "sarfa" in methods
        and s.sarfa.perturbation == "blur"
        and sarfa_geometry(s) == (s.radius, s.density)
    )
    if sarfa_shares:
        check_sarfa_agent(agent)
    grid_size = cast(tuple[int, int], tuple(agent.observation_shape[1:]))
    bar = tqdm(total=n, desc="saliency", unit="frame", disable=None if progress else True)
    for a, b in batches:
        state = index_state(states, slice(a, b))
        taken = None if actions is None else actions[a:b]
        if "perturbation" in methods:
            result = perturbation_saliency(
                agent,
                frames[a:b],
                state,
                radius=s.radius,
                density=s.density,
                interp=s.interp,
                blur_sigma=s.blur_sigma,
                compat=s.compat,
                incremental=incremental,
                tf32=s.tf32,
                score=str(s.score),
                compile=s.compile,
                precision=str(s.precision),
                actions=taken,
                perturbations_per_eval=ppe,
                memory_budget_mb=budget,
                extra_actor_scores={"sarfa": sarfa_scores} if sarfa_shares else None,
            )
            keep("perturbation", result, ("actor", "critic", "actor_scores", "critic_scores"))
        if "jacobian" in methods:
            jac = jacobian_saliency(agent, frames[a:b], state, backend=s.jacobian_backend, tf32=s.tf32)
            keep("jacobian", jac, ("actor", "critic"))
        if "occlusion" in methods:
            o = s.occlusion
            occluded = occlusion_sensitivity(
                agent,
                frames[a:b],
                state,
                window=o.window,
                stride=o.stride,
                baseline=str(o.baseline),
                value=o.value,
                response=str(o.response),
                actions=taken,
                perturbations_per_eval=ppe,
                memory_budget_mb=budget,
                incremental=incremental,
            )
            keep("occlusion", occluded, ("actor", "critic", "actor_scores", "critic_scores"))
        if "rise" in methods:
            r = s.rise
            rise = rise_saliency(
                agent,
                frames[a:b],
                state,
                num_masks=r.num_masks,
                p=r.p,
                cell=r.cell,
                seed=r.seed,
                response=str(r.response),
                actions=taken,
                baseline=r.baseline,
                frame_indices=indices[a:b],
                perturbations_per_eval=ppe,
                memory_budget_mb=budget,
            )
            keep("rise", rise, ("actor", "critic"))
        if "lime" in methods:
            li = s.lime
            lime = lime_saliency(
                agent,
                frames[a:b],
                state,
                num_samples=li.num_samples,
                cell=li.cell,
                seed=li.seed,
                response=str(li.response),
                actions=taken,
                hide_value=li.hide_value,
                kernel_width=li.kernel_width,
                alpha=li.alpha,
                frame_indices=indices[a:b],
                perturbations_per_eval=ppe,
                memory_budget_mb=budget,
            )
            keep("lime", lime, ("actor", "critic"))
        if sarfa_shares:  # from the 2017 method's passes above
            grid = result.extra_scores["sarfa"]
            sarfa = sarfa_result(grid, s.radius, s.density, str(s.interp), s.blur_sigma, "blur", grid_size)
            keep("sarfa", sarfa, ("actor", "actor_scores"))
        elif "sarfa" in methods:
            radius, density = sarfa_geometry(s)
            sarfa = sarfa_saliency(
                agent,
                frames[a:b],
                state,
                radius=radius,
                density=density,
                interp=str(s.interp),
                blur_sigma=s.blur_sigma,
                perturbation=str(s.sarfa.perturbation),
                incremental=incremental,
                tf32=s.tf32,
                perturbations_per_eval=ppe,
                memory_budget_mb=budget,
            )
            keep("sarfa", sarfa, ("actor", "actor_scores"))
        bar.update(b - a)
    bar.close()
    return {k: torch.cat(v) for k, v in parts.items()}
