"""The screenshot (README, docs/viewer.md) of report.html, taken in headless Chromium from a small real run.

Runs the main job (built-in Pong agent, ``--steps`` steps, actor, critic and Jacobian maps) into a temporary
directory (or uses ``--run-dir``'s report.html), opens its page from disk in Debian's Chromium through Playwright,
moves to ``--frame`` and writes a PNG screenshot of the viewer (palette-quantised to stay small), with the page's
size and build time printed:

    python benchmarks/screenshot_viewer.py                     # writes benchmarks/results/viewer.png
    python benchmarks/screenshot_viewer.py --run-dir outputs/2026-11-27/12-00-00 --out /tmp/viewer.png

Needs ``apt-get install -y chromium`` and ``pip install playwright`` (the system's Chromium is driven; no
``playwright install``).
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def make_run(out_dir: Path, steps: int, density: int) -> tuple[Path, float]:
    """The main job into ``out_dir`` (report on); returns its report.html and the seconds that building the page
    again from the job's saved arrays takes (the page alone, without the rollout and saliency)."""
    from engine.jobs.config import JobConfig
    from engine.jobs.run import run_job
    from engine.storage.arrays import load_arrays
    from engine.viz.report import MAP_KINDS, write_report

    config = JobConfig.from_dict(
        {
            "rollout": {"steps": steps},
            "saliency": {"density": density, "method": "both"},
            "output": {"dir": str(out_dir), "movie": False},
            "progress": False,
        }
    )
    report = run_job(config)["report"]
    played, settings = load_arrays(out_dir / "rollout.npz")
    maps, _ = load_arrays(out_dir / "saliency.npz")
    started = time.perf_counter()
    write_report(
        out_dir / "again.html",
        played["frames"],
        {k: maps[k] for k in MAP_KINDS},
        values=played["values"],
        actions=played["actions"],
        rewards=played["rewards"],
        dones=played["dones"],
        action_names=settings["action_names"],
        settings=settings,
        checkpoint=settings["checkpoint"],
    )
    return report, time.perf_counter() - started


def screenshot(report: Path, out: Path, frame: int, width: int) -> int:
    from PIL import Image
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=ARGS)
        page = browser.new_page(viewport={"width": width, "height": 1000})
        errors = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.goto(report.resolve().as_uri())
        page.locator("body[data-drawn='0']").wait_for(state="attached")
        page.locator("#frame-slider").evaluate(
            "(e, v) => { e.value = v; e.dispatchEvent(new Event('input', {bubbles: true})); }", frame
        )
        page.locator(f"body[data-drawn='{frame}']").wait_for(state="attached")
        box = page.locator("#main").bounding_box()
        png = page.screenshot(
            full_page=True, clip={"x": 0, "y": 0, "width": width, "height": box["y"] + box["height"] + 8}
        )
        browser.close()
    if errors:
        raise SystemExit(f"the page logged errors: {errors}")
    image = Image.open(io.BytesIO(png)).convert("RGB").quantize(colors=128, method=Image.Quantize.MEDIANCUT)
    out.parent.mkdir(parents=True, exist_ok=True)
    image.save(out, optimize=True)
    return out.stat().st_size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--density", type=int, default=10)
    parser.add_argument("--frame", type=int, default=100)
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--run-dir", type=Path, default=None, help="use this run's report.html instead of a new run")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "viewer.png")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if args.run_dir:
            report, seconds = args.run_dir / "report.html", None
        else:
            report, seconds = make_run(Path(tmp), args.steps, args.density)
        size = report.stat().st_size
        png = screenshot(report, args.out, args.frame, args.width)
    built = f", built in {seconds:.2f} s" if seconds is not None else ""
    print(
        f"report.html: {size / 1e6:.2f} MB ({size / 1e3 / max(1, args.steps):.1f} kB a frame){built}; "
        f"screenshot of frame {args.frame}: {args.out} ({png / 1e3:.0f} kB)"
    )


if __name__ == "__main__":
    main()
