"""Reading untrusted checkpoint files: every way a file can be wrong ends in a :class:`CheckpointError` that names
the file and the problem, and nothing in a file ever runs.

``torch.load(weights_only=True)`` builds tensors and plain containers only (no code runs); its own allocations are
bounded by the file (a zip record must hold exactly the bytes a storage claims; a legacy file's storages are read
from the file). The sizes an agent is built from are then checked against bounds and against each other before
any module is allocated, and the weights must be finite floating-point numbers of plausible size. Every loader of
:mod:`engine.policies` reads through these checks.
"""

from __future__ import annotations

import math
import os
import pickle
import re
import warnings
import zipfile
from collections.abc import Callable
from typing import TypeVar, cast

import torch
from torch import nn

from ..core.errors import CheckpointError
from ..core.policy import Policy, PolicyOutput

_NESTED_KEYS = ("state_dict", "model_state_dict", "model")
_LEGACY_MAGIC = b"\x8a\x0a" + (0x1950A86A20F9469CFC6C).to_bytes(10, "little")
MAX_ACTIONS, MAX_HIDDEN, MAX_CHANNELS = 1024, 4096, 64
MAX_ABS_WEIGHT = 1e6
ModuleT = TypeVar("ModuleT", bound=nn.Module)
_FIX = "pass a file written by torch.save(model.state_dict(), path)"


def torch_reason(exc: BaseException) -> str:
    """torch's reason for refusing a file, in one line, without its advice on loading untrusted files."""
    text = str(exc)
    if "WeightsUnpickler error:" in text:
        text = text.split("WeightsUnpickler error:", 1)[1]
    text = re.sub(r"expected %ld got %ld\d*", "the sizes recorded in the file disagree", text)
    unwanted = re.compile(r"weights_only|arbitrary code|trusted source|safe_globals|file an issue|documentation", re.I)
    kept = [
        sentence.rstrip(".")
        for line in text.splitlines()
        for sentence in re.split(r"(?<=[.!?])\s+", line.strip())
        if sentence and not unwanted.search(sentence)
    ]
    reason = ". ".join(kept[:2])[:240]
    return f"{type(exc).__name__}: {reason}" if reason else type(exc).__name__


def _describe_unknown(head: bytes) -> str:
    """What a file that is no torch.save output looks like, for the error message."""
    sample = head[:512]
    try:
        text = sample.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    if text is not None and all(c.isprintable() or c in "\t\r\n" for c in text):
        first = text.strip().splitlines()[0][:60] if text.strip() else ""
        return f"it is a text file (it starts with {first!r})"
    return f"it starts with the bytes {sample[:8].hex(' ')}, neither a zip archive nor torch.save's legacy format"


def _check_format(path: str) -> None:
    """Refuse, with the reason, a file that cannot be a ``torch.save``d state dict, before torch parses it."""
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            head = f.read(1024)
    except OSError as exc:
        raise CheckpointError(f"checkpoint {path!r} cannot be read ({exc.strerror or exc})") from exc
    if size == 0:
        raise CheckpointError(f"{path!r} is not a torch checkpoint: the file is empty (0 bytes); {_FIX}")
    if head.startswith(b"PK\x03\x04"):
        try:
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
        except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:  # truncated: no central directory
            raise CheckpointError(
                f"{path!r} is not a torch checkpoint: a damaged or truncated zip archive ({exc}); {_FIX}"
            ) from exc
        if any(n.endswith("/constants.pkl") or "/code/" in n for n in names):
            raise CheckpointError(
                f"{path!r} is a TorchScript archive (torch.jit.save), not a state dict: save the agent with "
                "torch.save(model.state_dict(), path)"
            )
        if not any(n.endswith("data.pkl") for n in names):
            raise CheckpointError(f"{path!r} is not a torch checkpoint: a zip archive without torch.save's data.pkl; {_FIX}")
        return
    if _LEGACY_MAGIC in head[:32]:  # after the pickle's PROTO (and, from protocol 4, FRAME) opcodes
        return
    if head.startswith(b"L" + str(int.from_bytes(_LEGACY_MAGIC[2:], "little")).encode()):
        raise CheckpointError(
            f"{path!r} is a legacy torch.save file pickled with protocol 0 or 1, which torch cannot read safely: "
            "re-save its state dict with torch.save(model.state_dict(), path) and the default protocol"
        )
    if head[257:262] == b"ustar":
        raise CheckpointError(
            f"{path!r} is in torch's pre-1.0 tar format, which cannot be read without running the code it may "
            "contain: re-save its state dict with torch.save(model.state_dict(), path) where you trust it"
        )
    raise CheckpointError(f"{path!r} is not a torch checkpoint: {_describe_unknown(head)}; {_FIX}")


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint {path!r} does not exist (or is not a file): check the path")
    _check_format(path)
    try:
        with warnings.catch_warnings(record=True) as caught:  # a damaged file also makes torch warn (odd protocol)
            warnings.simplefilter("always")
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a damaged file fails in many ways inside torch (Unpickling/Runtime/Assertion...)
        reason = torch_reason(exc)
        if isinstance(exc, pickle.UnpicklingError) and "Unsupported global" in str(exc):
            raise CheckpointError(
                f"{path!r} is not a torch checkpoint that loads safely: it holds Python objects other than tensors "
                f"and plain containers ({reason}), refused because loading them could run code, or it is damaged; "
                f"{_FIX}"
            ) from exc
        raise CheckpointError(
            f"{path!r} is not a torch checkpoint that loads safely: the file is damaged or truncated ({reason}); {_FIX}"
        ) from exc
    for w in caught:  # the file loaded: pass torch's warnings on; when it did not, the error says it all
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno, source=w.source)
    if isinstance(obj, dict):
        for key in _NESTED_KEYS:  # common wrappers: {"state_dict": {...}, "step": ...}
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()):
        raise CheckpointError(
            f"{path!r} holds a {type(obj).__name__}, not a state dict of tensors (names to tensors): "
            "save the agent with torch.save(model.state_dict(), path)"
        )
    # checkpoints saved from nn.DataParallel prefix every key with "module."
    if obj and all(k.startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return dict(obj)


def dims(state_dict: dict[str, torch.Tensor], key: str, ndim: int, source: str) -> tuple[int, ...]:
    if key not in state_dict:
        raise CheckpointError(f"{source}: missing tensor {key!r}: not an actor-critic agent of the spec")
    shape = tuple(state_dict[key].shape)
    if len(shape) != ndim:
        raise CheckpointError(f"{source}: {key} has shape {shape}, expected {ndim} dimensions")
    return shape


def check_weights(state_dict: dict[str, torch.Tensor], source: str) -> None:
    """Dense, stored (not expanded), floating point, finite and of plausible size, or a CheckpointError listing
    the offenders."""
    for key, t in state_dict.items():
        if t.layout != torch.strided or t.device.type == "meta":
            raise CheckpointError(f"{source}: {key} is a {t.layout} tensor on {t.device}, not dense stored weights")
        if not t.dtype.is_floating_point:
            raise CheckpointError(
                f"{source}: {key} has dtype {t.dtype}; an agent's weights are floating point (float32 as saved by "
                "torch.save(model.state_dict()))"
            )
        stored = t.untyped_storage().nbytes() - t.storage_offset() * t.element_size()
        if t.numel() * t.element_size() > stored:
            raise CheckpointError(
                f"{source}: {key} {tuple(t.shape)} has {t.numel()} values but only {stored // t.element_size()} "
                "are stored: an expanded (stride-0) or overlapping view, not trained weights"
            )
    with torch.no_grad():  # one reduction per tensor: NaN propagates through abs and amax
        peaks = {key: float(t.detach().abs().amax()) for key, t in state_dict.items()}
    bad = [
        f"{key} ({state_dict[key].numel() - int(torch.isfinite(state_dict[key].detach()).sum())} of {state_dict[key].numel()})"
        for key, peak in peaks.items()
        if not math.isfinite(peak)
    ]
    if bad:
        raise CheckpointError(
            f"{source}: non-finite (NaN or inf) weights in {', '.join(bad)}: the file is corrupt or the training "
            "diverged; such an agent would give NaN saliency maps"
        )
    huge = [f"{key} (max |w| {peak:.3g})" for key, peak in peaks.items() if peak > MAX_ABS_WEIGHT]
    if huge:
        raise CheckpointError(
            f"{source}: weights far beyond any trained agent's (|w| > {MAX_ABS_WEIGHT:g}) in {', '.join(huge)}: the "
            "file is corrupt (a flipped exponent bit multiplies a weight by 2^128) or not a trained agent"
        )


def load_checked(module: ModuleT, state_dict: dict, source: str, device=None, dtype=None) -> ModuleT:
    """Load checked weights into a policy module, move it, put it in eval mode and take the finite-output test step
    (:func:`check_finite_outputs`); every failure is a :class:`CheckpointError` naming ``source``."""
    try:
        module.load_state_dict(state_dict)
    except RuntimeError as exc:  # unreachable after the shape checks, kept so nothing escapes as another type
        raise CheckpointError(f"{source}: the weights do not load into {type(module).__name__} ({torch_reason(exc)})") from exc
    module = module.to(device=device, dtype=dtype).eval()
    check_finite_outputs(cast(Policy, module), source)  # every module loaded here is one of the engine's policies
    return module


def check_keys_and_shapes(state_dict: dict, expected: dict[str, tuple], source: str, architecture: str, hint: str = "",
                          supported: str = "") -> None:
    """Raise :class:`CheckpointError` unless ``state_dict`` has exactly the keys of ``expected`` (name -> shape,
    e.g. from the architecture built on the ``meta`` device) with those shapes; ``supported`` (what the loader
    supports) is appended to a key error, ``hint`` to a shape error."""
    missing = sorted(set(expected) - set(state_dict))
    extra = sorted(set(state_dict) - set(expected))
    if missing or extra:
        raise CheckpointError(
            f"{source}: keys do not match {architecture}: missing {missing or 'none'}, unexpected {extra or 'none'}"
            + (f"; {supported}" if supported else "")
        )
    wrong = [
        f"{k}: {tuple(state_dict[k].shape)} (expected {shape})"
        for k, shape in expected.items()
        if tuple(state_dict[k].shape) != shape
    ]
    if wrong:
        raise CheckpointError(f"{source}: tensors of the wrong shape for {architecture}: {'; '.join(wrong)}{hint}")


def check_finite_outputs(policy: Policy, source: str) -> None:
    """Bounded weights can still compound to an overflow through the layers: one test step on a black and a white
    observation must give finite outputs, else :class:`CheckpointError`."""
    frames = torch.zeros(2, *policy.observation_shape, device=policy.device, dtype=policy.dtype)
    frames[1] = 1.0
    with torch.inference_mode():
        call: Callable[..., PolicyOutput] = policy  # the engine's policies take batch_invariant beyond the protocol
        out = call(frames, policy.initial_state(2), batch_invariant=False)
    if not all(bool(torch.isfinite(t).all()) for t in (out.value, out.logits, *out.state)):
        raise CheckpointError(
            f"{source}: the weights are finite but the agent's outputs on a test frame are not (they overflow): "
            "the file is corrupt or not a trained agent"
        )
