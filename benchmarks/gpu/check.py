"""The GPU check: the engine core's correctness on the device, then its benchmark there, in one short run.

    python benchmarks/gpu/check.py --out DIR [--data .gpu_carry]      (benchmarks/gpu/check.sh wraps it)

Correctness (each a named check with its measured value and threshold): outputs recomputed on the device
equal the recorded CPU ones; device maps equal CPU maps (GRU and LSTM agents, occlude and searchlight);
float64 maps on the device equal the loop reference; perturbations per forward pass and frames scored together
never change a map; incremental equals plain passes; batched Jacobians equal a plain per-frame autograd loop,
and the ``func`` backend equals ``autograd``. Speed: engine vs the loop reference, incremental vs plain,
perturbations per forward pass up to memory, float32 with TF32 off and on and bf16 autocast with each one's
accuracy against float64, frames/s at density 5 over 1000 frames, the two Jacobian backends. Each saliency
speed figure in float32 also gets its share of the float32 roofline (``of_roofline``; engine.core.roofline, with
the device's peaks measured in the same run: ``peak_flops_per_s`` and ``peak_bytes_per_s`` in the environment).

Without CUDA it runs the same program on the CPU with smaller sizes and says so. It writes ``check.json``
(every number) and ``check.md`` (tables) into DIR and prints the tables last.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import signal
import statistics
import sys
import time
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from benchmarks.common import measured_peaks, roofline_share  # noqa: E402
from engine.core.delta import use_split_kernel  # noqa: E402
from engine.core.device import FLOAT32_BACKENDS, float32_precision_settings  # noqa: E402
from engine.core.jacobian import action_jacobian, jacobian_saliency  # noqa: E402
from engine.core.perturbation import perturbation_saliency  # noqa: E402
from engine.core.preprocessing import preprocess_bytes, preprocess_frames  # noqa: E402
from engine.core.reference import saliency_np  # noqa: E402
from engine.policies.cleanrl import load_cleanrl  # noqa: E402
from engine.policies.greydanus2017 import load_agent  # noqa: E402
from engine.policies.registry import resolve_checkpoint  # noqa: E402


def set_tf32(on: bool) -> None:
    """TF32 for convolutions (cuDNN allows it by default) and matrix products (off by default), through both
    the older flags and the per-backend ``fp32_precision`` settings of newer torch releases."""
    torch.backends.cudnn.allow_tf32 = on
    torch.backends.cuda.matmul.allow_tf32 = on
    torch.set_float32_matmul_precision("high" if on else "highest")
    precision = "tf32" if on else "ieee"
    for backend in ("torch.backends.cuda.matmul", "torch.backends.cudnn.conv", "torch.backends.cudnn.rnn"):
        module = eval(backend)  # noqa: S307 (fixed names)
        if hasattr(module, "fp32_precision"):
            module.fp32_precision = precision


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device, repeats: int = 3) -> float:
    """Median seconds of ``repeats`` calls after one warm-up (device synchronised around each)."""
    fn()
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def rel_error(got: torch.Tensor, want: torch.Tensor) -> float:
    """max |got - want| / max |want|, on the CPU in float64."""
    got, want = got.detach().double().cpu(), want.detach().double().cpu()
    return float((got - want).abs().max() / want.abs().max().clamp_min(1e-300))


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean over frames of the Spearman rank correlation of two (N, H, W) maps."""
    a, b = a.detach().double().cpu().flatten(1), b.detach().double().cpu().flatten(1)
    ra, rb = a.argsort(1).argsort(1).double(), b.argsort(1).argsort(1).double()
    ra, rb = ra - ra.mean(1, keepdim=True), rb - rb.mean(1, keepdim=True)
    return float(((ra * rb).sum(1) / (ra.norm(dim=1) * rb.norm(dim=1))).mean())


class Roofline(NamedTuple):
    """The engine call a speed figure timed, as far as its roofline needs it (:func:`benchmarks.common.roofline_share`)."""

    agent: Any
    incremental: bool | str = "auto"
    radius: float = 5
    per_eval: int | None = None


class Check:
    def __init__(self) -> None:
        self.checks: list[dict] = []
        self.bench: list[dict] = []
        self.peaks: tuple[float, float] | None = None  # (FLOP/s, bytes/s), measured before the speed figures

    def record(self, name: str, value: float, threshold: float, note: str = "") -> None:
        passed = bool(value <= threshold)
        self.checks.append(dict(name=name, value=value, threshold=threshold, passed=passed, note=note))
        print(f"[{'ok' if passed else 'FAIL'}] {name}: {value:.3g} (<= {threshold:g}) {note}", flush=True)

    def time(self, name: str, seconds: float, frames: int, roofline: Roofline | None = None, **extra) -> dict:
        if roofline is not None and self.peaks is not None:
            try:  # a figure without its roofline is still a figure
                share = roofline_share(
                    roofline.agent,
                    roofline.incremental,
                    roofline.radius,
                    5,
                    frames / seconds,
                    frames,
                    self.peaks,
                    roofline.per_eval,
                )
                extra.update(plan=share["plan"], of_roofline=share["roofline_fraction"])
            except Exception as exc:  # noqa: BLE001 (reported in the row)
                extra.update(of_roofline_error=f"{type(exc).__name__}: {exc}")
        row = dict(
            name=name,
            seconds=seconds,
            frames=frames,
            s_per_frame=seconds / frames,
            frames_per_s=frames / seconds,
            **extra,
        )
        self.bench.append(row)
        print(
            f"  {name}: {seconds / frames * 1e3:.3f} ms/frame, {frames / seconds:.0f} frames/s "
            f"{' '.join(f'{k}={v}' for k, v in extra.items())}",
            flush=True,
        )
        return row


def load_data(data: Path):
    gru = dict(np.load(data / "pong_gru.npz"))
    lstm = dict(np.load(data / "pong_lstm.npz"))
    return gru, lstm


def states_of(arrays: dict, rows=slice(None)) -> tuple[torch.Tensor, ...]:
    keys = sorted(k for k in arrays if k.startswith("state_"))
    return tuple(torch.from_numpy(arrays[k][rows]) for k in keys)


def correctness(c: Check, device, agents_cpu, agents_dev, data, quick: bool) -> None:
    cuda = device.type == "cuda"
    set_tf32(False)
    # 0. preprocessing gives the same bytes on the device as on the CPU (Pillow's resampling)
    frames = data["gru"]["frames"][:200]
    on_device = preprocess_bytes(torch.from_numpy(frames).to(device)).cpu()
    differ = int((on_device != preprocess_bytes(frames)).sum())
    c.record("preprocessing_bytes_device_vs_cpu", differ, 0, "200 frames, bytes that differ")
    # 1. outputs recomputed on the device from the recorded frames and states equal the recorded ones
    for name, arrays in data.items():
        x = preprocess_frames(arrays["frames"][:200], device=device)
        with torch.inference_mode():
            out = agents_dev[name](x, tuple(s.to(device) for s in states_of(arrays, slice(0, 200))))
        err = max(
            rel_error(out.logits, torch.from_numpy(arrays["logits"][:200])),
            rel_error(out.value.reshape(-1), torch.from_numpy(arrays["values"][:200]).reshape(-1)),
        )
        c.record(f"recorded_outputs[{name}]", err, 1e-5 if cuda else 0.0, "200 frames, recorded on the CPU")
    # 1b. a row's outputs in a batch of 32 against the row alone: what rollout.num_envs can rely on here (on the
    # CPU the engine's row padding makes them equal bit for bit; on CUDA a kernel chosen by batch size may not)
    for name, arrays in data.items():
        x = preprocess_frames(arrays["frames"][:32], device=device)
        states = tuple(s.to(device) for s in states_of(arrays, slice(0, 32)))
        with torch.inference_mode():
            batch = agents_dev[name](x, states).logits
            alone = torch.cat(
                [agents_dev[name](x[i : i + 1], tuple(s[i : i + 1] for s in states)).logits for i in range(32)]
            )
        differ = int((batch != alone).any(dim=1).sum())
        c.record(
            f"batch_vs_single_rows[{name}]",
            rel_error(batch, alone),
            1e-5 if cuda else 0.0,
            f"logits of 32 rows batched and one at a time; {differ} of 32 rows differ in some bit",
        )
    # 2. maps on the device equal maps on the CPU (float32, TF32 off)
    rows = slice(100, 104)
    for name, arrays in data.items():
        frames, states = arrays["frames"][rows], states_of(arrays, rows)
        for interp in ("occlude", "searchlight"):
            want = perturbation_saliency(agents_cpu[name], frames, states, interp=interp)
            got = perturbation_saliency(agents_dev[name], frames, states, interp=interp)
            err = max(rel_error(got.actor_scores, want.actor_scores), rel_error(got.critic_scores, want.critic_scores))
            c.record(f"device_vs_cpu[{name},{interp}]", err, 1e-4, "4 frames, d5 r5, float32")
    # 2b. a process's own TF32 / reduced-precision settings stay out of a saliency call, which leaves them as found:
    # torch.set_float32_matmul_precision("high") and the per-backend fp32_precision settings of newer torch
    frames, states = data["gru"]["frames"][rows], states_of(data["gru"], rows)
    want = perturbation_saliency(agents_dev["gru"], frames, states)
    for label in ("matmul_precision_high", "legacy_allow_tf32", "fp32_precision_tf32"):
        set_tf32(False)
        if label == "matmul_precision_high":
            torch.set_float32_matmul_precision("high")
        elif label == "legacy_allow_tf32":
            torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = True
        else:
            for name in ("cuda.matmul", "cudnn.conv", "mkldnn.conv"):
                FLOAT32_BACKENDS[name].fp32_precision = "tf32"
        before = float32_precision_settings()
        try:
            got = perturbation_saliency(agents_dev["gru"], frames, states)
            err = max(rel_error(got.actor, want.actor), rel_error(got.critic, want.critic))
            kept = float32_precision_settings() == before
            note = "4 frames, d5 r5: maps against the default settings'" + ("" if kept else "; NOT RESTORED")
            c.record(f"user_precision_kept_out[{label}]", err if kept else float("inf"), 1e-6, note)
        except Exception as exc:  # a raising call under a user's settings is a failed check
            c.record(f"user_precision_kept_out[{label}]", float("nan"), 1e-6, f"{type(exc).__name__}: {exc}"[:200])
    set_tf32(False)
    # 3. float64 on the device equals the loop reference (numpy/scipy masks, one pass per perturbation)
    for name, arrays in data.items():
        agent64 = agents_dev[name].double()
        ref_agent = agents_cpu[name].double()
        t = 120
        states = states_of(arrays, slice(t, t + 1))
        x = preprocess_frames(arrays["frames"][t : t + 1], dtype=torch.float64)  # both get the same input
        got = perturbation_saliency(agent64, x, states, density=10)
        ref = saliency_np(ref_agent, x[0, 0].numpy(), tuple(s.double() for s in states), density=10)
        err = max(
            rel_error(got.actor_scores[0], torch.from_numpy(ref["actor_scores"])),
            rel_error(got.critic_scores[0], torch.from_numpy(ref["critic_scores"])),
        )
        c.record(f"float64_vs_loop_reference[{name}]", err, 1e-9, "1 frame, d10 r5")
        agents_dev[name].float()
        agents_cpu[name].float()
    # 4. perturbations per forward pass and frames scored together never change a map
    name, arrays = "gru", data["gru"]
    frames, states = arrays["frames"][200:204], states_of(arrays, slice(200, 204))
    for incremental in (True, False):
        full = perturbation_saliency(
            agents_dev[name], frames, states, incremental=incremental, perturbations_per_eval=1024
        )
        worst, identical = 0.0, True
        for per_eval in (1, 7, 64, 300):
            part = perturbation_saliency(
                agents_dev[name],
                frames[:1] if per_eval == 1 else frames,
                tuple(s[:1] for s in states) if per_eval == 1 else states,
                incremental=incremental,
                perturbations_per_eval=per_eval,
            )
            n = part.actor_scores.shape[0]
            identical &= bool(
                torch.equal(part.actor_scores, full.actor_scores[:n])
                and torch.equal(part.critic_scores, full.critic_scores[:n])
            )
            worst = max(
                worst,
                rel_error(part.actor_scores, full.actor_scores[:n]),
                rel_error(part.critic_scores, full.critic_scores[:n]),
            )
        one_by_one = torch.cat(
            [
                perturbation_saliency(
                    agents_dev[name], frames[i : i + 1], tuple(s[i : i + 1] for s in states), incremental=incremental
                ).actor_scores
                for i in range(4)
            ]
        )
        together = perturbation_saliency(agents_dev[name], frames, states, incremental=incremental).actor_scores
        identical &= bool(torch.equal(one_by_one, together))
        worst = max(worst, rel_error(one_by_one, together))
        c.record(
            f"chunk_invariance[incremental={incremental}]",
            worst,
            0.0 if not cuda else 1e-5,
            f"perturbations per pass 1/7/64/300/1024, frames 1 vs 4; bit-identical: {identical}",
        )
    # 5. incremental inference equals plain passes
    for name, arrays in data.items():
        frames, states = arrays["frames"][rows], states_of(arrays, rows)
        for radius in (3, 5):
            for interp in ("occlude", "searchlight"):
                inc = perturbation_saliency(
                    agents_dev[name], frames, states, radius=radius, interp=interp, incremental=True
                )
                plain = perturbation_saliency(
                    agents_dev[name], frames, states, radius=radius, interp=interp, incremental=False
                )
                err = max(
                    rel_error(inc.actor_scores, plain.actor_scores), rel_error(inc.critic_scores, plain.critic_scores)
                )
                c.record(f"incremental_vs_plain[{name},r{radius},{interp}]", err, 1e-5)
    # 6. Jacobians: batched equals a plain per-frame autograd loop; func equals autograd
    for name, arrays in data.items():
        agent = agents_dev[name]
        frames, states = arrays["frames"][rows], states_of(arrays, rows)
        batched = jacobian_saliency(agent, frames, states)
        x = preprocess_frames(frames, device=device)
        loop_actor, loop_critic = [], []
        for i in range(x.shape[0]):
            leaf = x[i : i + 1].clone().requires_grad_(True)
            out = agent(leaf, tuple(s[i : i + 1].to(device) for s in states), batch_invariant=False)
            (ga,) = torch.autograd.grad((out.logits * out.logits.detach()).sum(), leaf, retain_graph=True)
            (gc,) = torch.autograd.grad(out.value.sum(), leaf)
            loop_actor.append(ga)
            loop_critic.append(gc)
        err = max(
            rel_error(batched.actor_grad, torch.cat(loop_actor)), rel_error(batched.critic_grad, torch.cat(loop_critic))
        )
        c.record(f"jacobian_vs_autograd_loop[{name}]", err, 1e-5, "4 frames")
        func = jacobian_saliency(agent, frames, states, backend="func")
        err = max(rel_error(func.actor_grad, batched.actor_grad), rel_error(func.critic_grad, batched.critic_grad))
        err = max(
            err,
            rel_error(action_jacobian(agent, frames, states, backend="func"), action_jacobian(agent, frames, states)),
        )
        c.record(f"jacobian_func_vs_autograd[{name}]", err, 1e-5, "maps and the per-action Jacobian")
    # 7. fast precision's split products on the GPU's own kernels against its float32 emulation: the Triton kernels
    # (bfloat16 parts, float32 accumulation and output) and three TF32 products (TF32 holds bfloat16 parts exactly,
    # unless a cuDNN algorithm transforms its inputs first). Both differ from the emulation by the order of float32
    # sums only where they compute what they should. CUDA only: on the CPU TF32 changes nothing, and triton's CPU
    # interpreter computes bfloat16 wrongly (tests/integration/test_split_kernels.py checks the kernels with float16
    # parts there)
    kernels = ["tf32"] + (["triton"] if importlib.util.find_spec("triton") is not None else [])
    for name, arrays in data.items() if cuda else []:
        frames, states = arrays["frames"][rows], states_of(arrays, rows)
        emulated = perturbation_saliency(agents_dev[name], frames, states, precision="fast")  # once per agent
        for kernel in kernels:
            try:  # a kernel that fails to build or run is a result: the checks and benchmarks after it still run
                with use_split_kernel(kernel):
                    got = perturbation_saliency(agents_dev[name], frames, states, precision="fast")
            except Exception as exc:
                c.record(
                    f"fast_{kernel}_vs_emulation[{name}]", float("nan"), 1e-5, f"{type(exc).__name__}: {exc}"[:300]
                )
                continue
            err = max(
                rel_error(got.actor_scores, emulated.actor_scores),
                rel_error(got.critic_scores, emulated.critic_scores),
            )
            c.record(f"fast_{kernel}_vs_emulation[{name}]", err, 1e-5, "4 frames, d5 r5: the same split products")


def benchmark(c: Check, device, agents_cpu, agents_dev, data, quick: bool) -> None:
    cuda = device.type == "cuda"
    arrays = data["gru"]
    agent = agents_dev["gru"]
    total = arrays["frames"].shape[0]
    n = 8 if quick else 256
    repeats = 1 if quick else 3
    frames, states = arrays["frames"][:n], states_of(arrays, slice(0, n))
    set_tf32(False)
    # engine vs the loop reference on the same device
    ref_frames = 1
    ref_state = tuple(s.to(device) for s in states_of(arrays, slice(150, 151)))
    t_ref = timed(lambda: saliency_np(agent, arrays["frames"][150], ref_state), device, repeats=1)
    c.time("loop_reference_d5_r5", t_ref, ref_frames)
    t_engine = timed(lambda: perturbation_saliency(agent, frames, states), device)
    c.time("engine_d5_r5", t_engine, n, Roofline(agent), vs_reference=round(t_ref / (t_engine / n), 1))
    # incremental vs plain
    for radius in (3, 5, 8):
        t_inc = timed(
            lambda: perturbation_saliency(agent, frames, states, radius=radius, incremental=True), device, repeats
        )
        t_plain = timed(
            lambda: perturbation_saliency(agent, frames, states, radius=radius, incremental=False), device, repeats
        )
        c.time(f"incremental_d5_r{radius}", t_inc, n, Roofline(agent, True, radius), vs_plain=round(t_plain / t_inc, 2))
        c.time(f"plain_d5_r{radius}", t_plain, n, Roofline(agent, False, radius))
    # perturbations per forward pass, up to memory
    sizes = [64, 512] if quick else [256, 1024, 4096, 16384, 65536]
    for incremental in (True, False):
        for per_eval in sizes:
            if cuda:  # each row's peak is its own, not an earlier part's of the process
                torch.cuda.reset_peak_memory_stats(device)
            try:
                t = timed(
                    lambda: perturbation_saliency(
                        agent, frames, states, perturbations_per_eval=per_eval, incremental=incremental
                    ),
                    device,
                    repeats,
                )
            except torch.OutOfMemoryError:
                c.bench.append(dict(name=f"per_eval_{per_eval}_incremental={incremental}", error="out of memory"))
                torch.cuda.empty_cache()
                break
            peak = torch.cuda.max_memory_allocated(device) / 2**30 if cuda else None
            c.time(
                f"per_eval_{per_eval}_incremental={incremental}",
                t,
                n,
                Roofline(agent, incremental, per_eval=per_eval),
                peak_gib=None if peak is None else round(peak, 2),
            )
    t_auto = timed(lambda: perturbation_saliency(agent, frames, states), device, repeats)
    c.time("per_eval_default(memory budget)", t_auto, n, Roofline(agent))
    # precision: float32 (TF32 off / on), bf16 autocast; accuracy against float64 maps of the same frames
    k = 4 if quick else 16
    sub, sub_states = frames[:k], tuple(s[:k] for s in states)
    want = perturbation_saliency(agent.double(), sub, sub_states)
    agent.float()
    variants = {"float32": (False, None), "tf32": (True, None)}
    if cuda:
        variants["bf16_autocast"] = (False, torch.bfloat16)
    for label, (tf32, autocast) in variants.items():
        set_tf32(tf32)

        def run(frames_=frames, states_=states):
            if autocast is None:
                return perturbation_saliency(agent, frames_, states_, tf32=tf32)
            with torch.autocast(device.type, dtype=autocast):
                return perturbation_saliency(agent, frames_, states_)

        got = run(sub, sub_states)
        accuracy = dict(
            actor_rel_error=rel_error(got.actor, want.actor),
            critic_rel_error=rel_error(got.critic, want.critic),
            actor_spearman=round(spearman(got.actor, want.actor), 4),
            critic_spearman=round(spearman(got.critic, want.critic), 4),
        )
        c.time(f"precision_{label}", timed(run, device, repeats), n, **accuracy)
    set_tf32(False)
    # frames/s at density 5 over all recorded frames (1000), default settings
    many = 32 if quick else total
    t_all = timed(
        lambda: perturbation_saliency(agent, arrays["frames"][:many], states_of(arrays, slice(0, many))),
        device,
        repeats=1,
    )
    c.time(f"engine_d5_r5_{many}_frames", t_all, many, Roofline(agent))
    # Jacobian backends
    jn = total if cuda else 64
    for backend in ("autograd", "func"):
        t = timed(
            lambda: jacobian_saliency(agent, arrays["frames"][:jn], states_of(arrays, slice(0, jn)), backend=backend),
            device,
            repeats,
        )
        c.time(f"jacobian_maps_{backend}", t, jn)
        t = timed(lambda: action_jacobian(agent, arrays["frames"][:n], states, backend=backend), device, repeats)
        c.time(f"action_jacobian_{backend}", t, n)
    # the same engine call on this machine's CPU, for scale
    cpu_n = 8
    t_cpu = timed(
        lambda: perturbation_saliency(agents_cpu["gru"], frames[:cpu_n], tuple(s[:cpu_n] for s in states)),
        torch.device("cpu"),
        repeats=1,
    )
    c.time("engine_d5_r5_on_this_cpu", t_cpu, cpu_n, threads=torch.get_num_threads())


def standard_pipeline(c: Check, device, data: Path, quick: bool) -> None:
    """A Nature-CNN agent on 4 stacked 84x84 frames (CleanRL's ppo_atari, loaded by its adapter): correctness on
    the device, then its speed."""
    if not (data / "pong_nature.npz").is_file():
        print("no pong_nature.npz: skipping the standard-pipeline part (rerun benchmarks/gpu/prepare.py)", flush=True)
        return
    arrays = dict(np.load(data / "pong_nature.npz"))
    cpu_agent = load_cleanrl(data / "cleanrl-ppo.pt", device="cpu")
    agent = load_cleanrl(data / "cleanrl-ppo.pt", device=device)
    obs, total = arrays["observations"], arrays["observations"].shape[0]
    set_tf32(False)
    with torch.inference_mode():
        out = agent(torch.from_numpy(obs[:200]).to(device).float() / 255, ())
    err = max(
        rel_error(out.logits, torch.from_numpy(arrays["logits"][:200])),
        rel_error(out.value, torch.from_numpy(arrays["values"][:200])),
    )
    c.record(
        "nature:recorded_outputs", err, 1e-5 if device.type == "cuda" else 0.0, "200 observations, recorded on the CPU"
    )
    rows = slice(100, 104)
    want = perturbation_saliency(cpu_agent, obs[rows], ())
    got = perturbation_saliency(agent, obs[rows], ())
    c.record(
        "nature:device_vs_cpu",
        max(rel_error(got.actor_scores, want.actor_scores), rel_error(got.critic_scores, want.critic_scores)),
        1e-4,
        "4 observations 4x84x84, d5 r5, float32",
    )
    agent64 = load_cleanrl(data / "cleanrl-ppo.pt", device=device, dtype="float64")
    got64 = perturbation_saliency(agent64, obs[120:121], (), density=12)
    ref = saliency_np(load_cleanrl(data / "cleanrl-ppo.pt", device="cpu", dtype="float64"), obs[120], (), density=12)
    c.record(
        "nature:float64_vs_loop_reference",
        max(
            rel_error(got64.actor_scores[0], torch.from_numpy(ref["actor_scores"])),
            rel_error(got64.critic_scores[0], torch.from_numpy(ref["critic_scores"])),
        ),
        1e-9,
        "1 observation, d12 r5",
    )
    full = perturbation_saliency(agent, obs[rows], (), perturbations_per_eval=1156)
    worst = max(
        rel_error(perturbation_saliency(agent, obs[rows], (), perturbations_per_eval=k).actor_scores, full.actor_scores)
        for k in (7, 300)
    )
    # on CUDA, cuDNN picks the Nature CNN's convolution algorithms by batch size: float32 rounding, as device vs CPU
    c.record(
        "nature:chunk_invariance", worst, 0.0 if device.type != "cuda" else 1e-4, "perturbations per pass 7/300/1156"
    )
    try:
        inc = perturbation_saliency(agent, obs[rows], (), incremental=True)
        plain = perturbation_saliency(agent, obs[rows], (), incremental=False)
        c.record("nature:incremental_vs_plain", rel_error(inc.actor_scores, plain.actor_scores), 1e-5, "d5 r5")
        has_windows = True
    except ValueError as exc:
        print(f"  no incremental inference for this agent: {exc}", flush=True)
        has_windows = False
    n = 8 if quick else 256
    repeats = 1 if quick else 3
    t_ref = timed(lambda: saliency_np(agent, obs[150], ()), device, repeats=1)
    c.time("nature:loop_reference_d5_r5", t_ref, 1)
    t_engine = timed(lambda: perturbation_saliency(agent, obs[:n], ()), device, repeats)
    c.time("nature:engine_d5_r5", t_engine, n, Roofline(agent), vs_reference=round(t_ref / (t_engine / n), 1))
    for radius in (3, 5):
        t_plain = timed(
            lambda: perturbation_saliency(agent, obs[:n], (), radius=radius, incremental=False), device, repeats
        )
        c.time(f"nature:plain_d5_r{radius}", t_plain, n, Roofline(agent, False, radius))
        if has_windows:
            t_inc = timed(
                lambda: perturbation_saliency(agent, obs[:n], (), radius=radius, incremental=True), device, repeats
            )
            c.time(
                f"nature:incremental_d5_r{radius}",
                t_inc,
                n,
                Roofline(agent, True, radius),
                vs_plain=round(t_plain / t_inc, 2),
            )
    if not quick:
        for per_eval in (4096, 16384, 65536):
            c.time(
                f"nature:per_eval_{per_eval}",
                timed(
                    lambda: perturbation_saliency(agent, obs[:n], (), perturbations_per_eval=per_eval), device, repeats
                ),
                n,
                Roofline(agent, per_eval=per_eval),
            )
    many = 32 if quick else total
    c.time(
        f"nature:engine_d5_r5_{many}_frames",
        timed(lambda: perturbation_saliency(agent, obs[:many], ()), device, repeats=1),
        many,
        Roofline(agent),
    )
    t_jac = timed(lambda: jacobian_saliency(agent, obs[:many], ()), device, repeats)
    c.time("nature:jacobian_maps", t_jac, many)


def environment(device: torch.device) -> dict:
    cpu = platform.processor()
    try:
        cpu = next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )
    except (OSError, StopIteration):
        pass
    env = dict(
        python=platform.python_version(),
        torch=torch.__version__,
        cpu=cpu,
        cpu_threads=torch.get_num_threads(),
        device=str(device),
        numpy=np.__version__,
    )
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env.update(
            gpu=props.name,
            gpu_memory_gib=round(props.total_memory / 2**30, 1),
            cuda=torch.version.cuda,
            cudnn=torch.backends.cudnn.version(),
        )
    return env


def markdown(env: dict, c: Check) -> str:
    lines = [
        f"# GPU check: {env.get('gpu', 'no CUDA: CPU only')}",
        "",
        "```",
        json.dumps(env, indent=1),
        "```",
        "",
        "| check | value | threshold | passed | note |",
        "| --- | --- | --- | --- | --- |",
    ]
    lines += [
        f"| {r['name']} | {r['value']:.3g} | {r['threshold']:g} | {'yes' if r['passed'] else '**no**'} | {r['note']} |"
        for r in c.checks
    ]
    lines += ["", "| benchmark | ms/frame | frames/s | more |", "| --- | --- | --- | --- |"]
    for r in c.bench:
        if "error" in r:
            lines.append(f"| {r['name']} | - | - | {r['error']} |")
            continue
        more = ", ".join(
            f"{k}={v}" for k, v in r.items() if k not in ("name", "seconds", "frames", "s_per_frame", "frames_per_s")
        )
        lines.append(f"| {r['name']} | {r['s_per_frame'] * 1e3:.3f} | {r['frames_per_s']:.0f} | {more} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--data", default=ROOT / ".gpu_carry", type=Path)
    parser.add_argument("--quick", action="store_true", help="small sizes (automatic without CUDA)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    # `timeout` stops a step with SIGTERM: as an exit, so the `finally` below still writes what was measured
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(124))
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    quick = args.quick or not cuda
    if not cuda:
        print("no CUDA here: running the CPU part with small sizes", flush=True)
    env = environment(device)
    print(json.dumps(env), flush=True)
    if not (args.data / "pong_gru.npz").is_file():
        sys.exit(f"error: {args.data} has no pong_gru.npz: run `python benchmarks/gpu/prepare.py {args.data}` first")
    gru, lstm = load_data(args.data)
    data = {"gru": gru, "lstm": lstm}
    paths = {"gru": args.data / "baby-a3c-pong.tar", "lstm": resolve_checkpoint("builtin/pong")}
    agents_cpu = {k: load_agent(p, device="cpu") for k, p in paths.items()}
    agents_dev = {k: load_agent(p, device=device) for k, p in paths.items()}
    c = Check()
    started = time.perf_counter()
    try:
        correctness(c, device, agents_cpu, agents_dev, data, quick)
        env["correctness_seconds"] = round(time.perf_counter() - started, 1)
        set_tf32(False)
        c.peaks = measured_peaks(device)
        env.update(peak_flops_per_s=c.peaks[0], peak_bytes_per_s=c.peaks[1])
        benchmark(c, device, agents_cpu, agents_dev, data, quick)
        standard_pipeline(c, device, args.data, quick)
    finally:
        env["total_seconds"] = round(time.perf_counter() - started, 1)
        (args.out / "check.json").write_text(
            json.dumps(dict(environment=env, checks=c.checks, benchmarks=c.bench), indent=1)
        )
        report = markdown(env, c)
        (args.out / "check.md").write_text(report)
        print(report)
    failed = [r["name"] for r in c.checks if not r["passed"]]
    if failed:
        print(f"{len(failed)} check(s) failed: {', '.join(failed)}")
        sys.exit(1)


if __name__ == "__main__":
    main()
