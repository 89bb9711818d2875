"""report.html in a real browser: headless Chromium (Debian's ``chromium``) driven by Playwright opens pages of tiny
real runs from disk (file://, no server, no network), moves the slider, toggles overlays, clicks the plots, plays,
sorts the sweep table, and checks the DOM, the canvas pixels and that nothing was logged as an error (a script or
style the page's Content-Security-Policy refuses is logged as one). Pages built from hostile names (job folders,
labels, env ids, action names, tags, overrides holding markup, script or URLs) show them as text, open no
dialog, and link only to pages inside the sweep directory.

Skips (one reason) only where Chromium or Playwright is missing and ``CI`` is not set; in CI that is a failure.
Set-up: ``apt-get install -y chromium`` and ``pip install playwright`` (never ``playwright install``: the test
drives the system's /usr/bin/chromium).
"""

import base64
import functools
import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import tiny_job as tiny_job_config

CHROMIUM = os.environ.get("ATARI_SALIENCY_CHROMIUM", "/usr/bin/chromium")
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def _missing() -> str | None:
    try:
        import playwright.sync_api  # noqa: F401  (only whether it imports)
    except ImportError:
        return "the playwright package is not installed (pip install playwright)"
    if not (Path(CHROMIUM).is_file() or shutil.which(CHROMIUM)):
        return f"no Chromium at {CHROMIUM} (apt-get install -y chromium)"
    return None


@pytest.fixture(scope="module")
def browser():
    missing = _missing()
    if missing:
        if os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no"):
            pytest.fail(f"CI is set but the browser test cannot run: {missing}")
        pytest.skip(f"browser test needs headless Chromium and Playwright: {missing}")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield chromium
        chromium.close()


class Page:
    """A page opened from disk, with every console error, page error, dialog (dismissed) and request that left
    file:/data: kept."""

    def __init__(self, browser, path: Path):
        # the page's Content-Security-Policy stays on (no network, no eval): waits are locators, not wait_for_function
        self.page = browser.new_page(viewport={"width": 1280, "height": 900})
        self.errors: list[str] = []
        self.requests: list[str] = []
        self.dialogs: list[str] = []
        self.page.on("dialog", lambda d: (self.dialogs.append(f"{d.type}: {d.message}"), d.dismiss()))
        self.page.on(
            "console",
            lambda m: self.errors.append(f"console {m.type}: {m.text}") if m.type in ("error", "warning") else None,
        )
        self.page.on("pageerror", lambda e: self.errors.append(f"page error: {e}"))
        self.page.on(
            "request", lambda r: None if r.url.startswith(("file:", "data:", "blob:")) else self.requests.append(r.url)
        )
        self.page.goto(path.as_uri())

    def clean(self) -> bool:
        """Nothing was logged as an error, no dialog opened, nothing was requested from the network."""
        return self.errors == [] and self.dialogs == [] and self.requests == []

    def drawn(self, frame) -> None:
        self.page.locator(f"body[data-drawn='{frame}']").wait_for(state="attached", timeout=15_000)

    def text(self, selector: str) -> str:
        return self.page.locator(selector).inner_text()

    def pixels(self, panel: int = 0) -> np.ndarray:
        """The panel's canvas as uint8 (210, 160, 4), read with getImageData."""
        encoded = self.page.evaluate(
            """i => { const c = document.querySelectorAll("canvas.view")[i];
                      const d = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
                      let s = ""; for (let k = 0; k < d.length; k += 8192) s += String.fromCharCode(...d.subarray(k, k + 8192));
                      return btoa(s); }""",
            panel,
        )
        return np.frombuffer(base64.b64decode(encoded), np.uint8).reshape(210, 160, 4)

    def slide_to(self, frame: int) -> None:
        self.page.locator("#frame-slider").evaluate(
            "(e, v) => { e.value = v; e.dispatchEvent(new Event('input', {bubbles: true})); }", frame
        )
        self.drawn(frame)

    def set_overlay(self, kind: str, on: bool) -> None:
        box = self.page.locator(f"#toggle-{kind}")
        if box.is_checked() != on:
            frame = self.page.evaluate("window.viewer.state.frame")
            self.page.evaluate("document.body.dataset.drawn = ''")
            box.click()
            self.drawn(frame)

    def click_plot(self, name: str, frame: int, frames: int) -> None:
        """Click the plot ``name`` where frame ``frame`` is drawn (the plot's own x mapping: 46 px left margin,
        8 px right)."""
        plot = self.page.locator(f'canvas.plot[data-plot="{name}"]')
        box = plot.bounding_box()
        x = 46 + frame / (frames - 1) * (box["width"] - 46 - 8)
        plot.click(position={"x": x, "y": box["height"] / 2})
        self.drawn(frame)


tiny_job = functools.partial(tiny_job_config, steps=8, movie=False)


@pytest.fixture(scope="module")
def run(tmp_path_factory, browser):
    """A real 8-step main job of the built-in Pong agent with perturbation and Jacobian maps, and its arrays."""
    from engine.jobs.run import run_job
    from engine.storage.arrays import load_arrays

    out = tmp_path_factory.mktemp("run")
    written = run_job(tiny_job(out, saliency={"method": "both"}))
    played, settings = load_arrays(out / "rollout.npz")
    maps, _ = load_arrays(out / "saliency.npz")
    return dict(
        report=written["report"],
        frames=played["frames"],
        actions=played["actions"],
        names=settings["action_names"],
        maps=maps,
    )


def test_viewer_slider_overlays_plots_and_play(browser, run):
    page = Page(browser, run["report"])
    page.drawn(0)
    frames, names, actions = run["frames"], run["names"], run["actions"]
    assert page.text("#frame-label") == "frame 0 / 7" and page.text("#action-name") == names[actions[0]]
    assert page.page.title().startswith("Pong-v4: step_") and "checkpoint" in page.text("header")
    # actor and critic overlays are on by default, the Jacobian ones off
    assert [
        page.page.locator(f"#toggle-{k}").is_checked() for k in ("actor", "critic", "jacobian_actor", "jacobian_critic")
    ] == [True, True, False, False]

    page.slide_to(5)
    assert page.text("#frame-label") == "frame 5 / 7" and page.text("#action-name") == names[actions[5]]
    for kind in ("actor", "critic"):
        page.set_overlay(kind, False)
    plain = page.pixels()
    assert np.array_equal(plain[..., :3], frames[5]) and np.all(plain[..., 3] == 255)  # exactly the recorded frame

    page.set_overlay("actor", True)
    actor = page.pixels()
    outside = np.r_[0:35, 195:210]  # an 80x80 map covers rows 35..194 only
    assert np.array_equal(actor[outside, :, :3], frames[5][outside])
    changed = np.any(actor[..., :3] != frames[5], axis=-1)
    assert changed[35:195].mean() > 0.01
    i, j = np.unravel_index(np.argmax(run["maps"]["actor"][5]), (80, 80))  # the strongest map cell: drawn blue
    y, x = 35 + 2 * i + 1, 2 * j + 1
    assert int(actor[y, x, 2]) > int(frames[5][y, x, 2]) and int(actor[y, x, 2]) > 150, (actor[y, x], frames[5][y, x])

    page.set_overlay("jacobian_actor", True)
    both = page.pixels()
    assert not np.array_equal(both, actor)
    page.set_overlay("jacobian_actor", False)
    assert np.array_equal(page.pixels(), actor)  # toggling back gives the same pixels
    page.page.select_option("#normalise", "run")
    page.page.evaluate("window.viewer.setFrame(window.viewer.state.frame)")
    page.drawn(5)
    run_scaled = page.pixels()
    assert np.array_equal(run_scaled[outside, :, :3], frames[5][outside])

    page.click_plot("value", 2, 8)
    assert page.text("#frame-label") == "frame 2 / 7" and page.text("#action-name") == names[actions[2]]
    page.click_plot("saliency-actor", 6, 8)
    assert page.text("#frame-label") == "frame 6 / 7"

    page.page.keyboard.press("ArrowLeft")
    page.drawn(5)
    page.page.select_option("#fps", "30")
    page.slide_to(0)
    page.page.click("#play")
    assert page.text("#play") == "pause"
    page.drawn(7)  # plays to the last frame and stops there
    page.page.locator("#play:text-is('play')").wait_for(timeout=5_000)
    assert page.text("#frame-label") == "frame 7 / 7" and page.page.locator("#frame-slider").input_value() == "7"
    assert np.array_equal(page.page.evaluate("window.viewer.state.frame"), 7)
    assert page.clean(), (page.errors, page.dialogs, page.requests)


def test_a_page_of_some_steps_numbers_them_as_in_the_run(browser, run, tmp_path):
    """steps=[3, 7] of the 8-step run: the slider's frames are steps 3..6, labelled so, each drawn with its own
    recorded pixels; the header says which steps of how many."""
    from engine.viz.report import write_report

    path = write_report(
        tmp_path / "report.html", run["frames"], {"actor": run["maps"]["actor"]}, actions=run["actions"], steps=[3, 7]
    )
    page = Page(browser, path)
    page.drawn(0)
    assert page.text("#frame-label") == "frame 3 / 6" and "4 (steps 3-6 of 8)" in page.text("header .meta")
    page.set_overlay("actor", False)
    page.slide_to(2)
    assert page.text("#frame-label") == "frame 5 / 6"
    assert np.array_equal(page.pixels()[..., :3], run["frames"][5]) and page.clean(), page.errors


def test_sweep_page_shows_jobs_side_by_side_and_sorts_its_table(browser, tmp_path):
    """Two store jobs (radius 3 and 5) over one recorded game, the multirun callback's page: both panels show the
    same frame, their overlays differ, the table sorts by a clicked column, and links open each job's page."""
    from omegaconf import OmegaConf

    from engine.cli.app import SweepSummary
    from engine.jobs.run import run_job

    sweep, game = tmp_path / "sweep", str(tmp_path / "game")
    for job, radius in (("0", 5), ("1", 3)):
        run_job(
            tiny_job(
                sweep / job,
                rollout={"steps": 6},
                saliency={"radius": radius},
                store={"rollout": game, "frames_per_chunk": 4},
            )
        )
    SweepSummary().on_multirun_end(
        OmegaConf.create({"hydra": {"sweep": {"dir": str(sweep)}}, "output": {"report": True}})
    )
    page = Page(browser, sweep / "report.html")
    page.drawn(0)
    assert page.page.locator("canvas.view").count() == 2
    page.slide_to(3)
    first, second = page.pixels(0), page.pixels(1)
    assert not np.array_equal(first, second)  # each job's own maps
    for kind in ("actor", "critic"):
        page.set_overlay(kind, False)
    assert np.array_equal(page.pixels(0), page.pixels(1))  # the same recorded frame under both

    def column(name):
        index = page.page.evaluate(
            f"[...document.querySelectorAll('#summary th')].findIndex(t => t.textContent === '{name}')"
        )
        return page.page.evaluate(
            f"[...document.querySelectorAll('#summary tbody tr')].map(r => r.children[{index}].textContent)"
        )

    assert column("radius") == ["5", "3"] and column("job") == ["0", "1"]
    page.page.click('#summary th[data-column="radius"]')
    assert column("radius") == ["3", "5"] and column("job") == ["1", "0"]
    assert page.page.get_attribute('#summary th[data-column="radius"]', "aria-sort") == "ascending"
    page.page.click('#summary th[data-column="radius"]')
    assert column("radius") == ["5", "3"]
    href = page.page.get_attribute("#summary tbody a", "href")
    assert href == "0/report.html" and (sweep / href).is_file()
    with page.page.expect_navigation():
        page.page.click("#summary tbody a")
    page.drawn(0)  # the job's own page opens and draws
    assert page.page.locator("canvas.view").count() == 1
    assert page.clean(), (page.errors, page.dialogs, page.requests)


def test_sweep_page_without_a_shared_game_is_a_sortable_table(browser, tmp_path):
    from engine.viz.report import write_sweep_report

    rows = [{"job": str(j), "radius": r, "actor_max": m} for j, (r, m) in enumerate([(8, 0.25), (3, None), (10, 1.5)])]
    path = write_sweep_report(tmp_path / "report.html", rows, ["job", "radius", "actor_max"])
    page = Page(browser, path)
    page.drawn("none")
    assert page.page.locator("canvas").count() == 0
    cells = "[...document.querySelectorAll('#summary tbody tr')].map(r => r.children[1].textContent)"
    page.page.click('#summary th[data-column="radius"]')
    assert page.page.evaluate(cells) == ["3", "8", "10"]  # numbers sort as numbers, not as text
    page.page.click('#summary th[data-column="actor_max"]')
    assert page.page.evaluate(cells) == ["3", "8", "10"]  # an empty cell sorts first
    assert page.clean(), (page.errors, page.dialogs, page.requests)


# --- hostile names ----------------------------------------------------------------------------------------------

XSS = '"><img src=x onerror=alert(1)><script>alert(2)</script>'
HOSTILE_JOBS = ["0", "javascript:alert(1)", '"><img src=x onerror=alert(1)>', "a#b?c%d e", "../../etc", "out"]
HREF = re.compile(r"^(?:[A-Za-z0-9._~-]|%[0-9A-F]{2})+(?:/(?:[A-Za-z0-9._~-]|%[0-9A-F]{2})+)*$")


def hostile_run_page(path: Path, job: str) -> Path:
    """A job's page whose env id, action names, checkpoint, tags and overrides hold markup and script."""
    from engine.viz.report import write_report

    frames = np.zeros((3, 210, 160, 3), np.uint8)
    frames[:, 50:60, 70:90] = (236, 236, 236)
    maps = {"actor": np.random.default_rng(0).random((3, 80, 80), dtype=np.float32)}
    return write_report(
        path,
        frames,
        maps,
        title=f"ALE/{XSS}-v5 {job}",
        action_names=["NOOP", XSS, "javascript:alert(3)"],
        actions=np.array([1, 2, 0]),
        values=np.array([0.5, 0.25, 0.0]),
        checkpoint=f"{XSS}.pt",
        settings={"tags": [XSS, "javascript:alert(4)"], "overrides": [f"saliency.radius={XSS}"]},
    )


def no_markup_from_data(page: Page) -> None:
    """No element the viewer did not make: no img, iframe, object or embed, and no inline event handler."""
    assert page.page.evaluate("document.querySelectorAll('img, iframe, object, embed, svg, base, form').length") == 0
    assert (
        page.page.evaluate(
            "[...document.querySelectorAll('*')].flatMap(e => e.getAttributeNames())"
            ".filter(a => a.toLowerCase().startsWith('on'))"
        )
        == []
    )
    assert page.page.evaluate("document.querySelectorAll('script:not([type=\"application/json\"])').length") == 1


@pytest.fixture
def hostile_sweep(tmp_path):
    """A sweep directory whose job folders are named with script, markup, a URL scheme and URL syntax, one job
    whose name climbs out (no folder), and a symlink pointing out of it; every folder has its page, and the sweep
    page has every job in its table and as a panel, with hostile labels, columns, cells and settings."""
    from engine.viz.report import Panel, write_sweep_report

    sweep, outside = tmp_path / "sweep", tmp_path / "outside"
    for job in HOSTILE_JOBS[:4]:
        hostile_run_page(sweep / job / "report.html", job)
    hostile_run_page(outside / "report.html", "outside")
    (sweep / "out").symlink_to(outside)
    links = {job: f"{job}/report.html" for job in HOSTILE_JOBS}  # as engine.jobs.outputs.sweep_report builds them
    rows = [{"job": job, f"override {XSS}": f"{XSS} {i}", "radius": i} for i, job in enumerate(HOSTILE_JOBS)]
    frames = np.zeros((4, 210, 160, 3), np.uint8)
    rng = np.random.default_rng(1)
    panels = [
        Panel(job, {"actor": rng.random((4, 80, 80), dtype=np.float32)}, label=f"job {job}: {XSS}", link=links[job])
        for job in HOSTILE_JOBS[:4]
    ]
    path = write_sweep_report(
        sweep / "report.html",
        rows,
        ["job", f"override {XSS}", "radius"],
        frames=frames,
        panels=panels,
        values=np.zeros(4),
        actions=np.array([0, 1, 2, 1]),
        action_names=["NOOP", XSS, "javascript:alert(3)"],
        title=f"sweep of ALE/{XSS}-v5",
        settings={"swept": [XSS], "tags": ["javascript:alert(5)"]},
        links=links,
    )
    return dict(sweep=sweep, path=path)


def test_hostile_names_show_as_text_and_links_stay_in_the_sweep(browser, hostile_sweep):
    sweep = hostile_sweep["sweep"]
    page = Page(browser, hostile_sweep["path"])
    page.drawn(0)
    assert page.text("h1") == f"sweep of ALE/{XSS}-v5" and page.page.title() == f"sweep of ALE/{XSS}-v5"
    assert f"1 {XSS}" in page.text("header")  # the action names, literally
    cells = "[...document.querySelectorAll('#summary tbody tr')].map(r => r.children[0].textContent)"
    assert page.page.evaluate(cells) == HOSTILE_JOBS  # each folder name literally, as text
    assert page.page.evaluate("[...document.querySelectorAll('#summary th')].map(t => t.textContent)") == [
        "job",
        f"override {XSS}",
        "radius",
    ]
    assert page.page.evaluate("[...document.querySelectorAll('figcaption')].map(c => c.textContent)") == [
        f"job {job}: {XSS}" for job in HOSTILE_JOBS[:4]
    ]
    assert json.loads(page.page.evaluate("document.getElementById('settings-json').textContent"))["swept"] == [XSS]
    no_markup_from_data(page)

    # the jobs whose folder is inside the sweep get a link (in the table and on the panel), encoded; the URL-like
    # name, the one that climbs out and the symlink pointing out get none
    hrefs = page.page.evaluate("[...document.querySelectorAll('a')].map(a => a.getAttribute('href'))")
    linked = ["0", '"><img src=x onerror=alert(1)>', "a#b?c%d e"]
    assert sorted(set(hrefs)) == sorted(f"{'/'.join(map(_quote, [job, 'report.html']))}" for job in linked)
    assert len(hrefs) == 2 * len(linked) and all(HREF.match(h) for h in hrefs)
    assert page.clean(), (page.errors, page.dialogs, page.requests)

    for i, href in enumerate(hrefs):  # every link opens its job's own page, inside the sweep, with nothing run
        page = Page(browser, hostile_sweep["path"])
        page.drawn(0)
        with page.page.expect_navigation():
            page.page.locator("a").nth(i).click()
        page.drawn(0)
        job = linked[[f"{_quote(j)}/report.html" for j in linked].index(href)]
        assert page.page.url == (sweep / job / "report.html").as_uri()
        assert page.text("h1") == f"ALE/{XSS}-v5 {job}" and page.text("#action-name") == XSS
        assert f"{XSS}.pt" in page.text("header")
        settings = json.loads(page.page.evaluate("document.getElementById('settings-json').textContent"))
        assert settings["tags"] == [XSS, "javascript:alert(4)"]
        no_markup_from_data(page)
        assert page.clean(), (page.errors, page.dialogs, page.requests)


def _quote(segment: str) -> str:
    from urllib.parse import quote

    return quote(segment, safe="")


def test_the_viewer_refuses_hostile_links_written_into_the_data_block(browser, hostile_sweep):
    """The viewer's own check, with the builder's bypassed: links edited into the page's JSON block (a scheme,
    a host, an absolute path, '..' spelt plainly or encoded) become no href; the names stay text."""
    path = hostile_sweep["path"]
    text = path.read_text(encoding="utf-8")
    marker = '<script type="application/json" id="report-data">'
    start = text.index(marker) + len(marker)
    end = text.index("</script>", start)
    data = json.loads(text[start:end])
    hostile = [
        "javascript:alert(1)",
        "JaVaScRiPt:alert(1)",
        "\tjavascript:alert(1)",
        " javascript:alert(1)",
        "data:text/html,<script>alert(1)</script>",
        "vbscript:msgbox(1)",
        "file://host/x",
        "//example.com/x",
        "https://example.com/x",
        "/etc/passwd",
        "../x",
        "%2e%2e/x",
        "0/%2E./x",
        "a\\b",
    ]
    jobs = [row[0] for row in data["table"]["rows"]]
    data["table"]["links"] = {job: hostile[i % len(hostile)] for i, job in enumerate(jobs)}
    for i, panel in enumerate(data["panels"]):
        panel["link"] = hostile[-1 - i]
    path.write_text(text[:start] + json.dumps(data).replace("<", "\\u003c") + text[end:], encoding="utf-8")
    page = Page(browser, path)
    page.drawn(0)
    assert page.page.locator("a").count() == 0
    cells = "[...document.querySelectorAll('#summary tbody tr')].map(r => r.children[0].textContent)"
    assert page.page.evaluate(cells) == jobs
    no_markup_from_data(page)
    assert page.clean(), (page.errors, page.dialogs, page.requests)


def test_script_planted_in_the_page_does_not_run(browser, tmp_path):
    """The Content-Security-Policy is the net under all of the above: an inline script, an event handler and a
    javascript: link written into the page's markup (past the builder) do not run; the viewer, allowed by its
    hash, still draws."""
    path = hostile_run_page(tmp_path / "report.html", "planted")
    text = path.read_text(encoding="utf-8")
    planted = (
        '<script>alert("inline")</script><img src="x" onerror="alert(\'handler\')">'
        '<a id="planted" href="javascript:alert(\'link\')">planted</a>'
    )
    path.write_text(text.replace("<body>\n", "<body>\n" + planted, 1), encoding="utf-8")
    page = Page(browser, path)
    page.drawn(0)
    page.page.click("#planted")
    page.drawn(0)
    assert page.dialogs == [] and page.requests == []
    assert page.errors and all("Content Security Policy" in e for e in page.errors), page.errors
