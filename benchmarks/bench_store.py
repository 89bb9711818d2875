"""Stores on disk, the zarr format (3) against the chunked .npz format (2) it replaced: bytes per frame and
write / read throughput, measured in one run on one machine.

    python benchmarks/bench_store.py [--steps 200] [--density 5] [--repeats 3] [--output FILE.md]

Plays ``--steps`` steps of Pong-v4 with the built-in agent (the main job's), computes its perturbation maps
(the main job's settings: radius 5, density 5), then, for the rollout and for the maps, writes and reads back:

- ``npz (format 2)``: what the stores wrote before: one uncompressed ``np.savez`` file per chunk, written to a
  temporary file and renamed, plus a JSON manifest (the code of ``engine/io/store.py`` at format 2, inlined);
- ``zarr (format 3)``: :class:`engine.storage.store.ChunkStore`, as ``record_rollout`` / ``score_store`` write it
  (chunk arrays, then the chunk's marker), read back with ``RolloutStore.read`` / ``SaliencyStore.read``;
- the in-memory job's ``rollout.npz`` / ``saliency.npz``: ``np.savez`` (before) and ``np.savez_compressed`` (now).

Store chunking is the app's default (256 steps per rollout chunk, 64 frames per saliency chunk). Every timing is
the best of ``--repeats`` rounds, the formats interleaved; reads come from the page cache (a warm file system).
Only the store I/O is timed: playing and scoring are done once, before.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import best_of_interleaved, machine  # noqa: E402


def disk_bytes(path: Path) -> int:
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def npz_store_write(root: Path, chunks: list[dict], manifest: dict) -> None:
    """Format 2: ``manifest.json`` and ``chunks/NNNNNN.npz`` (uncompressed), each renamed into place."""
    (root / "chunks").mkdir(parents=True, exist_ok=True)
    (root / "manifest.json").write_text(json.dumps(manifest))
    for k, arrays in enumerate(chunks):
        target = root / "chunks" / f"{k:06d}.npz"
        tmp = target.with_name(f".{target.name}.partial")
        with open(tmp, "wb") as f:
            np.savez(f, **arrays, settings_json=np.array(json.dumps({"chunk": k})))
        os.replace(tmp, target)


def npz_store_read(root: Path, keys) -> dict:
    parts = []
    for path in sorted((root / "chunks").glob("*.npz")):
        with np.load(path, allow_pickle=False) as data:
            parts.append({k: data[k] for k in keys})
    return {k: np.concatenate([p[k] for p in parts]) for k in keys}


def main() -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--density", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--chunk-steps", type=int, default=256)
    parser.add_argument("--frames-per-chunk", type=int, default=64)
    parser.add_argument(
        "--output", default=str(ROOT / "benchmarks" / "results" / f"store_{time.strftime('%Y-%m-%d')}.md")
    )
    args = parser.parse_args()

    import torch

    import engine
    from engine.core.batching import chunk_bounds
    from engine.policies.registry import resolve_checkpoint
    from engine.storage.arrays import load_arrays, save_arrays
    from engine.storage.layout import ROLLOUT_FIELDS, rollout_layout, saliency_layout
    from engine.storage.store import ChunkStore, RolloutStore, SaliencyStore

    agent = engine.load_agent(resolve_checkpoint("builtin/pong", [], allow_download=False), device="cpu")
    played = engine.rollout(agent, "Pong-v4", args.steps, seed=0, progress=False)
    settings = engine.SaliencyConfig(density=args.density)
    maps = {
        k: v.numpy() for k, v in engine.compute_saliency(agent, played.observations, played.states, settings).items()
    }
    steps = args.steps
    rollout_arrays = {name: getattr(played, name).numpy() for name in ROLLOUT_FIELDS}
    rollout_arrays.update({f"state_{i}": s.numpy() for i, s in enumerate(played.states)})
    sampler = torch.Generator().manual_seed(0).get_state().numpy()
    r_bounds, s_bounds = chunk_bounds(steps, args.chunk_steps), chunk_bounds(steps, args.frames_per_chunk)
    r_chunks = [{**{k: v[a:b] for k, v in rollout_arrays.items()}, "sampler_state": sampler} for a, b in r_bounds]
    s_chunks = [{k: v[a:b] for k, v in maps.items()} for a, b in s_bounds]
    r_layout = rollout_layout(agent, played.frames.shape[1:], played.observations.shape[1:])
    s_layout = saliency_layout(agent, settings)
    identities = {  # what RolloutStore.read needs of a rollout's identity
        "rollout": dict(
            kind="rollout",
            env_id="Pong-v4",
            seed=0,
            greedy=False,
            num_steps=steps,
            state_shapes=[list(x.shape[1:]) for x in played.states],
            action_names=list(played.action_names),
            pipeline=played.pipeline,
        ),
        "saliency": dict(kind="saliency", density=args.density),
    }
    raw = {"rollout": sum(v.nbytes for v in rollout_arrays.values()), "saliency": sum(v.nbytes for v in maps.values())}

    work = Path(tempfile.mkdtemp(prefix="bench_store_"))
    counter = iter(range(10**6))

    def fresh(name: str) -> Path:
        return work / f"{name}_{next(counter)}"

    def zarr_write(kind: str) -> Path:
        root = fresh(f"zarr_{kind}")
        layout, chunks, size = (
            (r_layout, r_chunks, args.chunk_steps) if kind == "rollout" else (s_layout, s_chunks, args.frames_per_chunk)
        )
        store = ChunkStore.open_or_create(root, identities[kind], layout, steps, size)
        for k, arrays in enumerate(chunks):
            store.write(k, arrays)
        return root

    def npz_write(kind: str) -> Path:
        root = fresh(f"npz_{kind}")
        npz_store_write(root, r_chunks if kind == "rollout" else s_chunks, {"identity": {"kind": kind}})
        return root

    def memory_write(kind: str, compressed: bool) -> Path:
        path = fresh(f"memory_{kind}").with_suffix(".npz")
        arrays = rollout_arrays if kind == "rollout" else maps
        if compressed:
            save_arrays(path, arrays, {"bench": True})
        else:  # what save_arrays did before: np.savez
            with open(path, "wb") as f:
                np.savez(f, **arrays, settings_json=np.array("{}"))
        return path

    roots = {}  # one written copy of each, for sizes and reads
    for kind in ("rollout", "saliency"):
        roots[("npz (format 2)", kind)] = npz_write(kind)
        roots[("zarr (format 3)", kind)] = zarr_write(kind)
        roots[("in-memory job .npz, before (np.savez)", kind)] = memory_write(kind, False)
        roots[("in-memory job .npz, now (np.savez_compressed)", kind)] = memory_write(kind, True)

    # the stores read back what was written
    back = RolloutStore(ChunkStore(roots[("zarr (format 3)", "rollout")])).read()
    assert torch.equal(back.frames, played.frames) and torch.equal(back.states[0], played.states[0])
    assert all(
        np.array_equal(SaliencyStore(ChunkStore(roots[("zarr (format 3)", "saliency")])).read()[k], maps[k])
        for k in maps
    )

    r_keys, s_keys = tuple(rollout_arrays), tuple(maps)
    readers = {
        ("npz (format 2)", "rollout"): lambda: npz_store_read(roots[("npz (format 2)", "rollout")], r_keys),
        ("npz (format 2)", "saliency"): lambda: npz_store_read(roots[("npz (format 2)", "saliency")], s_keys),
        ("zarr (format 3)", "rollout"): lambda: RolloutStore(ChunkStore(roots[("zarr (format 3)", "rollout")])).read(),
        ("zarr (format 3)", "saliency"): lambda: SaliencyStore(
            ChunkStore(roots[("zarr (format 3)", "saliency")])
        ).read(),
    }
    for kind in ("rollout", "saliency"):
        for label in ("in-memory job .npz, before (np.savez)", "in-memory job .npz, now (np.savez_compressed)"):
            readers[(label, kind)] = (lambda path: lambda: load_arrays(path))(roots[(label, kind)])
    writers = (
        {("npz (format 2)", kind): (lambda kind: lambda: npz_write(kind))(kind) for kind in ("rollout", "saliency")}
        | {("zarr (format 3)", kind): (lambda kind: lambda: zarr_write(kind))(kind) for kind in ("rollout", "saliency")}
        | {
            (label, kind): (lambda kind, c: lambda: memory_write(kind, c))(kind, compressed)
            for kind in ("rollout", "saliency")
            for label, compressed in (
                ("in-memory job .npz, before (np.savez)", False),
                ("in-memory job .npz, now (np.savez_compressed)", True),
            )
        }
    )
    write_s = best_of_interleaved(args.repeats, writers)
    read_s = best_of_interleaved(args.repeats, readers)

    rows = []
    for (label, kind), root in roots.items():
        size = disk_bytes(root)
        rows.append(
            dict(
                format=label,
                data=kind,
                bytes=size,
                bytes_per_frame=size / steps,
                ratio_to_raw=raw[kind] / size,
                write_s=write_s[(label, kind)],
                read_s=read_s[(label, kind)],
                write_frames_per_s=steps / write_s[(label, kind)],
                read_frames_per_s=steps / read_s[(label, kind)],
            )
        )
    shutil.rmtree(work)
    result = dict(
        machine=machine(),
        steps=steps,
        density=args.density,
        chunk_steps=args.chunk_steps,
        frames_per_chunk=args.frames_per_chunk,
        repeats=args.repeats,
        raw_bytes=raw,
        rows=rows,
        versions={p: version(p) for p in ("zarr", "numcodecs", "numpy")},
    )
    write_markdown(Path(args.output), result)
    print(Path(args.output).read_text())
    return result


def write_markdown(path: Path, r: dict) -> None:
    lines = [
        f"# Stores on disk: zarr (format 3) vs chunked .npz (format 2), {time.strftime('%Y-%m-%d')}",
        "",
        f"`python benchmarks/bench_store.py --steps {r['steps']} --density {r['density']} --repeats {r['repeats']}` on "
        f"{r['machine']} (zarr {r['versions']['zarr']}, numcodecs {r['versions']['numcodecs']}, numpy {r['versions']['numpy']}); "
        f"{r['steps']} steps of Pong-v4 played by `builtin/pong`, perturbation maps at radius 5, density {r['density']}; "
        f"store chunks of {r['chunk_steps']} steps (rollout) and {r['frames_per_chunk']} frames (maps). Raw array bytes: "
        f"rollout {r['raw_bytes']['rollout'] / 1e6:.2f} MB, maps {r['raw_bytes']['saliency'] / 1e6:.2f} MB. Best of "
        f"{r['repeats']} interleaved rounds; reads from the page cache.",
        "",
        "| format | data | on disk | bytes per frame | raw / on disk | write (frames/s) | read (frames/s) |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in r["rows"]:
        lines.append(
            f"| {row['format']} | {row['data']} | {row['bytes'] / 1e6:.2f} MB | {row['bytes_per_frame']:,.0f} | "
            f"{row['ratio_to_raw']:.1f}x | {row['write_frames_per_s']:,.0f} | {row['read_frames_per_s']:,.0f} |"
        )
    lines += ["", "```json", json.dumps(r, indent=1), "```", ""]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines))


if __name__ == "__main__":
    main()
