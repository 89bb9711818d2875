"""Device helpers: the precision switch around the engine's work sets and restores torch's flags: TF32 on CUDA, and
oneDNN's reduced float32 modes on the CPU."""

import pytest
import torch

from engine.core.device import float32_matmul_precision, resolve_device, resolve_dtype
from engine.core.errors import EngineError


@pytest.fixture
def tf32_flags():
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


@pytest.mark.parametrize("tf32", [True, False])
def test_cuda_block_sets_and_restores_tf32(tf32_flags, tf32):
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = (not tf32), (not tf32)
    with float32_matmul_precision(torch.device("cuda"), tf32):
        assert torch.backends.cudnn.allow_tf32 is tf32 and torch.backends.cuda.matmul.allow_tf32 is tf32
    assert torch.backends.cudnn.allow_tf32 is (not tf32) and torch.backends.cuda.matmul.allow_tf32 is (not tf32)


def test_restored_after_an_error(tf32_flags):
    torch.backends.cudnn.allow_tf32 = True
    with pytest.raises(RuntimeError), float32_matmul_precision(torch.device("cuda"), False):
        raise RuntimeError("boom")
    assert torch.backends.cudnn.allow_tf32 is True


def test_other_devices_are_left_alone(tf32_flags):
    torch.backends.cudnn.allow_tf32 = True
    with float32_matmul_precision(torch.device("cpu"), False):
        assert torch.backends.cudnn.allow_tf32 is True


CPU_BACKENDS = tuple(getattr(torch.backends.mkldnn, op) for op in ("matmul", "conv", "rnn"))


@pytest.fixture
def cpu_precision():
    saved = [backend.fp32_precision for backend in CPU_BACKENDS], torch.get_float32_matmul_precision()
    yield
    torch.set_float32_matmul_precision(saved[1])
    for backend, precision in zip(CPU_BACKENDS, saved[0], strict=True):
        backend.fp32_precision = precision


@pytest.mark.parametrize("tf32", [True, False])
def test_cpu_block_turns_onednn_reduced_precision_off_and_restores_it(cpu_precision, tf32):
    """A process that asked for bfloat16 float32 products (``torch.set_float32_matmul_precision("medium")``, or
    oneDNN's own settings) gets exact float32 inside the block, TF32 asked for or not, and its settings back after,
    also after an error."""
    torch.set_float32_matmul_precision("medium")
    torch.backends.mkldnn.conv.fp32_precision = "bf16"
    before = [backend.fp32_precision for backend in CPU_BACKENDS]
    assert before[:2] == ["bf16", "bf16"]
    with pytest.raises(RuntimeError, match="boom"), float32_matmul_precision(torch.device("cpu"), tf32):
        assert [backend.fp32_precision for backend in CPU_BACKENDS] == ["ieee"] * 3
        raise RuntimeError("boom")
    assert [backend.fp32_precision for backend in CPU_BACKENDS] == before
    assert torch.get_float32_matmul_precision() == "medium"


def test_bad_device_and_dtype_names():
    with pytest.raises(EngineError, match="unknown device 'gpu0'"):
        resolve_device("gpu0")
    with pytest.raises(EngineError, match="unknown dtype 'float8'"):
        resolve_dtype("float8")
    with pytest.raises(EngineError, match="not a floating-point type"):
        resolve_dtype(torch.int32)
