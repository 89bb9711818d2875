"""Device helpers: the precision switch around the engine's work sets and restores torch's flags: TF32 on CUDA, and
oneDNN's reduced float32 modes on the CPU."""

import pytest
import torch

from engine.core.device import (
    FLOAT32_BACKENDS,
    float32_matmul_precision,
    float32_precision_settings,
    resolve_device,
    resolve_dtype,
)
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


def _read(getter):
    try:
        return getter()
    except RuntimeError:  # torch refuses to read an older switch that disagrees with the per-backend settings
        return "refused"


def precision_state() -> tuple:
    """Every float32 precision setting a process can make, as torch reports it."""
    return (
        float32_precision_settings(),
        _read(torch.get_float32_matmul_precision),
        _read(lambda: torch.backends.cuda.matmul.allow_tf32),
        _read(lambda: torch.backends.cudnn.allow_tf32),
    )


@pytest.fixture
def fresh_precision():
    """The process's settings put back after the test, whatever it set."""
    saved = float32_precision_settings()
    legacy = torch.backends.cudnn.allow_tf32, torch.get_float32_matmul_precision()
    yield
    torch.backends.cudnn.allow_tf32 = legacy[0]
    torch.set_float32_matmul_precision(legacy[1])
    for name, precision in saved.items():
        FLOAT32_BACKENDS[name].fp32_precision = precision


@pytest.mark.parametrize("tf32", [True, False])
def test_cpu_block_turns_onednn_reduced_precision_off_and_restores_it(fresh_precision, tf32):
    """A process that asked for bfloat16 float32 products (``torch.set_float32_matmul_precision("medium")``, or
    oneDNN's own settings) gets exact float32 inside the block, TF32 asked for or not, and its settings back after,
    also after an error."""
    torch.set_float32_matmul_precision("medium")
    torch.backends.mkldnn.conv.fp32_precision = "bf16"
    before = float32_precision_settings()
    assert (before["mkldnn.matmul"], before["mkldnn.conv"]) == ("bf16", "bf16")
    with pytest.raises(RuntimeError, match="boom"), float32_matmul_precision(torch.device("cpu"), tf32):
        inside = float32_precision_settings()
        assert [inside[f"mkldnn.{op}"] for op in ("matmul", "conv", "rnn")] == ["ieee"] * 3
        raise RuntimeError("boom")
    assert float32_precision_settings() == before
    assert torch.get_float32_matmul_precision() == "medium"


USER_SETTINGS = {  # what a process may have set before calling the engine, old API and new
    "defaults": lambda: None,
    "matmul_precision_high": lambda: torch.set_float32_matmul_precision("high"),
    "matmul_precision_medium": lambda: torch.set_float32_matmul_precision("medium"),
    "allow_tf32_both": lambda: [
        setattr(torch.backends.cuda.matmul, "allow_tf32", True),
        setattr(torch.backends.cudnn, "allow_tf32", True),
    ],
    "cudnn_allow_tf32_off": lambda: setattr(torch.backends.cudnn, "allow_tf32", False),
    "fp32_precision_tf32": lambda: [
        setattr(torch.backends.cuda.matmul, "fp32_precision", "tf32"),
        setattr(torch.backends.cudnn.conv, "fp32_precision", "tf32"),
    ],
    "global_fp32_precision_tf32": lambda: setattr(torch.backends, "fp32_precision", "tf32"),
    "onednn_conv_bf16": lambda: setattr(torch.backends.mkldnn.conv, "fp32_precision", "bf16"),
}


@pytest.mark.parametrize("tf32", [False, True])
@pytest.mark.parametrize("kind", ["cuda", "cpu"])
@pytest.mark.parametrize("setting", list(USER_SETTINGS))
def test_any_process_setting_is_overridden_inside_and_restored_exactly(fresh_precision, setting, kind, tf32):
    """Whatever the process set, through torch's older switches or the per-backend ``fp32_precision`` that replace
    them (which torch refuses to mix in some reads): entering never raises; inside, the device's per-backend
    settings (what kernels and inductor read) are exact float32, or TF32 on CUDA when asked, and the older switches,
    where readable, agree; after, every setting reads as before. The flags are plain settings, so this runs without a
    GPU."""
    USER_SETTINGS[setting]()
    before = precision_state()
    with float32_matmul_precision(torch.device(kind), tf32):
        inside = float32_precision_settings()
        if kind == "cuda":
            want = "tf32" if tf32 else "ieee"
            assert [inside[name] for name in ("cuda.matmul", "cudnn.conv", "cudnn.rnn")] == [want] * 3
            assert _read(lambda: torch.backends.cudnn.allow_tf32) in (tf32, "refused")
        else:  # TF32 asked for or not
            assert [inside[f"mkldnn.{op}"] for op in ("matmul", "conv", "rnn")] == ["ieee"] * 3
    assert precision_state() == before


def test_bad_device_and_dtype_names():
    with pytest.raises(EngineError, match="unknown device 'gpu0'"):
        resolve_device("gpu0")
    with pytest.raises(EngineError, match="unknown dtype 'float8'"):
        resolve_dtype("float8")
    with pytest.raises(EngineError, match="not a floating-point type"):
        resolve_dtype(torch.int32)
