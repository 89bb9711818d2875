"""Device helpers: the TF32 switch around the engine's CUDA work sets and restores torch's flags."""

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


def test_bad_device_and_dtype_names():
    with pytest.raises(EngineError, match="unknown device 'gpu0'"):
        resolve_device("gpu0")
    with pytest.raises(EngineError, match="unknown dtype 'float8'"):
        resolve_dtype("float8")
    with pytest.raises(EngineError, match="not a floating-point type"):
        resolve_dtype(torch.int32)
