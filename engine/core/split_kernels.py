# mypy: disallow-untyped-defs=False, disallow-incomplete-defs=False
"""Triton kernels for the fast precision's split product (engine.core.delta, arithmetic ``"bfloat16x3"``): ``W d``
with each of ``d`` and ``W`` split as ``hi = part(t)``, ``lo = part(t - hi)``, computed as
``hi_d*hi_w + lo_d*hi_w + hi_d*lo_w`` by three ``tl.dot`` on ``part`` inputs (bfloat16: the tensor cores' native
type) with float32 accumulation AND float32 output. PyTorch's bfloat16 convolution returns bfloat16, which measured
1e-2 of the map's max; these kernels keep the accumulator's float32 to the end.

- :func:`split3_linear`: ``d`` (M, K) float32, any strides; weights (N_out, K).
- :func:`split3_conv2d`: an implicit-GEMM convolution (no im2col buffer): ``d`` (N, C, H, W) float32, any strides
  (contiguous or channels_last), weights (O, C, KH, KW), zero padding, stride and dilation, ``groups == 1``; the
  output (N, O, OH, OW) float32 in the input's memory format.

Both run one kernel: a GEMM whose rows are output positions ``(n, oh, ow)``, whose columns are output channels and
whose reduction index runs over ``(kh, kw, c)``, channel fastest (a linear layer is the 1x1 convolution of a 1x1
map). ``d`` is loaded as float32 and split in the kernel; the weights come already split (``w_hi``, ``w_lo`` of
engine.core.delta.prepare_weight, exactly representable in ``part``) and are cast to ``part`` on the host, one small
copy per call.

Interpreter or GPU. ``triton.jit`` decides when it runs whether it builds an interpreted function (the environment
variable ``TRITON_INTERPRET=1``, read then) or a compiled one. So the kernel is jitted lazily, at its first use, once
for each mode (:func:`_kernel`): a test may set ``TRITON_INTERPRET=1`` (pytest's ``monkeypatch.setenv``) and run the
kernels in the same process on CPU tensors, and this module imports without triton (``import engine.core.delta``
never needs it; the kernels raise a clear error when it is missing). The kernel calls triton's builtins only
(``tl.full``, not ``tl.zeros``): triton.language's own ``@jit`` helpers are jitted when triton is imported, in the
mode of that moment, and a compiled helper cannot run inside an interpreted kernel. Compiled, the kernels take CUDA tensors only,
with a block shape chosen from the layer's sizes (:func:`gpu_blocks`); interpreted, they take CPU tensors with one
small fixed block shape, so that the tests stay fast.

The part type. ``part`` is ``torch.bfloat16`` by default (:data:`PART_DTYPE`, read at each call when ``part`` is
not given). Triton 3.8's CPU interpreter computes bfloat16 wrongly (a ``tl.dot`` of bfloat16 loads gave errors of
7e10, where float16 and float32 are right), so the tests run the kernels with ``part=torch.float16`` as a stand-in:
the indexing, masking, splitting and float32 accumulation are the same code. The stand-in checks the code, not
bfloat16's accuracy: float16 keeps more bits (11 a part) but has a narrow exponent range, so deltas below about 1e-4
lose their lo parts to subnormals (on baby-a3c's deep layers: its critic scores then err by 4e-5, where bfloat16's
emulation errs by 7e-6). Only a GPU session checks the bfloat16 kernel itself, against delta.linear_product's
emulation.
"""

from __future__ import annotations

import functools
from typing import Any

import torch

try:
    import triton  # type: ignore[import-untyped]
    import triton.language as tl  # type: ignore[import-untyped]
except ImportError:  # the module imports without triton; the kernels say what is missing when called
    triton = None
    tl = None

PARTS = (torch.bfloat16, torch.float16)
# the part type the kernels use when a call names none (tests set float16: the interpreter's bfloat16 is wrong)
PART_DTYPE: torch.dtype = torch.bfloat16

# the sizes and strides change with every layer and pass: specialising the compiled kernel on them (triton's default:
# divisibility by 16, equality to 1) would compile it anew for many layers on first use
_SIZE_ARGUMENTS = (
    *("M", "N_OUT", "K", "C", "H", "W", "OH", "OW", "KW"),
    *("stride_h", "stride_w", "pad_h", "pad_w", "dil_h", "dil_w"),
    *("d_sn", "d_sc", "d_sh", "d_sw", "w_so", "w_sc", "w_sh", "w_sw", "out_sn", "out_sc", "out_sh", "out_sw"),
)
_INTERPRETER_BLOCK = dict(BLOCK_M=32, BLOCK_N=16, BLOCK_K=16)  # tl.dot needs every side >= 16


def _split3_conv2d_kernel(
    d_ptr,
    w_hi_ptr,
    w_lo_ptr,
    out_ptr,
    M,
    N_OUT,
    K,
    C,
    H,
    W,
    OH,
    OW,
    KW,
    stride_h,
    stride_w,
    pad_h,
    pad_w,
    dil_h,
    dil_w,
    d_sn,
    d_sc,
    d_sh,
    d_sw,
    w_so,
    w_sc,
    w_sh,
    w_sw,
    out_sn,
    out_sc,
    out_sh,
    out_sw,
    PART: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """One (BLOCK_M output positions) x (BLOCK_N output channels) tile of the split product."""
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < M
    col_ok = cols < N_OUT
    # row -> (n, oh, ow); int64 offsets: a large batch of maps passes 2^31 elements
    ow = rows % OW
    oh = (rows // OW) % OH
    n = (rows // OW // OH).to(tl.int64)
    ih0 = oh * stride_h - pad_h
    iw0 = ow * stride_w - pad_w
    acc = tl.full((BLOCK_M, BLOCK_N), 0.0, tl.float32)  # not tl.zeros: see "Interpreter or GPU" above
    for k0 in range(0, K, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        k_ok = ks < K
        # reduction index -> (kh, kw, c), channel fastest
        c = ks % C
        kw = (ks // C) % KW
        kh = ks // C // KW
        ih = ih0[:, None] + kh[None, :] * dil_h
        iw = iw0[:, None] + kw[None, :] * dil_w
        # outside the map is the convolution's zero padding
        d_ok = row_ok[:, None] & k_ok[None, :] & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
        d_offsets = n[:, None] * d_sn + c[None, :] * d_sc + ih * d_sh + iw * d_sw
        d = tl.load(d_ptr + d_offsets, mask=d_ok, other=0.0)
        w_offsets = cols[None, :] * w_so + c[:, None] * w_sc + kh[:, None] * w_sh + kw[:, None] * w_sw
        w_ok = k_ok[:, None] & col_ok[None, :]
        w_hi = tl.load(w_hi_ptr + w_offsets, mask=w_ok, other=0.0)
        w_lo = tl.load(w_lo_ptr + w_offsets, mask=w_ok, other=0.0)
        d_hi = d.to(PART)
        d_lo = (d - d_hi.to(tl.float32)).to(PART)
        # each product of two parts is exact in float32; only the accumulation rounds
        acc = tl.dot(d_hi, w_hi, acc, out_dtype=tl.float32)
        acc = tl.dot(d_lo, w_hi, acc, out_dtype=tl.float32)
        acc = tl.dot(d_hi, w_lo, acc, out_dtype=tl.float32)
    out_offsets = (n * out_sn + oh * out_sh + ow * out_sw)[:, None] + cols[None, :] * out_sc
    tl.store(out_ptr + out_offsets, acc, mask=row_ok[:, None] & col_ok[None, :])


def _require_triton() -> None:
    if triton is None:
        raise ImportError("engine.core.split_kernels needs triton (pip install triton), which is not installed")


def interpreting() -> bool:
    """Whether triton would run kernels in its CPU interpreter now (``TRITON_INTERPRET=1``; False without
    triton)."""
    return triton is not None and bool(triton.knobs.runtime.interpret)


@functools.cache
def _kernel(interpret: bool) -> Any:
    """The kernel jitted for one mode (``interpret`` is the mode ``triton.jit`` sees now: it is the cache key)."""
    if interpret:
        return triton.jit(_split3_conv2d_kernel)
    return triton.jit(_split3_conv2d_kernel, do_not_specialize=_SIZE_ARGUMENTS)


def gpu_blocks(n_out: int, k: int) -> dict[str, int]:
    """The block shape of a layer on the GPU, from its sizes: rows are output positions (thousands), columns output
    channels (32 or 64 in the trunks, hundreds in the linear layers), the reduction 9 to 3,136 long. Chosen, not
    autotuned: autotuning keyed on the sizes compiles every candidate for every layer and pass size on first use
    (a minute or more on an agent's few layers), so a few fixed shapes keep the compiled kernels few; speed.py's
    ``fast_triton`` rows say whether to tune them."""
    return dict(
        BLOCK_M=128, BLOCK_N=32 if n_out <= 32 else 64, BLOCK_K=32 if k >= 32 else 16, num_warps=4, num_stages=3
    )


def _resolve_part(part: torch.dtype | None) -> tuple[torch.dtype, Any]:
    """The part type as a torch dtype and as triton's (``None``: :data:`PART_DTYPE`)."""
    part = PART_DTYPE if part is None else part
    if part not in PARTS:
        raise ValueError(f"part must be one of {PARTS}, got {part}")
    return part, tl.bfloat16 if part == torch.bfloat16 else tl.float16


def _check_inputs(d: torch.Tensor, w_hi: torch.Tensor, w_lo: torch.Tensor, dims: int, interpret: bool) -> None:
    if d.dtype != torch.float32:
        raise ValueError(f"d must be float32, got {d.dtype}")
    if d.dim() != dims or w_hi.dim() != dims or w_lo.dim() != dims:
        raise ValueError(
            f"d and the weights must have {dims} dimensions, got d {tuple(d.shape)}, "
            f"w_hi {tuple(w_hi.shape)}, w_lo {tuple(w_lo.shape)}"
        )
    if w_hi.shape != w_lo.shape:
        raise ValueError(f"w_hi {tuple(w_hi.shape)} and w_lo {tuple(w_lo.shape)} differ in shape")
    if d.shape[1] != w_hi.shape[1]:
        raise ValueError(f"d has {d.shape[1]} input features or channels, the weights {w_hi.shape[1]}")
    devices = {d.device, w_hi.device, w_lo.device}
    if len(devices) != 1:
        raise ValueError(f"d and the weights must be on one device, got {sorted(map(str, devices))}")
    if not interpret and d.device.type != "cuda":
        raise ValueError(
            f"the split kernels take CUDA tensors (CPU tensors only in triton's interpreter, TRITON_INTERPRET=1), "
            f"got {d.device}"
        )


def _launch(
    d: torch.Tensor,
    w_hi: torch.Tensor,
    w_lo: torch.Tensor,
    out: torch.Tensor,
    geometry: tuple[tuple[int, int], tuple[int, int], tuple[int, int]],
    part: torch.dtype | None,
    interpret: bool,
) -> torch.Tensor:
    """Run the kernel on 4-d ``d``, weights and ``out`` (a linear layer as a 1x1 map)."""
    part_torch, part_type = _resolve_part(part)
    w_hi, w_lo = w_hi.to(part_torch), w_lo.to(part_torch)  # exact: the parts are representable in the part type
    (stride_h, stride_w), (pad_h, pad_w), (dil_h, dil_w) = geometry
    n, c, h, w = d.shape
    o, _, _, kw = w_hi.shape
    _, _, oh, ow = out.shape
    m, k = n * oh * ow, c * w_hi.shape[2] * kw
    if m == 0 or o == 0:
        return out
    if k == 0:
        return out.zero_()

    blocks = _INTERPRETER_BLOCK if interpret else gpu_blocks(o, k)
    grid = (triton.cdiv(m, blocks["BLOCK_M"]), triton.cdiv(o, blocks["BLOCK_N"]))
    _kernel(interpret)[grid](
        d,
        w_hi,
        w_lo,
        out,
        m,
        o,
        k,
        c,
        h,
        w,
        oh,
        ow,
        kw,
        stride_h,
        stride_w,
        pad_h,
        pad_w,
        dil_h,
        dil_w,
        *d.stride(),
        *w_hi.stride(),
        *out.stride(),
        PART=part_type,
        **blocks,
    )
    return out


def split3_linear(
    d: torch.Tensor, w_hi: torch.Tensor, w_lo: torch.Tensor, part: torch.dtype | None = None
) -> torch.Tensor:
    """``d @ (w_hi + w_lo).T`` as ``hi_d*hi_w + lo_d*hi_w + hi_d*lo_w`` in ``part`` (default :data:`PART_DTYPE`)
    with float32 accumulation: ``d`` (M, K) float32, any strides; ``w_hi``, ``w_lo`` (N_out, K), values exactly
    representable in ``part``. Returns (M, N_out) float32."""
    _require_triton()
    interpret = interpreting()
    _check_inputs(d, w_hi, w_lo, 2, interpret)
    out = torch.empty((d.shape[0], w_hi.shape[0]), dtype=torch.float32, device=d.device)
    one_by_one = ((1, 1), (0, 0), (1, 1))  # stride, padding and dilation of a 1x1 convolution
    _launch(
        d[:, :, None, None],
        w_hi[:, :, None, None],
        w_lo[:, :, None, None],
        out[:, :, None, None],
        one_by_one,
        part,
        interpret,
    )
    return out


def _pair(value: int | tuple[int, ...], name: str) -> tuple[int, int]:
    pair = (value, value) if isinstance(value, int) else tuple(value)
    if len(pair) != 2 or not all(isinstance(v, int) for v in pair):
        raise ValueError(f"{name} must be an int or a pair of ints, got {value!r}")
    return pair[0], pair[1]


def _channels_last_strides(d: torch.Tensor) -> bool:
    """Whether ``d``'s strides read as channels_last, by torch's rule (``is_channels_last_strides_2d``: strides
    non-decreasing over C, W, H, N, each at least the span of the previous): so a one-channel map follows its
    strides as F.conv2d's output does."""
    if d.stride(1) == 0:
        return False
    least = 0
    for dim in (1, 3, 2, 0):
        if d.shape[dim] == 0 or d.stride(dim) < least:
            return False
        if dim == 0 and least == d.stride(1):  # N111 is ambiguous: contiguous, as torch decides
            return False
        least = d.stride(dim) * max(d.shape[dim], 1)
    return True


def split3_conv2d(
    d: torch.Tensor,
    w_hi: torch.Tensor,
    w_lo: torch.Tensor,
    stride: int | tuple[int, ...] = 1,
    padding: int | tuple[int, ...] = 0,
    dilation: int | tuple[int, ...] = 1,
    groups: int = 1,
    part: torch.dtype | None = None,
) -> torch.Tensor:
    """``F.conv2d(d, w_hi + w_lo)`` (no bias, zero padding) as ``hi_d*hi_w + lo_d*hi_w + hi_d*lo_w`` in ``part``
    (default :data:`PART_DTYPE`) with float32 accumulation: ``d`` (N, C, H, W) float32, any strides; ``w_hi``,
    ``w_lo`` (O, C, KH, KW), values exactly representable in ``part``. Returns (N, O, OH, OW) float32,
    channels_last when ``d`` is."""
    _require_triton()
    if groups != 1:
        raise ValueError(f"split3_conv2d runs groups=1 only, got groups={groups}")
    if isinstance(padding, str):
        raise ValueError(f"padding must be given in pixels, got {padding!r}")
    interpret = interpreting()
    _check_inputs(d, w_hi, w_lo, 4, interpret)
    strides, pads, dilations = _pair(stride, "stride"), _pair(padding, "padding"), _pair(dilation, "dilation")
    if min(strides) < 1 or min(dilations) < 1 or min(pads) < 0:
        raise ValueError(f"stride and dilation must be >= 1 and padding >= 0, got {strides}, {dilations}, {pads}")
    n, _, h, w = d.shape
    kh, kw = w_hi.shape[2:]
    oh = (h + 2 * pads[0] - dilations[0] * (kh - 1) - 1) // strides[0] + 1
    ow = (w + 2 * pads[1] - dilations[1] * (kw - 1) - 1) // strides[1] + 1
    if oh < 1 or ow < 1:
        raise ValueError(f"the {kh}x{kw} kernel does not fit the padded {h}x{w} map")
    channels_last = _channels_last_strides(d)
    out = torch.empty(
        (n, w_hi.shape[0], oh, ow),
        dtype=torch.float32,
        device=d.device,
        memory_format=torch.channels_last if channels_last else torch.contiguous_format,
    )
    return _launch(d, w_hi, w_lo, out, (strides, pads, dilations), part, interpret)
