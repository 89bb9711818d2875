"""``compile=True`` (``saliency.compile``): each perturbed forward pass compiled by inductor, with one static pass
size. Compiled maps equal eager ones to float32 rounding, one compilation serves every pass of a job, and pass
sizes or frames scored together never change a compiled map. Compiling costs seconds per shape on this CPU, so
these tests use few shapes."""

from __future__ import annotations

import copy
import shutil

import numpy as np
import pytest
import torch
from torch._dynamo.utils import counters

from engine.core.compiled import compile_mode, compile_seconds
from engine.core.perturbation import perturbation_saliency
from engine.core.policy import index_state

pytestmark = pytest.mark.skipif(
    shutil.which("g++") is None and shutil.which("clang++") is None and shutil.which("c++") is None,
    reason="torch.compile's CPU code generation needs a C++ compiler, and this machine has none",
)

ROWS = slice(40, 42)  # frames with the ball in play and a non-zero recurrent state
DENSITY = 10  # 8 x 8 masks per frame: few passes, quick to compile


@pytest.fixture(scope="module")
def frames_states(pong_rollout):
    return pong_rollout.frames[ROWS], index_state(pong_rollout.states, ROWS)


def graphs() -> int:
    return counters["stats"]["unique_graphs"]


def test_compiled_maps_equal_eager_ones_to_float32_rounding(pong_agent, frames_states):
    """The bound comes from the computation: the eager float32 maps' own distance to float64 maps of the same
    frames (this CPU's float32 rounding of these passes); compiled kernels round in other orders, so their distance
    may be a few times larger, and nothing larger (a wrong row, a padded row leaking into a score). Incremental
    passes here, plain ones in the next test (each compilation costs seconds)."""
    frames, states, incremental = *frames_states, True
    want = perturbation_saliency(pong_agent.double(), frames, states, density=DENSITY, incremental=incremental)
    pong_agent.float()
    eager = perturbation_saliency(pong_agent, frames, states, density=DENSITY, incremental=incremental)
    compiled = perturbation_saliency(
        pong_agent, frames, states, density=DENSITY, incremental=incremental, compile=True, perturbations_per_eval=48
    )
    for key in ("actor_scores", "critic_scores"):
        reference = getattr(want, key)
        rounding = (getattr(eager, key).double() - reference).abs().max()
        scale = reference.abs().max()
        assert 0 < rounding < 1e-4 * scale, "the bound would not catch a wrong map"
        error = (getattr(compiled, key).double() - reference).abs().max()
        assert error <= 8 * rounding, (key, float(error), float(rounding))


def test_one_compilation_per_shape_and_pass_sizes_or_frames_together_never_change_a_map(pong_agent, frames_states):
    """Plain passes of 7 copies over 2 x 64: 19 passes, the last padded, one compiled graph, the maps bit for bit
    those of passes of 48 copies; frames one at a time (one more graph) give them too; a later call compiles
    nothing."""
    frames, states = frames_states

    def scores(frames_, states_, per_eval):
        result = perturbation_saliency(
            pong_agent,
            frames_,
            states_,
            density=DENSITY,
            incremental=False,
            compile=True,
            perturbations_per_eval=per_eval,
        )
        return torch.stack([result.actor_scores, result.critic_scores], 1)  # (N, 2, 8, 8)

    together = scores(frames, states, 48)
    before, seconds = graphs(), compile_seconds()
    assert torch.equal(scores(frames, states, 7), together)
    assert graphs() - before == 1
    assert compile_seconds() > seconds  # the compilation was timed (and logged)
    one_at_a_time = [scores(frames[t : t + 1], index_state(states, slice(t, t + 1)), 48) for t in range(2)]
    assert torch.equal(torch.cat(one_at_a_time), together)
    assert graphs() - before == 2  # frame 1 reused frame 0's graph
    scores(frames, states, 7)
    assert graphs() - before == 2


def test_an_lstm_agents_pass_compiles_into_one_graph_with_eager_maps():
    """``builtin/pong_ppo`` keeps its recurrent core in an ``nn.LSTM``, where dynamo would end the graph and run the
    LSTM eagerly between compiled pieces: the pass compiles into one graph with no break, and its maps equal eager
    ones to float32 rounding (the bound measured against float64 maps, as above)."""
    from engine.core.policy import index_state as rows
    from engine.env.rollout import rollout
    from engine.policies.loading import load_policy
    from engine.policies.registry import resolve_checkpoint

    agent = load_policy(resolve_checkpoint("builtin/pong_ppo"), device="cpu")
    played = rollout(agent, "PongNoFrameskip-v4", 60, seed=0)
    observations, states = played.observations[58:60], rows(played.states, slice(58, 60))
    assert any(isinstance(m, torch.nn.LSTM) for m in agent.modules())
    options = dict(density=DENSITY, incremental=False)
    want = perturbation_saliency(
        copy.deepcopy(agent).double(), observations, tuple(s.double() for s in states), **options
    )
    eager = perturbation_saliency(agent, observations, states, **options)
    counters.clear()
    compiled = perturbation_saliency(agent, observations, states, **options, compile=True, perturbations_per_eval=32)
    assert not counters["graph_break"], dict(counters["graph_break"])
    assert counters["stats"]["unique_graphs"] == 1
    for key in ("actor_scores", "critic_scores"):
        reference = getattr(want, key)
        rounding = (getattr(eager, key).double() - reference).abs().max()
        assert 0 < rounding < 1e-4 * reference.abs().max(), "the bound would not catch a wrong map"
        error = (getattr(compiled, key).double() - reference).abs().max()
        assert error <= 8 * rounding, (key, float(error), float(rounding))


@pytest.mark.parametrize("bad", ["fast", 1, None, "true"])
def test_an_unknown_compile_setting_is_refused(bad):
    with pytest.raises(ValueError, match="compile must be False, True or one of"):
        compile_mode(bad)


def test_a_store_records_compiled_scoring_and_a_rerun_must_match(tmp_path):
    """``saliency.compile=true`` in a store job: maps equal the eager job's to float32 rounding; the saliency
    store's identity records it (a rerun with it off is refused), and a store scored eagerly does not record the
    setting at all (stores written before it existed resume)."""
    from engine.core.errors import EngineError
    from engine.jobs.run import run_job
    from engine.storage.store import SaliencyStore
    from tests.conftest import tiny_job

    def job(name: str, compiled: bool):
        store = {"rollout": str(tmp_path / f"{name}_rollout"), "saliency": str(tmp_path / f"{name}_saliency")}
        return tiny_job(tmp_path / name, movie=False, saliency={"compile": compiled}, store=store)

    run_job(job("eager", False))
    run_job(job("compiled", True))
    eager = SaliencyStore.open(tmp_path / "eager_saliency").read()
    compiled = SaliencyStore.open(tmp_path / "compiled_saliency").read()
    scale = np.abs(eager["actor_scores"]).max()
    assert scale > 0 and np.abs(compiled["actor_scores"] - eager["actor_scores"]).max() <= 1e-4 * scale
    assert SaliencyStore.open(tmp_path / "compiled_saliency").store.identity["saliency"]["compile"] is True
    assert "compile" not in SaliencyStore.open(tmp_path / "eager_saliency").store.identity["saliency"]
    with pytest.raises(EngineError, match="compile"):
        run_job(job("compiled", False))


def test_without_a_working_compiler_the_error_says_how_to_go_on(pong_agent, pong_rollout, tmp_path, monkeypatch):
    import torch._inductor.config as inductor_config

    from engine.core.errors import EngineError

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))  # nothing cached: it must compile
    monkeypatch.setattr(inductor_config.cpp, "cxx", (str(tmp_path / "no-such-compiler"),))
    with pytest.raises(EngineError, match="needs a working C\\+\\+ compiler.*saliency.compile=false"):
        perturbation_saliency(
            pong_agent,
            pong_rollout.frames[:1],
            index_state(pong_rollout.states, slice(0, 1)),
            density=20,
            compile=True,
            perturbations_per_eval=5,
        )


def test_the_cache_is_kept_apart_per_torch_version_cpu_capability_and_cpu(monkeypatch):
    """Inductor's cache keys leave out ATen's CPU capability: code cached under AVX-512 gave NaN maps under
    ``ATEN_CPU_CAPABILITY=avx2`` and the reverse aborted the process, so the engine's cache has a folder per torch
    version, capability and CPU instruction set."""
    from pathlib import Path

    from engine.core import compiled

    this_cpu = compiled.cpu_instruction_set()  # before the patches below: the system's own answer
    assert this_cpu.strip() and ("flags: " in this_cpu or not Path("/proc/cpuinfo").exists())

    def folder(capability: str, cpu: str):
        monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
        monkeypatch.setattr(compiled, "cpu_instruction_set", lambda: cpu)
        return compiled.cache_dir()

    here = folder("AVX512", "flags: avx512f avx512_bf16 amx_tile")
    assert here.parent == compiled.CACHE_DIR and torch.__version__ in here.name and "avx512" in here.name
    assert here == folder("AVX512", "flags: avx512f avx512_bf16 amx_tile")
    assert len({here, folder("AVX2", "flags: avx512f avx512_bf16 amx_tile"), folder("AVX512", "flags: avx512f")}) == 3


def test_a_users_cache_is_kept_and_inductors_shared_default_is_not(monkeypatch, tmp_path):
    """TORCHINDUCTOR_CACHE_DIR set by the user is obeyed; unset, or set by inductor itself to its default (a
    temporary folder shared by every capability), the engine's folder for this CPU replaces it."""
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    from engine.core import compiled

    for before in (None, default_cache_dir()):
        if before is None:
            monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
        else:
            monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", before)
        compiled.use_engine_cache()
        assert compiled.os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(compiled.cache_dir())
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "mine"))
    compiled.use_engine_cache()
    assert compiled.os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "mine")
