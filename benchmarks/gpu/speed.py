"""The exact path's speed-ups, tried and measured side by side (issue 19, item 2; a benchmark, not a test).

    python benchmarks/gpu/speed.py --out DIR [--data .gpu_carry] [--frames 256] [--budget-s 300]

For four agents on real recorded frames (baby-a3c Pong, GRU, 1x80x80; CleanRL ``ppo_atari``, Nature CNN on
4x84x84; the built-in ``builtin/pong_ppo``, Nature CNN + LSTM on 1x84x84; a seeded SB3 ``PPO("CnnPolicy")`` on
4x84x84, where prepared), d5 r5 occlude, it times
``perturbation_saliency`` in float32 with TF32 off under each variant, plain and incremental passes:

- ``eager``: today's engine; ``cudnn_benchmark``: cuDNN autotuning (``torch.backends.cudnn.benchmark``);
- ``compile``: the engine's ``compile=True`` (inductor, one static pass size, the mask application and score
  reduction inside the compiled region), its compilation time reported apart; ``compile_cudagraphs``:
  ``compile="reduce-overhead"`` (CUDA graphs on top);
- ``tf32``: TF32 convolutions (not exact: for scale) and ``split3_tf32``: each trunk convolution as three TF32
  products (``hi*hi + lo*hi + hi*lo``, float32 accumulation and output): a prototype of the fast mode's
  arithmetic on the tensor cores;
- ``fast``: ``precision="fast"`` (delta propagation, each linear product as three bfloat16 products with float32
  accumulation: engine.core.delta), plain and incremental passes; ``fast_triton``: the same under
  ``use_split_kernel("triton")`` (the three products on the Triton kernels of engine.core.split_kernels, bfloat16
  inputs with float32 accumulation and output, instead of the float32 emulation), skipped without CUDA or triton;
  ``fast_tf32``: under ``use_split_kernel("tf32")`` (the three products as TF32 products, which hold bfloat16 parts
  exactly), skipped without CUDA.

Each variant's maps are compared with float64 maps of the same frames (max |error| / max |map|, and the overlap
of the top 5% cells). Without CUDA it runs with small sizes on the CPU. Writes DIR/speed.json after every
agent (a run cut short keeps what it measured) and prints a table last. Each agent gets an equal share of what is
left of ``--budget-s`` when it starts: its variants past it (all but the eager baseline) are skipped and listed, as
are variants this machine cannot run (with the reason). A variant, or an agent, that fails gets a row with its error,
and the rest go on.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from benchmarks.common import cpu_flags, machine, measured_peaks, roofline_share  # noqa: E402
from benchmarks.gpu.check import environment, set_tf32, sync  # noqa: E402
from engine.core.batching import pad_rows  # noqa: E402
from engine.core.delta import use_split_kernel  # noqa: E402
from engine.core.device import float32_matmul_precision  # noqa: E402
from engine.core.incremental import conv_trunk_of  # noqa: E402
from engine.core.perturbation import perturbation_saliency  # noqa: E402
from engine.core.policy import PolicyOutput  # noqa: E402
from engine.policies.cleanrl import load_cleanrl  # noqa: E402
from engine.policies.greydanus2017 import load_agent  # noqa: E402
from engine.policies.loading import load_policy  # noqa: E402
from engine.policies.registry import resolve_checkpoint  # noqa: E402

SPLIT_KERNEL = ExitStack()  # holds the split kernel a variant chose (use_split_kernel) until the next apply
TF32_MASK = -8192  # 0xFFFFE000 as int32: sign, exponent and TF32's 10 mantissa bits


def tf32_split(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``t = hi + lo`` with ``hi`` exactly representable in TF32 (``lo`` is what TF32 would drop)."""
    hi = (t.contiguous().view(torch.int32) & TF32_MASK).view(torch.float32).view_as(t)
    return hi, t - hi


class Split3TF32:
    """A policy whose trunk convolutions run as three TF32 products each (the prototype of the fast mode's
    arithmetic): conv(x_hi, W_hi) + conv(x_lo, W_hi) + conv(x_hi, W_lo); everything else as the agent runs it.
    It declares no trunk, so the engine runs plain passes on it."""

    def __init__(self, agent) -> None:
        self.agent = agent
        trunk = conv_trunk_of(agent)
        if trunk is None:
            raise ValueError(f"{type(agent).__name__} declares no conv trunk")
        self.trunk = trunk
        self.split = [(tf32_split(conv.weight.detach()), conv) for conv, _ in trunk.layers]
        for name in ("observation_shape", "num_actions", "pipeline", "frame_stack", "device", "dtype"):
            setattr(self, name, getattr(agent, name))

    def initial_state(self, batch: int = 1):
        return self.agent.initial_state(batch)

    def reset_state(self, state, done):
        return self.agent.reset_state(state, done)

    def __call__(self, obs: torch.Tensor, state) -> PolicyOutput:
        n = obs.shape[0]
        x, state = pad_rows(obs), tuple(pad_rows(s) for s in state)
        if self.trunk.input_scale != 1:
            x = x * self.trunk.input_scale
        # TF32 for these convolutions alone: the engine's saliency call keeps it off for the rest (the recurrent
        # core and the heads stay float32)
        with float32_matmul_precision(x.device, True):
            for ((w_hi, w_lo), conv), (_, act) in zip(self.split, self.trunk.layers, strict=True):
                x_hi, x_lo = tf32_split(x)
                args = (conv.stride, conv.padding, conv.dilation, conv.groups)
                y = F.conv2d(x_hi, w_hi, conv.bias, *args) + F.conv2d(x_lo, w_hi, None, *args)
                y = y + F.conv2d(x_hi, w_lo, None, *args)
                x = y if act is None else act(y)
        return self.agent.from_trunk(x, state, n)


def apply(settings: dict) -> dict:
    """Set the process-wide switches a variant asks for (cuDNN autotuning, TF32, the fast mode's split kernel); the
    rest are keyword arguments of ``perturbation_saliency``."""
    kwargs = dict(settings)
    SPLIT_KERNEL.close()
    SPLIT_KERNEL.enter_context(use_split_kernel(kwargs.pop("split_kernel", "torch")))
    torch.backends.cudnn.benchmark = bool(kwargs.pop("cudnn_benchmark", False))
    set_tf32(bool(kwargs.get("tf32", False)))
    return kwargs


def rel_error(got: torch.Tensor, want: torch.Tensor) -> float:
    got, want = got.detach().double().cpu(), want.detach().double().cpu()
    return float((got - want).abs().max() / want.abs().max().clamp_min(1e-300))


def top_overlap(got: torch.Tensor, want: torch.Tensor, share: float = 0.05) -> float:
    """Mean over frames of |top cells of got & top cells of want| / |top cells|, the top ``share`` of each map."""
    got, want = got.detach().double().cpu().flatten(1), want.detach().double().cpu().flatten(1)
    k = max(1, int(share * got.shape[1]))
    a, b = got.topk(k, dim=1).indices, want.topk(k, dim=1).indices
    same = [len(set(x.tolist()) & set(y.tolist())) / k for x, y in zip(a, b, strict=True)]
    return float(np.mean(same))


def load_agents(data: Path, device: torch.device) -> dict:
    """name -> (loader(dtype) -> agent on ``device``, observations or frames, states)"""
    gru = dict(np.load(data / "pong_gru.npz"))
    nature = dict(np.load(data / "pong_nature.npz"))
    ppo = dict(np.load(data / "pong_ppo.npz"))

    def states(arrays: dict) -> tuple[torch.Tensor, ...]:
        return tuple(torch.from_numpy(arrays[k]) for k in sorted(arrays) if k.startswith("state_"))

    ppo_file = resolve_checkpoint("builtin/pong_ppo")
    agents = {
        "baby-a3c_gru": (
            lambda dtype: load_agent(data / "baby-a3c-pong.tar", device=device, dtype=dtype),
            gru["frames"],
            states(gru),
        ),
        "cleanrl_ppo_atari": (
            lambda dtype: load_cleanrl(data / "cleanrl-ppo.pt", device=device, dtype=dtype),
            nature["observations"],
            (),
        ),
        "builtin_pong_ppo": (
            lambda dtype: load_policy(ppo_file, device=device, dtype=dtype),
            ppo["observations"],
            states(ppo),
        ),
    }
    if (data / "sb3-ppo-shell.zip").exists():  # prepared since issue 19's benchmarks (older carries lack it)
        sb3 = dict(np.load(data / "pong_sb3.npz"))
        sb3_file = sb3_zip(data, Path(tempfile.mkdtemp()) / "sb3-ppo.zip")
        agents["sb3_ppo"] = (
            lambda dtype: load_policy(sb3_file, device=device, dtype=dtype),
            sb3["observations"],
            (),
        )
    return agents


def sb3_zip(data: Path, path: Path) -> Path:
    """The SB3 agent's zip rebuilt from what travelled (benchmarks/gpu/prepare.py): its zip without the weights,
    and ``policy.pth`` as SB3 writes it (``torch.save`` of the float32 state dict) from ``cleanrl-ppo.pt`` (float16
    values) by the key map."""
    import io
    import zipfile

    weights = torch.load(data / "cleanrl-ppo.pt", map_location="cpu", weights_only=True)
    policy = io.BytesIO()
    keys = json.loads((data / "sb3-ppo-keys.json").read_text())
    torch.save({k: weights[v].float() for k, v in keys}, policy)
    with zipfile.ZipFile(data / "sb3-ppo-shell.zip") as shell, zipfile.ZipFile(path, "w") as out:
        for info in shell.infolist():
            out.writestr(info, shell.read(info.filename))
        out.writestr("policy.pth", policy.getvalue())
    return path


def measure_agent(
    name: str,
    load,
    frames: np.ndarray,
    states: tuple,
    deadline: float,
    args: argparse.Namespace,
    n: int,
    rounds: int,
    clock,
    device: torch.device,
    peaks: tuple[float, float],
    rows: list[dict],
    skipped: list[str],
) -> None:
    """One agent's variants: each one's first call (compilation included) and its maps against float64 ones, in
    order until ``deadline`` (the eager baseline always runs), then every variant that ran timed in ``rounds``
    rounds; appends a row per variant to ``rows`` (a variant that fails gets its error instead) and the names of
    those not run to ``skipped``."""
    cuda = device.type == "cuda"
    triton_missing = None if importlib.util.find_spec("triton") else "no triton"
    unavailable = {"fast_triton": triton_missing if cuda else "no CUDA", "fast_tf32": None if cuda else "no CUDA"}
    frames_n, states_n = frames[:n], tuple(s[:n] for s in states)
    k = 4  # frames compared with float64
    set_tf32(False)
    want = perturbation_saliency(
        load(torch.float64), frames[:k], tuple(s[:k] for s in states), incremental=False, density=args.density
    )
    agent = load(torch.float32)
    # most telling first, cheapest to start first: what does not fit in the agent's share of the budget is skipped
    plain, inc = dict(incremental=False), dict(incremental=True)
    variants: list[tuple[str, object, dict]] = [
        ("eager", agent, plain),
        ("eager", agent, inc),
        # fast precision on the device's own kernels: they compile little, and are what is unmeasured
        ("fast", agent, dict(inc, precision="fast")),
        ("fast_tf32", agent, dict(inc, precision="fast", split_kernel="tf32")),
        ("fast_triton", agent, dict(inc, precision="fast", split_kernel="triton")),
        # cuDNN autotuning: seconds to tune each shape
        ("cudnn_benchmark", agent, dict(plain, cudnn_benchmark=True)),
        ("cudnn_benchmark", agent, dict(inc, cudnn_benchmark=True)),
        # compiled: tens of seconds each the first time; CUDA graphs right after the same plan compiled without them
        ("compile", agent, dict(inc, compile=True)),
        *([("compile_cudagraphs", agent, dict(inc, compile="reduce-overhead"))] if cuda else []),
        ("compile", agent, dict(plain, compile=True)),
        ("split3_tf32", Split3TF32(agent), dict(plain)),
        ("tf32", agent, dict(plain, tf32=True)),
        ("fast", agent, dict(plain, precision="fast")),
        ("fast_tf32", agent, dict(plain, precision="fast", split_kernel="tf32")),
        ("fast_triton", agent, dict(plain, precision="fast", split_kernel="triton")),
        ("compile+cudnn_benchmark", agent, dict(inc, compile=True, cudnn_benchmark=True)),
        ("compile+cudnn_benchmark", agent, dict(plain, compile=True, cudnn_benchmark=True)),
    ]
    if args.variants:
        variants = [v for v in variants if v[0] in args.variants.split(",")]
    ready: list[tuple[dict, object, dict]] = []  # (row so far, policy, settings) of the variants that ran
    for number, (label, policy, settings) in enumerate(variants):
        plan = "incremental" if settings.get("incremental") else "plain"
        if unavailable.get(label):
            skipped.append(f"{name}:{label}:{plan} ({unavailable[label]})")
            continue
        if number and time.perf_counter() > deadline:  # the eager baseline always runs
            skipped.append(f"{name}:{label}:{plan}")
            continue
        row: dict = dict(agent=name, variant=label, plan=plan)
        try:
            sync(device)
            t0 = time.perf_counter()
            got = perturbation_saliency(
                policy, frames[:k], tuple(s[:k] for s in states), density=args.density, **apply(settings)
            )
            sync(device)
            row["first_call_s"] = round(time.perf_counter() - t0, 2)  # compilation included
            warm = args.warmup_frames or n  # at the timed size by default
            perturbation_saliency(
                policy, frames_n[:warm], tuple(s[:warm] for s in states_n), density=args.density, **apply(settings)
            )
            row.update(
                actor_rel_error=rel_error(got.actor, want.actor),
                critic_rel_error=rel_error(got.critic, want.critic),
                actor_top5_overlap=round(top_overlap(got.actor, want.actor), 4),
                critic_top5_overlap=round(top_overlap(got.critic, want.critic), 4),
            )
            ready.append((row, policy, settings))
        except Exception as exc:  # a variant that fails is a result too
            row["error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
            rows.append(row)
            print(json.dumps(row), flush=True)
    # timed in rounds, each round every variant once, so that a slow spell of the machine hits all of them
    times: list[list[float]] = [[] for _ in ready]
    for _ in range(rounds):
        for (row, policy, settings), spent in zip(ready, times, strict=True):
            if "error" in row:
                continue
            try:
                kwargs = apply(settings)
                sync(device)
                t0 = clock()
                perturbation_saliency(policy, frames_n, states_n, density=args.density, **kwargs)
                sync(device)
                spent.append(clock() - t0)
            except Exception as exc:  # failing on the larger timed size is a result too
                row["error"] = f"timed: {type(exc).__name__}: {str(exc)[:300]}"
    for (row, _, _), spent in zip(ready, times, strict=True):
        if "error" not in row:
            seconds = float(np.median(spent))
            row.update(
                frames=len(frames_n),
                density=args.density,
                frames_per_s=round(len(frames_n) / seconds, 1),
                ms_per_frame=round(seconds / len(frames_n) * 1e3, 4),
                spread=round((max(spent) - min(spent)) / seconds, 3),
                rounds=rounds,
                clock=args.clock,
                threads=torch.get_num_threads(),
            )
            try:  # a variant of another network (split3_tf32's wrapper) has no roofline of its own
                share = roofline_share(
                    agent, row["plan"] == "incremental", 5, args.density, row["frames_per_s"], n, peaks
                )
                row.update(flops_per_input=share["flops_per_input"], bytes_per_input=share["bytes_per_input"])
                row.update(roofline_fraction=share["roofline_fraction"])
            except ValueError:
                pass
        rows.append(row)
        print(json.dumps(row), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--data", default=ROOT / ".gpu_carry", type=Path)
    parser.add_argument("--frames", type=int, default=None, help="frames timed per agent (256 on CUDA, 8 on a CPU)")
    parser.add_argument("--budget-s", type=float, default=300.0, help="start no variant after this many seconds")
    parser.add_argument("--agents", default=None, help="comma-separated subset of the agents")
    parser.add_argument("--rounds", type=int, default=None, help="timed rounds (3 on CUDA, 5 on a CPU)")
    parser.add_argument("--variants", default=None, help="comma-separated subset of the variants")
    parser.add_argument(
        "--clock",
        choices=("wall", "process"),
        default="wall",
        help="time with the wall clock or, on a CPU shared with other work, this process's CPU time (use --threads 1)",
    )
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--density", type=int, default=5, help="the 2017 method's grid step (radius 5)")
    parser.add_argument(
        "--warmup-frames", type=int, default=None, help="frames of the warm-up call (default: the timed count)"
    )
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    n = args.frames or (256 if cuda else 8)
    rounds = args.rounds or (3 if cuda else 5)
    if args.threads:
        torch.set_num_threads(args.threads)
    clock = time.process_time if args.clock == "process" else time.perf_counter
    env = dict(environment(device), machine=machine(), cpu_flags=cpu_flags())
    peaks = measured_peaks(device)
    env.update(peak_flops_per_s=peaks[0], peak_bytes_per_s=peaks[1])
    print(json.dumps(env), flush=True)
    started = time.perf_counter()
    rows: list[dict] = []
    skipped: list[str] = []
    # variant -> why this machine cannot run it

    def save() -> None:
        env["seconds"] = round(time.perf_counter() - started, 1)
        (args.out / "speed.json").write_text(json.dumps(dict(environment=env, rows=rows, skipped=skipped), indent=1))

    agents = load_agents(args.data, device)
    if args.agents:
        agents = {k: v for k, v in agents.items() if k in args.agents.split(",")}
    for index, (name, (load, frames, states)) in enumerate(agents.items()):
        # each agent gets an equal share of what is left of the budget, so one that overran shortens all the rest
        now = time.perf_counter()
        deadline = now + (started + args.budget_s - now) / (len(agents) - index)
        try:
            measure_agent(name, load, frames, states, deadline, args, n, rounds, clock, device, peaks, rows, skipped)
        except Exception as exc:  # one agent's failure (its float64 reference, say) leaves the others to run
            row = dict(agent=name, variant="(agent)", plan="-", error=f"{type(exc).__name__}: {str(exc)[:300]}")
            rows.append(row)
            print(json.dumps(row), flush=True)
        save()
        torch.backends.cudnn.benchmark = False
        set_tf32(False)
        SPLIT_KERNEL.close()
        if cuda:
            torch.cuda.empty_cache()
    save()
    print(f"\n# speed variants on {env.get('gpu', env.get('cpu'))}\n")
    print(
        "| agent | variant | plan | frames/s | vs eager | of roofline | first call s | actor err | critic err | top5 |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    base = {(r["agent"], r["plan"]): r["frames_per_s"] for r in rows if r["variant"] == "eager" and "error" not in r}
    for r in rows:
        if "error" in r:
            print(f"| {r['agent']} | {r['variant']} | - | - | - | - | - | {r['error'][:80]} | | |")
            continue
        ratio = r["frames_per_s"] / base.get((r["agent"], r["plan"]), float("nan"))
        print(
            f"| {r['agent']} | {r['variant']} | {r['plan']} | {r['frames_per_s']:.0f} | {ratio:.2f} | "
            f"{r.get('roofline_fraction', float('nan')):.1%} | {r['first_call_s']} | {r['actor_rel_error']:.1e} | {r['critic_rel_error']:.1e} | "
            f"{min(r['actor_top5_overlap'], r['critic_top5_overlap']):.3f} |"
        )
    if skipped:
        print(f"\nskipped (budget spent, or the reason given): {', '.join(skipped)}")


if __name__ == "__main__":
    main()
