"""Reading untrusted checkpoint files: every way a file can be wrong ends in a :class:`CheckpointError` that names
the file and the problem, and nothing in a file ever runs.

``torch.load(weights_only=True)`` builds tensors and plain containers only (no code runs). The work it does is
bounded before it starts: in a zip file every record is held to its size in the zip directory (no record may lie
beyond the file or inflate more than :data:`MAX_INFLATION` times, none is listed twice or shares another's
bytes, and all together inflate at most :data:`MAX_TOTAL_INFLATION` times the file), the pickled structure
(``data.pkl``) to :data:`MAX_PICKLE_BYTES`, and the storages to what the tensors' shapes use, read from a first
pass that loads only the structure (``map_location="meta"``: shapes, no storage); torch then checks that each
storage record holds exactly the bytes its storage claims, and a legacy file's storages are read from the file
itself. The sizes an agent is built from are then checked against bounds and against each other before any module
is allocated, the tensors' strides before any arithmetic on them, and the weights must be finite floating-point
numbers of plausible size whose agent gives finite outputs. Every loader of :mod:`engine.policies` reads through
these checks.
"""

from __future__ import annotations

import io
import json
import math
import os
import pickle
import re
import warnings
import zipfile
from collections import Counter
from collections.abc import Callable, Sequence
from typing import TypeVar, cast

import numpy as np
import torch
from torch import nn

from ..core.errors import CheckpointError, EngineError
from ..core.policy import Policy, PolicyOutput

_NESTED_KEYS = ("state_dict", "model_state_dict", "model")
_LEGACY_MAGIC = b"\x8a\x0a" + (0x1950A86A20F9469CFC6C).to_bytes(10, "little")
MAX_ACTIONS, MAX_HIDDEN, MAX_CHANNELS = 1024, 4096, 64
MAX_ABS_WEIGHT = 1e6
ModuleT = TypeVar("ModuleT", bound=nn.Module)
_FIX = "pass a file written by torch.save(model.state_dict(), path)"
# torch.save pickles each tensor as its name, storage key, dtype, device, shape and strides, some 150 bytes: 4 MiB
# holds some 25,000 tensors, and an agent has tens. torch reads the record whole before unpickling it.
MAX_PICKLE_BYTES = 4 << 20
# Deflate reaches about 1000:1 on a run of one byte; trained weights shrink by a few percent and SB3's data JSON
# a few-fold, so a record inflating 100 times is no agent's. Records up to 1 MiB are spared: they cost little.
MAX_INFLATION, SMALL_RECORD = 100, 1 << 20
# All records together: an agent's archive is mostly weights (stored, or deflated by a few percent), so the sum of
# its records is about its size; 10 times bounds what reading one costs, however its records are arranged.
MAX_TOTAL_INFLATION = 10
# A module's state dict uses every byte of its storages (cuDNN's flattened RNN weights may leave some alignment
# padding): 1 MiB that no tensor reads is ample, where a small pickle can claim gigabytes for a few views.
MAX_UNUSED_STORAGE = 1 << 20
# SB3's data JSON nests 4 or 5 levels (policy_kwargs, net_arch, pi); json.loads recurses once a level
MAX_JSON_DEPTH = 64
OWN_NETWORK = "for a network of your own, load it yourself and wrap it with engine.policies.module.wrap_policy"
_STORAGE_RECORD = re.compile(r"[^/]+/data/[^/]+")  # torch.save's storages: <archive>/data/<key>


class NotACheckpoint(CheckpointError):
    """A file that is no torch checkpoint at all; ``found`` says what it is (for other loaders' messages)."""

    def __init__(self, message: str, found: str):
        super().__init__(message)
        self.found = found


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
    text = None
    for cut in range(4):  # the sample may end inside a multi-byte character
        try:
            text = sample[: len(sample) - cut].decode("utf-8")
            break
        except UnicodeDecodeError:
            continue
    if text is not None and all(c.isprintable() or c in "\t\r\n" for c in text):
        first = text.strip().splitlines()[0][:60] if text.strip() else ""
        if first[:1] in ("{", "["):
            return f"it is a JSON file (it starts with {first!r})"
        return f"it is a text file (it starts with {first!r})"
    return f"it starts with the bytes {sample[:8].hex(' ')}, neither a zip archive nor torch.save's legacy format"


def check_zip_entries(infos: Sequence[zipfile.ZipInfo], archive_size: int, source: str) -> None:
    """Refuse, from the zip directory alone (nothing inflated), entries that claim bytes beyond the archive or that
    would inflate more than :data:`MAX_INFLATION` times their compressed size, a name listed twice, entries whose
    compressed bytes overlap (a zip bomb's way of inflating one record many times), and records that together would
    inflate to more than :data:`MAX_TOTAL_INFLATION` times the archive. Python's zipfile and torch's reader both stop
    at the directory's ``file_size``, so once these hold the archive costs at most that much to read."""
    for info in infos:
        if info.header_offset + info.compress_size > archive_size:
            raise CheckpointError(
                f"{source}: its entry {info.filename!r} claims {info.compress_size} bytes from offset "
                f"{info.header_offset}, beyond the end of the {archive_size}-byte archive: a damaged or truncated zip"
            )
        if info.file_size > SMALL_RECORD and info.file_size > MAX_INFLATION * info.compress_size:
            raise CheckpointError(
                f"{source}: its entry {info.filename!r} would inflate from {info.compress_size} to {info.file_size} "
                f"bytes ({info.file_size // max(info.compress_size, 1)}:1, where weights and SB3's data compress a "
                f"few-fold at most): refused without inflating it; it is a zip bomb or no agent's file"
            )
    names = Counter(info.filename for info in infos)
    twice = next((name for name, count in names.items() if count > 1), None)
    if twice is not None:
        raise CheckpointError(
            f"{source}: its zip directory lists the entry {twice!r} {names[twice]} times, which no zip writer does: "
            "refused without inflating it; it is a zip bomb or a damaged archive"
        )
    ordered = sorted(infos, key=lambda info: info.header_offset)
    for info, following in zip(ordered, ordered[1:], strict=False):
        if info.header_offset + info.compress_size > following.header_offset:
            raise CheckpointError(
                f"{source}: its entries {info.filename!r} and {following.filename!r} share compressed bytes (from "
                f"offsets {info.header_offset} and {following.header_offset}), which no zip writer does: refused "
                "without inflating them; it is a zip bomb or a damaged archive"
            )
    total = sum(info.file_size for info in infos)
    if total > SMALL_RECORD and total > MAX_TOTAL_INFLATION * archive_size:
        raise CheckpointError(
            f"{source}: its records would inflate to {total} bytes in all from a {archive_size}-byte archive (more "
            f"than {MAX_TOTAL_INFLATION} times, where an agent's weights compress by a few percent): refused "
            "without inflating them; it is a zip bomb or no agent's file"
        )


def _check_torch_records(infos: Sequence[zipfile.ZipInfo], archive_size: int, name: str) -> None:
    """The records torch reads whole before it knows any tensor's shape (``data.pkl`` and the small ones beside it)
    are held to :data:`MAX_PICKLE_BYTES`; every record to the zip bounds."""
    for info in infos:
        if not _STORAGE_RECORD.fullmatch(info.filename) and info.file_size > MAX_PICKLE_BYTES:
            raise CheckpointError(
                f"{name}: its record {info.filename!r} declares {info.file_size} bytes, where torch.save's pickled "
                f"structure (names, dtypes and shapes, some 150 bytes a tensor) takes at most {MAX_PICKLE_BYTES}: "
                "refused without reading it"
            )
    check_zip_entries(infos, archive_size, name)


_ZIP_METHODS = {zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA}


def _check_checksums(file: str | bytes, name: str, refuse: Callable[[str], NotACheckpoint]) -> None:
    """Each record of a ``torch.save`` zip against the CRC-32 the archive holds for it, which torch's reader does not
    check: a flipped bit in a weight record would otherwise load as another agent. (The records' declared sizes are
    checked first: this reads them all once.)"""
    try:
        with zipfile.ZipFile(io.BytesIO(file) if isinstance(file, bytes) else file) as archive:
            unknown = sorted({i.compress_type for i in archive.infolist()} - _ZIP_METHODS)
            bad = None if unknown else archive.testzip()  # zipfile cannot read such records at all
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
        raise refuse(f"a damaged zip archive ({exc})") from exc
    if unknown:  # torch.save stores its records uncompressed
        raise refuse(f"a zip archive whose records use compression method {unknown[0]}, which zip readers lack")
    if bad is not None:
        raise CheckpointError(
            f"{name} is damaged: its record {bad!r} does not match the checksum (CRC-32) the archive holds for it; "
            "download or copy the file again"
        )


def _check_format(file: str | bytes, name: str, fix: str) -> None:
    """Refuse, with the reason, a file (a path, or the bytes of a zip entry) that cannot be a ``torch.save``d
    state dict, before torch parses it."""
    if isinstance(file, bytes):
        size, head = len(file), file[:1024]
    else:
        try:
            size = os.path.getsize(file)
            with open(file, "rb") as f:
                head = f.read(1024)
        except OSError as exc:
            raise CheckpointError(f"checkpoint {name} cannot be read ({exc.strerror or exc})") from exc

    def refuse(found: str, advice: str = fix) -> NotACheckpoint:
        return NotACheckpoint(f"{name} is not a torch checkpoint: {found}{'; ' + advice if advice else ''}", found)

    if size == 0:
        raise refuse("the file is empty (0 bytes)")
    if head.startswith(b"PK\x03\x04"):
        try:
            with zipfile.ZipFile(io.BytesIO(file) if isinstance(file, bytes) else file) as archive:
                infos = archive.infolist()
        except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:  # truncated: no central directory
            raise refuse(f"a damaged or truncated zip archive ({exc})") from exc
        names = [info.filename for info in infos]
        if any(n.endswith("/constants.pkl") or "/code/" in n for n in names):
            raise refuse(
                "it is a TorchScript archive (torch.jit.save), not a state dict",
                "save the agent with torch.save(model.state_dict(), path)",
            )
        if not any(n.endswith("data.pkl") for n in names):
            raise refuse(
                f"a zip archive without torch.save's data.pkl (it holds {sorted(names)[:8]}"
                f"{' ...' if len(names) > 8 else ''})"
            )
        _check_torch_records(infos, size, name)
        _check_checksums(file, name, refuse)
        return
    if _LEGACY_MAGIC in head[:32]:  # after the pickle's PROTO (and, from protocol 4, FRAME) opcodes
        return
    if head.startswith(b"L" + str(int.from_bytes(_LEGACY_MAGIC[2:], "little")).encode()):
        raise refuse(
            "a legacy torch.save file pickled with protocol 0 or 1, which torch cannot read safely",
            "re-save its state dict with torch.save(model.state_dict(), path) and the default protocol",
        )
    if head[257:262] == b"ustar":
        raise refuse(
            "it is in torch's pre-1.0 tar format, which cannot be read without running the code it may contain",
            "re-save its state dict with torch.save(model.state_dict(), path) where you trust it",
        )
    raise refuse(_describe_unknown(head))


def _torch_load(file: str | bytes, name: str, fix: str, map_location: str) -> object:
    """``torch.load(weights_only=True)``; torch's many ways of failing on a damaged file as one CheckpointError."""
    tail = f"; {fix}" if fix else ""
    try:
        with warnings.catch_warnings(record=True) as caught:  # a damaged file also makes torch warn (odd protocol)
            warnings.simplefilter("always")
            obj = torch.load(
                io.BytesIO(file) if isinstance(file, bytes) else file, map_location=map_location, weights_only=True
            )
    except Exception as exc:  # a damaged file fails in many ways inside torch (Unpickling/Runtime/Assertion...)
        reason = torch_reason(exc)
        # torch says "Unsupported global" of a class it does not allow, "unsupported GLOBAL" of a blocked module
        if isinstance(exc, pickle.UnpicklingError) and "unsupported global" in str(exc).lower():
            raise CheckpointError(
                f"{name} is not a torch checkpoint that loads safely: it holds Python objects other than tensors "
                f"and plain containers ({reason}), refused because loading them could run code, or it is damaged"
                f"{tail}"
            ) from exc
        raise CheckpointError(
            f"{name} is damaged or truncated, not a torch checkpoint that loads safely ({reason}){tail}"
        ) from exc
    if map_location != "meta":  # the file loaded: pass torch's warnings on (once: not from the first pass)
        for w in caught:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno, source=w.source)
    return obj


def _storages_in(obj: object) -> list[tuple[int | None, torch.UntypedStorage, int]]:
    """(record key or None, storage, bytes the tensors use) for every tensor and bare storage in ``obj``, each
    container visited once (a pickle's memo can share one many times, or make it contain itself)."""
    found: list[tuple[int | None, torch.UntypedStorage, int]] = []
    seen: set[int] = set()
    stack = [obj]
    while stack:
        item = stack.pop()
        if id(item) in seen:
            continue
        seen.add(id(item))
        if isinstance(item, torch.Tensor):
            if item.layout == torch.strided:
                storage = item.untyped_storage()
                found.append(
                    (getattr(storage, "_checkpoint_offset", None), storage, _extent(item) * item.element_size())
                )
        elif isinstance(item, (torch.UntypedStorage, torch.TypedStorage)):
            storage = item if isinstance(item, torch.UntypedStorage) else item.untyped()
            found.append((getattr(storage, "_checkpoint_offset", None), storage, 0))
        elif isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
    return found


def _check_storage_use(structure: object, name: str) -> None:
    """The storages a zip file's structure claims must be about what its tensors use (shapes, strides, offsets):
    torch allocates and reads each claimed storage whole."""
    claimed: dict[object, int] = {}
    used: dict[object, int] = {}
    for key, storage, nbytes in _storages_in(structure):
        group = key if key is not None else ("storage", storage._cdata)
        claimed[group] = max(claimed.get(group, 0), storage.nbytes())
        used[group] = max(used.get(group, 0), nbytes)
    total_claimed, total_used = sum(claimed.values()), sum(used.values())
    if total_claimed - total_used > MAX_UNUSED_STORAGE:
        raise CheckpointError(
            f"{name}: its storages hold {total_claimed} bytes of which its tensors use {total_used}: views of larger "
            "tensors, or a file made to allocate far more than it holds; refused before reading them. Save copies "
            "of the weights (torch.save({k: v.clone() for k, v in state_dict.items()}, path))"
        )


def load_torch_file(file: str | bytes, name: str, *, meta: bool = False, fix: str = _FIX) -> object:
    """What ``torch.save`` wrote to ``file`` (a path, or the bytes of a zip entry such as SB3's policy.pth), read
    with ``torch.load(weights_only=True)`` and bounded work: the format and the zip records are checked first, then
    a pass that reads only the structure (tensors on the ``meta`` device) checks the storages against the tensors'
    shapes, and only then are the storages read. ``meta=True`` returns that first pass: shapes, no data. Every
    failure is a :class:`CheckpointError` naming ``name`` (ending with ``fix``, the advice)."""
    _check_format(file, name, fix)
    structure = _torch_load(file, name, fix, "meta")
    _check_storage_use(structure, name)
    return structure if meta else _torch_load(file, name, fix, "cpu")


def read_state_dict(path: str | os.PathLike, *, meta: bool = False) -> dict[str, torch.Tensor]:
    """The state dict (names to tensors) of a ``torch.save`` file, read safely and with bounded work (see
    :func:`load_torch_file`); common wrappers (``{"state_dict": ...}``) and ``nn.DataParallel``'s ``module.``
    prefix are removed. ``meta=True``: the tensors are on the meta device (shapes only, no storage read)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint {path!r} does not exist (or is not a file): check the path")
    obj = load_torch_file(path, repr(path), meta=meta)
    if isinstance(obj, dict):
        for key in _NESTED_KEYS:  # common wrappers: {"state_dict": {...}, "step": ...}
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()):
        raise CheckpointError(
            f"{path!r} holds a {type(obj).__name__}{_what_it_holds(obj)}, not a state dict of tensors (names to "
            "tensors): save the agent with torch.save(model.state_dict(), path)"
        )
    # checkpoints saved from nn.DataParallel prefix every key with "module."
    if obj and all(k.startswith("module.") for k in obj):
        obj = {k[len("module.") :]: v for k, v in obj.items()}
    return dict(obj)


def _what_it_holds(obj: object) -> str:
    """A dict's keys and what each holds (a wrapper's, such as ``{"agent": {...}, "global_step": 5}``), for the
    user to see where the weights are."""
    if not isinstance(obj, dict) or not obj:
        return ""
    items = [
        f"{k!r}: {'tensor' if isinstance(v, torch.Tensor) else type(v).__name__}" for k, v in list(obj.items())[:8]
    ]
    return f" of {{{', '.join(items)}{', ...' if len(obj) > 8 else ''}}}"


def json_depth(raw: bytes) -> int:
    """How deep the arrays and objects of the JSON text ``raw`` nest, found without recursion or a Python loop over
    its characters: escapes are dropped, then the brackets outside strings are counted in numpy, 1 MiB at a time."""
    kept = re.sub(rb'[^"\[\]{}]+', b"", re.sub(rb"\\.", b"", raw, flags=re.S))
    parity, depth, deepest, chunk = 0, 0, 0, 1 << 20
    for start in range(0, len(kept), chunk):
        a = np.frombuffer(kept, np.uint8, count=min(chunk, len(kept) - start), offset=start)
        quotes = np.cumsum(a == ord('"'), dtype=np.int64) + parity
        outside = (quotes & 1) == 0
        steps = outside * ((a == ord("[")) | (a == ord("{"))).astype(np.int32)
        steps -= outside * ((a == ord("]")) | (a == ord("}"))).astype(np.int32)
        levels = depth + np.cumsum(steps, dtype=np.int64)
        deepest = max(deepest, int(levels.max()))
        depth, parity = int(levels[-1]), int(quotes[-1] & 1)
    return deepest


def parse_json(
    raw: bytes, name: str, max_bytes: int, max_depth: int = MAX_JSON_DEPTH, expected: str = "valid JSON"
) -> object:
    """``json.loads`` of ``raw`` after checking its size and nesting (json.loads recurses once a level): every
    problem a :class:`CheckpointError` starting with ``name``; ``expected`` says what it should have been."""
    if len(raw) > max_bytes:
        raise CheckpointError(f"{name} is {len(raw)} bytes, beyond the {max_bytes} of {expected}: not read")
    depth = json_depth(raw)
    if depth > max_depth:
        raise CheckpointError(f"{name} nests {depth} levels deep, where {expected} nests a few (at most {max_depth})")
    try:
        return json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise CheckpointError(f"{name} is not {expected} ({exc})") from exc


def dims(state_dict: dict[str, torch.Tensor], key: str, ndim: int, source: str) -> tuple[int, ...]:
    if key not in state_dict:
        raise CheckpointError(f"{source}: missing tensor {key!r}: not an actor-critic agent of the spec")
    shape = tuple(state_dict[key].shape)
    if len(shape) != ndim:
        raise CheckpointError(f"{source}: {key} has shape {shape}, expected {ndim} dimensions")
    return shape


def _extent(t: torch.Tensor) -> int:
    """How many elements of its storage, from its offset on, ``t`` reaches (0 when it has no values)."""
    if t.numel() == 0:
        return 0
    return int(t.storage_offset()) + sum((size - 1) * abs(stride) for size, stride in zip(t.shape, t.stride())) + 1


def _overlaps(shape: Sequence[int], strides: Sequence[int]) -> bool:
    """Whether two indices of a tensor of ``shape`` and ``strides`` can reach one element: taken by increasing
    stride, each dimension must step past everything the smaller ones reach (as every layout torch.save writes
    for weights does; a stride of 0 never does)."""
    if any(size == 0 for size in shape):
        return False
    span = 0
    for stride, size in sorted((abs(st), sz) for sz, st in zip(shape, strides) if sz > 1):
        if stride <= span:
            return True
        span += (size - 1) * stride
    return False


def check_layouts(state_dict: dict[str, torch.Tensor], source: str) -> None:
    """Dense tensors, each value stored once: refuses expanded (stride-0) and overlapping views from their shapes
    and strides alone, before any comparison or arithmetic walks their (possibly 10^12) elements."""
    for key, t in state_dict.items():
        if t.layout != torch.strided or t.device.type == "meta":
            raise CheckpointError(f"{source}: {key} is a {t.layout} tensor on {t.device}, not dense stored weights")
        stored = t.untyped_storage().nbytes() // max(t.element_size(), 1) - t.storage_offset()
        if t.numel() > stored:
            raise CheckpointError(
                f"{source}: {key} {tuple(t.shape)} has {t.numel()} values but only {stored} are stored: an expanded "
                "(stride-0) or overlapping view, not trained weights"
            )
        if _overlaps(t.shape, t.stride()):
            raise CheckpointError(
                f"{source}: {key} {tuple(t.shape)} with strides {tuple(t.stride())} reads some stored values more "
                "than once: an overlapping view, not trained weights"
            )


def check_weights(state_dict: dict[str, torch.Tensor], source: str) -> None:
    """Dense, stored once (not expanded or overlapping), floating point, finite and of plausible size, or a
    CheckpointError listing the offenders."""
    check_layouts(state_dict, source)
    for key, t in state_dict.items():
        if not t.dtype.is_floating_point:
            raise CheckpointError(
                f"{source}: {key} has dtype {t.dtype}; an agent's weights are floating point (float32 as saved by "
                "torch.save(model.state_dict()))"
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
    """Load checked weights into a policy module, move it to ``device`` and ``dtype``, put it in eval mode and take
    the finite-output test step there (:func:`check_finite_outputs`: float16 overflows where float32 does not);
    every failure is a :class:`CheckpointError` naming ``source``."""
    try:
        module.load_state_dict(state_dict)
    except RuntimeError as exc:  # unreachable after the shape checks, kept so nothing escapes as another type
        raise CheckpointError(
            f"{source}: the weights do not load into {type(module).__name__} ({torch_reason(exc)})"
        ) from exc
    module = module.to(device=device, dtype=dtype).eval()
    check_finite_outputs(cast(Policy, module), source)  # every module loaded here is one of the engine's policies
    return module


def check_keys_and_shapes(
    state_dict: dict, expected: dict[str, tuple], source: str, architecture: str, hint: str = "", supported: str = ""
) -> None:
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


def check_finite_outputs(policy: Policy, source: str, error: type[EngineError] = CheckpointError) -> PolicyOutput:
    """One test step on a black and a white observation must give finite outputs (value, logits, next state), else
    ``error`` naming ``source``, which outputs are not finite and why: parameters that are not finite, or finite
    ones compounding to an overflow through the layers. Returns the step's outputs."""
    frames = torch.zeros(2, *policy.observation_shape, device=policy.device, dtype=policy.dtype)
    frames[1] = 1.0
    with torch.no_grad():  # not inference_mode: a wrapped network's own reset may update the state in place
        call: Callable[..., PolicyOutput] = policy  # the engine's policies take batch_invariant beyond the protocol
        out = call(frames, policy.initial_state(2), batch_invariant=False)
        parts = {"value": out.value, "logits": out.logits, **{f"state {i}": s for i, s in enumerate(out.state)}}
        bad = [name for name, t in parts.items() if not bool(torch.isfinite(t).all())]
        if not bad:
            return out
        module = policy if isinstance(policy, nn.Module) else getattr(policy, "fn", None)
        broken = [
            name
            for name, p in (module.named_parameters() if isinstance(module, nn.Module) else ())
            if p.is_floating_point() and not bool(torch.isfinite(p).all())
        ]
    cause = (
        f"its parameters {', '.join(broken[:8])}{' ...' if len(broken) > 8 else ''} hold NaN or inf"
        if broken
        else "its weights are finite but overflow through the layers"
        if isinstance(module, nn.Module)
        else "the network computes them"
    )
    advice = (
        "the file is corrupt, the training diverged, or it is not a trained agent"
        if error is CheckpointError
        else "fix the network's weights or forward pass before explaining it"
    )
    raise error(
        f"{source}: the agent's outputs on a test observation (a black and a white frame) are not finite: NaN or inf "
        f"in the {', '.join(bad)} ({cause}), so its saliency maps would be NaN: {advice}"
    )
