"""The settings of a saliency computation, as plain data (no torch: the app checks them before importing it).

Choices are string enums, so plain strings compare equal to them and Hydra's structured configs accept them.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, is_dataclass, replace
from enum import StrEnum
from typing import Any

# Environment pipelines an agent can declare (``Policy.pipeline``); engine.env builds each one exactly as its
# library does, since the observation bytes differ between them.
PIPELINES = ("greydanus2017", "sb3_atari", "cleanrl_atari", "gymnasium_atari")

SIZE = 80  # side of the 2017 agents' square observation, in pixels
FRAME_SHAPE = (210, 160, 3)  # an Atari RGB frame (rows, columns, colours)


class Method(StrEnum):
    """The saliency methods; ``saliency.method`` takes one of them, or a list of them (several at once)."""

    perturbation = "perturbation"  # the 2017 method (Greydanus et al.), engine.core.perturbation
    jacobian = "jacobian"  # squared input gradients, engine.core.jacobian
    both = "both"  # perturbation maps, with the Jacobian maps beside them: [perturbation, jacobian]
    occlusion = "occlusion"  # occlusion sensitivity (Zeiler and Fergus; captum's Occlusion), engine.core.occlusion
    rise = "rise"  # RISE (Petsiuk et al.), engine.core.rise
    lime = "lime"  # LIME (Ribeiro et al.), engine.core.lime
    sarfa = "sarfa"  # SARFA (Puri et al.), engine.core.sarfa; an actor map only


# the methods that compute maps, in the order they run and are listed (``both`` is perturbation + jacobian)
METHODS = ("perturbation", "jacobian", "occlusion", "rise", "lime", "sarfa")
PREFIXED = ("occlusion", "rise", "lime", "sarfa")  # the methods with settings of their own (``saliency.<method>.*``)


class OcclusionBaseline(StrEnum):
    constant = "constant"  # occlusion.value, in the [0, 1] observation scale
    mean = "mean"  # the frame's mean
    blur = "blur"  # the frame's Gaussian blur (sigma 3)


class OcclusionResponse(StrEnum):
    action_prob = "action_prob"  # softmax probability of the action taken (captum on the policy's probabilities)
    logits = "logits"  # 0.5 * ||L - l||^2 over the action preferences (the 2017 method's score)
    value = "value"  # the critic's value


class Response(StrEnum):
    """What RISE's and LIME's actor maps explain."""

    action_prob = "action_prob"  # softmax probability of the action taken (the papers' class probability)
    action_logit = "action_logit"  # its preference (a Q-network's Q-value)
    value = "value"  # the critic's value


class SarfaPerturbation(StrEnum):
    blur = "blur"  # the 2017 method's masks and blur (Puri et al.'s code)
    disc = "disc"  # black discs (Huber, Limmer and André's benchmark: radius 2, every 2 pixels)


@dataclass
class OcclusionSettings:
    """``saliency.occlusion``: :func:`engine.core.occlusion.occlusion_sensitivity`'s settings (its defaults)."""

    window: int = 8  # side of the square windows, in observation pixels
    stride: int = 4  # step between windows (<= window)
    baseline: OcclusionBaseline = OcclusionBaseline.constant
    value: float = 0.0  # the constant baseline
    response: OcclusionResponse = OcclusionResponse.action_prob


@dataclass
class RiseSettings:
    """``saliency.rise``: :func:`engine.core.rise.rise_saliency`'s settings (its defaults)."""

    num_masks: int = 1000  # masks per frame (N)
    p: float = 0.5  # probability that a cell is kept
    cell: int = 8  # side of a grid cell, in observation pixels
    seed: int = 0  # with each frame's index in the rollout, seeds that frame's masks
    response: Response = Response.action_prob
    baseline: float = 0.0  # what a masked-out pixel becomes (0: black)


@dataclass
class LimeSettings:
    """``saliency.lime``: :func:`engine.core.lime.lime_saliency`'s settings (its defaults)."""

    num_samples: int = 1000  # on/off samples per frame (the first is the frame itself)
    cell: int = 10  # side of the square superpixels, in observation pixels
    seed: int = 0  # with each frame's index in the rollout, seeds that frame's samples
    response: Response = Response.action_prob
    hide_value: float = 0.0  # what a hidden superpixel becomes (lime's hide_color)
    kernel_width: float = 0.25
    alpha: float = 1.0  # ridge penalty


@dataclass
class SarfaSettings:
    """``saliency.sarfa``: :func:`engine.core.sarfa.sarfa_saliency`'s settings. ``interp`` and ``blur_sigma`` are
    the 2017 method's (``saliency.interp``, ``saliency.blur_sigma``)."""

    perturbation: SarfaPerturbation = SarfaPerturbation.blur
    radius: float | None = None  # null: saliency.radius with the blur (the 2017 method's masks), 2 with the disc
    density: int | None = None  # null: saliency.density with the blur, 2 with the disc


class Interp(StrEnum):
    occlude = "occlude"  # blur inside the mask
    searchlight = "searchlight"  # blur outside the mask


class Compat(StrEnum):
    exact = "exact"
    paper = "paper"  # byte-scaled upsampling with the zero row/column (spec section 7)


class Score(StrEnum):
    logit_l2 = "logit_l2"  # the paper's 0.5 * ||L - l||^2 over the action preferences
    action_logprob = "action_logprob"  # |log pi(a|I) - log pi(a|I')| for the action the agent took


class Precision(StrEnum):
    exact = "exact"  # float32 forward passes of every perturbed copy
    fast = "fast"  # delta propagation, linear products as three bfloat16 products (engine.core.delta; GPUs)


class StateAlignment(StrEnum):
    exact = "exact"
    paper = "paper"  # the original code's off-by-one recurrent state


class JacobianBackend(StrEnum):
    autograd = "autograd"  # one autograd.grad per head
    func = "func"  # torch.func.vjp, its pullback vmapped over the heads


class Incremental(StrEnum):
    """Exact incremental inference on conv windows: ``auto`` decides from radius and density."""

    auto = "auto"
    true = "true"
    false = "false"

    @property
    def setting(self) -> bool | str:
        """The value :func:`engine.core.perturbation.perturbation_saliency` takes: True, False or "auto"."""
        settings: dict[str, bool | str] = {"auto": "auto", "true": True, "false": False}
        return settings[self.value]


@dataclass
class SaliencyConfig:
    """Settings of :func:`compute_saliency`; also the schema of the app's ``saliency`` config group (the
    choices are string enums, so plain strings compare equal to them)."""

    # a Method or a list of them (OmegaConf's structured configs cannot type a "name or list of names": checked by
    # selected_methods, and by engine.jobs.config.check_config with one line naming the key)
    method: Any = Method.perturbation
    radius: float = 5.0  # mask sigma, in observation pixels
    density: int = 5  # grid step in observation pixels: 16x16 = 256 perturbations per 80x80 frame, 17x17 on 84x84
    interp: Interp = Interp.occlude
    score: Score = Score.logit_l2
    blur_sigma: float = 3.0
    compat: Compat = Compat.exact
    state_alignment: StateAlignment = StateAlignment.exact
    perturbations_per_eval: int | None = None  # perturbed inputs per forward pass; None: device default / memory budget
    memory_budget_mb: float | None = None
    incremental: Incremental = Incremental.auto  # or, from Python, True | False | "auto"
    frames_per_batch: int = 32  # frames scored together (progress and memory granularity)
    jacobian_backend: JacobianBackend = JacobianBackend.autograd
    tf32: bool = False  # CUDA only: TF32 convolutions and products (faster, ~6e-4 relative error)
    compile: bool = False  # torch.compile each perturbed forward pass (inductor; a C++ compiler on the CPU)
    precision: Precision = Precision.exact  # fast: delta propagation in split bfloat16 (1e-5 to 6e-5 of the map max)
    occlusion: OcclusionSettings = field(default_factory=OcclusionSettings)
    rise: RiseSettings = field(default_factory=RiseSettings)
    lime: LimeSettings = field(default_factory=LimeSettings)
    sarfa: SarfaSettings = field(default_factory=SarfaSettings)


INTERPS = tuple(Interp)
SCORES = tuple(Score)
COMPATS = tuple(Compat)


def plain_number(value: Any) -> Any:
    """A numpy scalar (``np.int64(5)``, ``np.float32(5)``: what a sweep over ``np.arange`` gives) as the Python number
    it holds; anything else as it is, so the checks below refuse it (a bool, numpy's too, is no number here).

    >>> import numpy as np
    >>> plain_number(np.int64(5)), plain_number(np.float32(0.5)), plain_number(np.True_), plain_number("5")
    (5, 0.5, np.True_, '5')
    """
    if isinstance(value, numbers.Number) and not isinstance(value, (bool, int, float)) and hasattr(value, "item"):
        return value.item()
    return value


def plain_numbers(settings: Any) -> Any:
    """A settings dataclass (:class:`SaliencyConfig`, its methods' settings) with every numpy scalar in it, nested
    settings included, made the Python number it holds (:func:`plain_number`)."""
    changes = {}
    for f in fields(settings):
        value = getattr(settings, f.name)
        plain = plain_numbers(value) if is_dataclass(value) and not isinstance(value, type) else plain_number(value)
        if plain is not value:
            changes[f.name] = plain
    return replace(settings, **changes) if changes else settings


def check_incremental(incremental: object) -> bool | str:
    """``True``, ``False`` or ``"auto"`` (numpy's bools as the bools they hold); anything else, ``0`` and ``"false"``
    included, is refused: ``0 == False`` would otherwise pass as a request for windows."""
    numpy_bool = getattr(getattr(incremental, "dtype", None), "kind", None) == "b" and not getattr(
        incremental, "ndim", 1
    )
    if isinstance(incremental, bool) or numpy_bool:
        return bool(incremental)  # a bool, or numpy's scalar bool (kind "b", no dimensions)
    if isinstance(incremental, str) and incremental == "auto":
        return "auto"
    raise ValueError(f"incremental must be True, False or 'auto', got {incremental!r}")


def check_perturbations_per_eval(perturbations_per_eval: object) -> int | None:
    """A positive integer (a numpy one too) or None (the memory budget decides), as a Python int or None."""
    value = plain_number(perturbations_per_eval)
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ValueError(
            f"perturbations_per_eval must be a positive integer or None (use the memory budget), got "
            f"{perturbations_per_eval!r}"
        )
    return value


def _in_range(value: object, side: int | None) -> bool:
    """Whether ``value`` is a finite real number in (0, side] (no upper bound when ``side`` is None)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return False
    return 0 < value <= (side if side is not None else value)


def validate_radius_density(
    radius: float,
    density: int,
    size: tuple[int, int] | None = (SIZE, SIZE),
    radius_is: str = "the mask blur sigma; the paper uses 5",
) -> None:
    """Raise ``ValueError`` unless ``0 < radius <= max(H, W)`` and ``density`` is an integer in 1..max(H, W)
    (80 for the 2017 observation), in observation pixels. With ``size=None`` the upper bounds wait for the agent's
    observation: a config is checked before its agent is loaded, and an 84x84 agent takes a density of 84."""
    side = max(size) if size else None
    if isinstance(density, bool) or not isinstance(density, int):
        bound = f"in 1..{side}" if side is not None else ">= 1"
        raise ValueError(f"density must be an integer grid step {bound}, got {density!r}")
    if not 1 <= density <= (side if side is not None else density):
        bound = f"in 1..{side}" if side is not None else "an integer >= 1"
        raise ValueError(f"density must be {bound} (pixels between mask centers; the paper uses 5), got {density}")
    if not _in_range(radius, side):
        bound = f"a number in (0, {side:g}]" if side is not None else "a finite number > 0"
        raise ValueError(f"radius must be {bound} ({radius_is}), got {radius!r}")


def validate_settings(
    radius: float,
    density: int,
    interp: str,
    blur_sigma: float,
    compat: str,
    size: tuple[int, int] | None = (SIZE, SIZE),
    radius_is: str = "the mask blur sigma; the paper uses 5",
) -> None:
    """Raise ``ValueError`` naming the bad setting and its allowed values (sizes in pixels of an (H, W) observation;
    ``None``: the bounds that depend on it wait for the agent; ``radius_is``: what the radius is, in a refusal)."""
    validate_radius_density(radius, density, size, radius_is)
    if interp not in INTERPS:
        raise ValueError(f"interp must be one of {tuple(str(i) for i in INTERPS)}, got {interp!r}")
    if compat not in COMPATS:
        raise ValueError(f"compat must be one of {tuple(str(c) for c in COMPATS)}, got {compat!r}")
    side = max(size) if size else None
    if not _in_range(blur_sigma, side):
        bound = f"a number in (0, {side:g}]" if side is not None else "a finite number > 0"
        raise ValueError(f"blur_sigma must be {bound} (the paper uses 3), got {blur_sigma!r}")


# --- the methods a config selects, their arrays and their settings ----------------------------------------------

METHOD_CHOICES = tuple(str(m) for m in Method)
# every map array a saliency computation can give (maps (H, W) of the observation), in the order they are listed
MAP_KINDS = (
    "actor",
    "critic",
    "jacobian_actor",
    "jacobian_critic",
    "occlusion_actor",
    "occlusion_critic",
    "rise_actor",
    "rise_critic",
    "lime_actor",
    "lime_critic",
    "sarfa_actor",
)


def selected_methods(method: object) -> tuple[str, ...]:
    """The methods ``method`` selects, each once, in :data:`METHODS` order: a name of :class:`Method` (``"both"``:
    perturbation and jacobian) or a non-empty list of names. Raise ``ValueError`` naming the bad entry."""
    names = [method] if isinstance(method, str) else method
    if not isinstance(names, Sequence) or not names:
        raise ValueError(
            f"method must be one of {', '.join(METHOD_CHOICES)} or a non-empty list of them, got {method!r}"
        )
    chosen: set[str] = set()
    for name in names:
        if not isinstance(name, str) or name not in METHOD_CHOICES:
            where = "" if names is not method else f" in {list(names)!r}"
            raise ValueError(
                f"method must be one of {', '.join(METHOD_CHOICES)} (or a list of them), got {name!r}{where}"
            )
        chosen.update(("perturbation", "jacobian") if name == "both" else (str(name),))
    return tuple(m for m in METHODS if m in chosen)


def method_label(methods: Sequence[str]) -> str | list[str]:
    """The canonical form of a selection of methods (:func:`selected_methods`), as stores record it: one name, ``both``
    for perturbation and jacobian (so stores written before the list form resume), else the list."""
    methods = tuple(methods)
    if methods == ("perturbation", "jacobian"):
        return "both"
    return methods[0] if len(methods) == 1 else list(methods)


def map_prefix(method: str, methods: Sequence[str]) -> str:
    """The prefix of ``method``'s arrays among ``methods``: none for the 2017 method (``actor``, ``critic``,
    ``actor_scores``, ``critic_scores``) and for the Jacobian on its own (``method=jacobian``, as before), else
    ``<method>_`` (``jacobian_actor``, ``rise_critic``, ``sarfa_actor``, ...)."""
    if method == "perturbation" or (method == "jacobian" and tuple(methods) == ("jacobian",)):
        return ""
    return f"{method}_"


def map_names(methods: Sequence[str]) -> dict[str, tuple[str, ...]]:
    """Each selected method's map arrays: its actor map, then its critic map (SARFA has none)."""
    heads = {m: ("actor",) if m == "sarfa" else ("actor", "critic") for m in methods}
    return {m: tuple(map_prefix(m, methods) + head for head in heads[m]) for m in methods}


def occlusion_grid(size: tuple[int, int], window: int, stride: int) -> tuple[int, int]:
    """Occlusion windows along the rows and the columns of an (H, W) observation, placed as captum places them."""
    return tuple(math.ceil((n - window) / stride) + 1 for n in size)  # type: ignore[return-value]


def sarfa_geometry(s: SaliencyConfig) -> tuple[float, int]:
    """SARFA's ``(radius, density)``: ``saliency.sarfa``'s where set; else with the blur the 2017 method's own
    (``saliency.radius``, ``saliency.density``: the same masks), with the disc Huber et al.'s 2 and 2."""
    default_radius, default_density = (s.radius, s.density) if s.sarfa.perturbation == "blur" else (2.0, 2)
    radius = default_radius if s.sarfa.radius is None else s.sarfa.radius
    density = default_density if s.sarfa.density is None else s.sarfa.density
    return radius, density


def _integer(value: object, low: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


def _finite(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _choice(name: str, value: object, enum: type[StrEnum]) -> None:
    choices = tuple(str(c) for c in enum)
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}, got {value!r}")


def grid_cells(size: tuple[int, int], cell: int) -> tuple[int, int]:
    """``(s_h, s_w)``: cells of side ``cell`` that cover an ``(H, W)`` observation, ``ceil(H / cell)`` and so on
    (RISE's grid, LIME's superpixels)."""
    return math.ceil(size[0] / cell), math.ceil(size[1] / cell)


DEFAULT_MEMORY_BUDGET_MB = 1024.0


def memory_budget(memory_budget_mb: float | None) -> float:
    """The memory budget in megabytes: ``memory_budget_mb``, checked, or :data:`DEFAULT_MEMORY_BUDGET_MB` for None."""
    budget = DEFAULT_MEMORY_BUDGET_MB if memory_budget_mb is None else plain_number(memory_budget_mb)
    if isinstance(budget, bool) or not isinstance(budget, (int, float)) or not (0 < budget < math.inf):
        raise ValueError(
            f"memory_budget_mb must be a finite number of megabytes > 0 (or None), got {memory_budget_mb!r}"
        )
    return float(budget)


def draws_bytes(method: str, count: int, frames: int, size: tuple[int, int], cell: int, itemsize: int = 4) -> int:
    """Bytes that RISE's masks or LIME's samples hold beside the passes, for ``frames`` frames of ``count`` draws
    each, their responses and sums or fits in floats of ``itemsize`` bytes: the draws of the frames scored together
    are made before their first pass (so that they never depend on the passes' sizes), each draw's responses are
    kept, and LIME fits those frames' samples at once (as floats, repeated for the actor's and the critic's fit,
    centred and weighted). While a frame's draws are made, its raw float64 uniforms (RISE) or int64 integers (LIME)
    exist too.

    >>> round(draws_bytes("rise", 1000, 32, (80, 80), 8) / 2**20, 1)  # the defaults: 10x10 cells
    4.8
    >>> round(draws_bytes("lime", 1000, 32, (80, 80), 10) / 2**20, 1)  # 8x8 superpixels
    73.2
    """
    cells = math.prod(grid_cells(size, cell))
    responses = 4 * itemsize  # the actor's and the critic's, and their copies for the sums or the fit
    if method == "lime":
        per_draw = cells * (1 + 9 * itemsize) + responses
    else:  # a grid of bools and a crop offset (two int64)
        per_draw = cells + 2 * 8 + responses
    return frames * count * per_draw + count * cells * 8


def _megabytes(size: float) -> str:
    """``size`` bytes in megabytes, with the digits that tell small sizes apart (``0.05 MB``, ``1,024 MB``)."""
    mb = size / 2**20
    return f"{mb:,.0f} MB" if mb >= 10 else f"{mb:.2g} MB"


def draw_group(
    method: str,
    count: int,
    frames: int,
    size: tuple[int, int],
    cell: int,
    memory_budget_mb: float | None,
    names: Mapping[str, str],
    itemsize: int = 4,
) -> int:
    """How many of ``frames`` frames a RISE or LIME call draws (and LIME fits) at once within the memory budget
    (:func:`draws_bytes`): all of them, or fewer, scored a group at a time with the same maps (each frame's draws
    depend on its index alone). Refuses, before anything is allocated, a count whose draws for one frame exceed the
    budget. ``names`` gives the settings to name: ``count`` (num_masks or num_samples) and ``budget``."""
    budget = memory_budget(memory_budget_mb) * 2**20
    one = draws_bytes(method, count, 1, size, cell, itemsize)
    if one > budget:
        draws = "masks" if method == "rise" else "samples and their fit"
        raise ValueError(
            f"{names['count']}={count:,} needs about {_megabytes(one)} per frame for the {draws}, more than the "
            f"memory budget of {_megabytes(budget)}: lower it, or raise {names['budget']}"
        )
    more = draws_bytes(method, count, 2, size, cell, itemsize) - one  # each further frame
    return max(1, min(frames, 1 + int((budget - one) // more)))


def check_passes_settings(s: SaliencyConfig, prefix: str = "") -> None:
    """Refuse ``precision="fast"`` and ``compile=True`` where no method of ``s`` runs the 2017 method's passes, the
    only ones they change: the other methods would run exact and uncompiled without a word. ``prefix`` goes before
    each setting's name (``"saliency."`` in the app)."""
    if s.precision not in tuple(Precision):
        raise ValueError(f"{prefix}precision must be one of {', '.join(Precision)}, got {s.precision!r}")
    if not isinstance(s.compile, bool):
        raise ValueError(f"{prefix}compile must be true or false, got {s.compile!r}")
    methods = selected_methods(s.method)
    if "perturbation" in methods:
        return
    for key, value, default in (("precision", s.precision, "exact"), ("compile", s.compile, False)):
        if value != default:
            raise ValueError(
                f"{prefix}{key}={str(value).lower()} applies to the 2017 method's passes only, and "
                f"{prefix}method={','.join(methods)} makes none: add perturbation to {prefix}method, or leave "
                f"{prefix}{key} at {str(default).lower()}"
            )


def validate_method_settings(
    s: SaliencyConfig, size: tuple[int, int] | None = None, itemsize: int = 4, budget_name: str = "memory_budget_mb"
) -> None:
    """Raise ``ValueError`` naming the first bad per-method setting (``rise.num_masks must be ...``). Checks that
    depend on the observation's (H, W) ``size`` (a window larger than the observation, ...) need it; without it
    they wait for the agent (:func:`engine.jobs.run.validate_job`) or the engine function; ``itemsize``: the bytes
    of the floats RISE's sums and LIME's fit use (the agent's, at least float32's); ``budget_name``: the memory
    budget's name in a refusal (``saliency.memory_budget_mb`` in the app)."""
    o, r, li, sa = s.occlusion, s.rise, s.lime, s.sarfa
    side = max(size) if size else None
    # occlusion
    for name, value in (("window", o.window), ("stride", o.stride)):
        if not _integer(value, 1):
            raise ValueError(f"occlusion.{name} must be an integer >= 1 (pixels), got {value!r}")
    if size and o.window > min(size):
        raise ValueError(f"occlusion.window {o.window} is larger than the {size[0]}x{size[1]} observation")
    if o.stride > o.window:
        raise ValueError(
            f"occlusion.stride {o.stride} is larger than occlusion.window {o.window}: pixels between windows would "
            "have no attribution"
        )
    _choice("occlusion.baseline", o.baseline, OcclusionBaseline)
    if not (_finite(o.value) and 0 <= o.value <= 1):
        raise ValueError(
            f"occlusion.value must be in 0..1, the observations' scale (the constant baseline: 0 black, 1 white), "
            f"got {o.value!r}"
        )
    _choice("occlusion.response", o.response, OcclusionResponse)
    # RISE
    if not _integer(r.num_masks, 1):
        raise ValueError(f"rise.num_masks must be an integer >= 1, got {r.num_masks!r}")
    if not (_finite(r.p) and 0 < r.p <= 1):
        raise ValueError(f"rise.p (the probability that a cell is kept) must be in (0, 1], got {r.p!r}")
    # LIME
    if not _integer(li.num_samples, 2):
        raise ValueError(f"lime.num_samples must be an integer >= 2, got {li.num_samples!r}")
    for method, cell in (("rise", r.cell), ("lime", li.cell)):
        if not _integer(cell, 1) or (side is not None and cell > side):
            bound = f"in 1..{side}" if side is not None else ">= 1"
            raise ValueError(f"{method}.cell must be an integer {bound} (pixels), got {cell!r}")
    for method, seed in (("rise", r.seed), ("lime", li.seed)):
        if not _integer(seed, 0):
            raise ValueError(f"{method}.seed must be an integer >= 0, got {seed!r}")
    _choice("rise.response", r.response, Response)
    _choice("lime.response", li.response, Response)
    for name, fill in (("rise.baseline", r.baseline), ("lime.hide_value", li.hide_value)):
        if not (_finite(fill) and 0 <= fill <= 1):
            raise ValueError(
                f"{name} must be in 0..1, the observations' scale (a hidden pixel's value: 0 black, 1 white), "
                f"got {fill!r}"
            )
    if not (_finite(li.kernel_width) and li.kernel_width > 0):
        raise ValueError(f"lime.kernel_width must be a finite number > 0, got {li.kernel_width!r}")
    if not (_finite(li.alpha) and li.alpha >= 0):
        raise ValueError(f"lime.alpha must be a finite number >= 0 (the ridge penalty), got {li.alpha!r}")
    if li.alpha == 0 and size and li.num_samples <= (cells := math.prod(grid_cells(size, li.cell))):
        raise ValueError(
            f"lime.alpha=0 (no ridge penalty) fits {cells} superpixels and an intercept, which needs "
            f"lime.num_samples > {cells}, got {li.num_samples}: raise lime.num_samples or set lime.alpha > 0"
        )
    if size:  # a frame's draws must fit the budget (the frames of a call are drawn in groups that fit)
        for method, count, name, cell in (
            ("rise", r.num_masks, "num_masks", r.cell),
            ("lime", li.num_samples, "num_samples", li.cell),
        ):
            if method in selected_methods(s.method):
                names = {"count": f"{method}.{name}", "budget": budget_name}
                draw_group(method, count, 1, size, cell, s.memory_budget_mb, names, itemsize)
    # SARFA
    _choice("sarfa.perturbation", sa.perturbation, SarfaPerturbation)
    if sa.radius is not None and not (_finite(sa.radius) and sa.radius > 0):
        raise ValueError(f"sarfa.radius must be a number > 0 (or null: the default), got {sa.radius!r}")
    if sa.density is not None and not _integer(sa.density, 1):
        raise ValueError(f"sarfa.density must be an integer >= 1 (or null: the default), got {sa.density!r}")
    if size:
        radius, density = sarfa_geometry(s)
        try:
            validate_radius_density(radius, density, size, radius_is=SARFA_RADIUS_IS[str(sa.perturbation)])
        except ValueError as exc:
            raise ValueError(f"sarfa.{exc}") from None


# what SARFA's radius is, by its perturbation, where a refusal says it
SARFA_RADIUS_IS = {
    "blur": "the mask blur sigma; the paper uses 5",
    "disc": "the black disc's radius in pixels; Huber et al. use 2",
}


def identity_view(settings: Mapping[str, Any]) -> dict[str, Any]:
    """Saliency settings (a dict of :class:`SaliencyConfig`'s fields) as a store's identity records them: ``method``
    in its canonical form (:func:`method_label`) and the settings of the selected methods only, so that a store
    written before a method existed, or with other settings of a method it never ran, still resumes."""
    methods = selected_methods(settings["method"])
    view = {k: v for k, v in settings.items() if k not in PREFIXED or k in methods}
    view["method"] = method_label(methods)
    return view
