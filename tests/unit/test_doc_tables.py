"""The docs' benchmark tables are generated from the committed result files, never typed by hand: regenerating
them must give exactly the committed ones (so a result file changed without rerunning ``benchmarks/tables.py``
fails here), README.md's headline block must be the generated one, and a missing or malformed result file must
stop the script loudly, naming the file."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import tables

ROOT = Path(__file__).resolve().parents[2]
COMMITTED = ROOT / "docs" / "benchmarks" / "generated"
FIX = "rerun `python benchmarks/tables.py` and commit docs/benchmarks/generated/ and README.md"


def test_committed_tables_equal_regenerated_ones(tmp_path):
    tables.write(tables.generate(), tmp_path)
    fresh = {p.name: p.read_text() for p in tmp_path.glob("*.md")}
    committed = {p.name: p.read_text() for p in COMMITTED.glob("*.md")}
    assert sorted(fresh) == sorted(committed), f"the generated tables differ in which files there are: {FIX}"
    stale = [name for name in fresh if fresh[name] != committed[name]]
    assert not stale, f"stale tables {stale}: {FIX}"


def test_readme_headline_is_the_generated_one():
    readme = (ROOT / "README.md").read_text()
    assert tables.readme_headline(readme) == (COMMITTED / "headline.md").read_text(), f"README.md's headline: {FIX}"


def test_every_table_names_its_machine_or_device():
    for name, text in tables.generate().items():
        if name == "headline.md":  # one device per row, in its first column
            assert "device (as recorded)" in text
            continue
        assert "**Machine**" in text or "**Device**" in text, f"{name} does not say where it was measured"


def test_every_docs_include_of_a_generated_table_exists():
    pages = "\n".join(p.read_text() for p in (ROOT / "docs").glob("*.md"))
    included = {line.split('"')[1] for line in pages.splitlines() if line.startswith("--8<--")}
    assert included, "the docs pages include no generated table"
    for path in included:
        assert (ROOT / path).is_file(), f"a docs page includes {path}, which does not exist"
    unused = {p.name for p in COMMITTED.glob("*.md")} - {Path(p).name for p in included}
    assert not unused, f"generated tables that no page includes: {sorted(unused)}"


@pytest.fixture
def results(tmp_path) -> Path:
    """A copy of the committed result files (figures left out), to damage."""
    copy = tmp_path / "results"
    shutil.copytree(ROOT / "benchmarks" / "results", copy, ignore=shutil.ignore_patterns("*.png", "runs"))
    return copy


def _truncate(path: Path) -> None:
    path.write_text(path.read_text()[: len(path.read_text()) // 2])


def _drop_key(key: str):
    def damage(path: Path) -> None:
        lines = path.read_text().splitlines()
        row = json.loads(lines[0])
        del row[key]
        path.write_text("\n".join([json.dumps(row)] + lines[1:]) + "\n")

    return damage


def _json_edit(edit):
    def damage(path: Path) -> None:
        data = json.loads(path.read_text())
        edit(data)
        path.write_text(json.dumps(data))

    return damage


SUITE_LINES = len((ROOT / "benchmarks" / "results" / "suite.jsonl").read_text().splitlines())
DAMAGE = {
    "suite missing": ("suite.jsonl", Path.unlink, "benchmarks/results/suite.jsonl: missing"),
    "perturbation missing": ("perturbation.json", Path.unlink, "benchmarks/results/perturbation.json: missing"),
    "GPU result truncated": ("gpu/h200_2026-11-27.json", _truncate, "gpu/h200_2026-11-27.json: not valid JSON"),
    "settings row without a metric": (
        "settings_pong_ppo_lstm.jsonl",
        _drop_key("deletion_kl_auc"),
        "settings_pong_ppo_lstm.jsonl: no 'deletion_kl_auc' \\(line 1\\)",
    ),
    "suite line not JSON": (
        "suite.jsonl",
        lambda p: p.write_text(p.read_text() + "{oops\n"),
        f"suite.jsonl: not valid JSON \\(line {SUITE_LINES + 1}\\)",
    ),
    "evaluation mean not a number": (
        "ppo_pong_evaluation.json",
        _json_edit(lambda d: d.update(report_mean="19.5")),
        "ppo_pong_evaluation.json: 'report_mean' is '19.5', not a number",
    ),
    "agents not a list": ("agents.json", lambda p: p.write_text("{}"), "agents.json: not a non-empty list"),
    "store result without its json": (
        "store_2026-11-27.md",
        lambda p: p.write_text("# a table only\n"),
        "store_2026-11-27.md: no ```json block",
    ),
    "memory without the long run": (
        "memory.json",
        _json_edit(lambda d: d.pop("long")),
        "memory.json: no 'long.frames'",
    ),
}


@pytest.mark.parametrize("case", DAMAGE)
def test_a_missing_or_malformed_result_file_fails_naming_it(results, case):
    name, damage, message = DAMAGE[case]
    damage(results / name)
    with pytest.raises(tables.TableError, match=message):
        tables.generate(results)


def test_a_setting_run_again_shows_its_latest_run_in_its_first_place(results):
    """Rows of a setting rerun (after a metric changed) stood in the table beside the old ones."""
    path = results / "settings_pong_ppo_lstm.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    rerun = {**rows[0], "objects_share": 0.123456, "date": "2099-01-01 00:00"}
    path.write_text("".join(json.dumps(r) + "\n" for r in [*rows, rerun]))
    table = tables.generate(results)["settings_pong_ppo_lstm.md"]
    body = [line for line in table.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert len(body) == len(rows) and body[0].startswith(f"| {tables.settings_label(rows[0])} |")
    assert "| 0.123 |" in body[0] and "to 2099-01-01 00:00" in table


def test_no_settings_tables_at_all_fails(results):
    for path in results.glob("settings_*.jsonl"):
        path.unlink()
    with pytest.raises(tables.TableError, match="settings_\\*.jsonl: missing"):
        tables.generate(results)


def test_the_script_exits_2_with_one_line_and_writes_nothing(results, tmp_path):
    (results / "suite.jsonl").unlink()
    out = tmp_path / "out"
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "tables.py"), "--results", str(results), "--out", str(out)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
        check=False,
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        ("error: benchmarks/results/suite.jsonl: missing (rerun the command that writes it, or restore it from git)")
    ]
    assert not out.exists()


def test_the_script_writes_into_out_and_leaves_readme_alone(results, tmp_path):
    out = tmp_path / "out"
    (out).mkdir()
    (out / "stale_table.md").write_text("from a result file that is gone\n")
    readme = (ROOT / "README.md").read_text()
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "tables.py"), "--results", str(results), "--out", str(out)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in out.glob("*.md")) == sorted(p.name for p in COMMITTED.glob("*.md"))
    assert (ROOT / "README.md").read_text() == readme


def test_the_gpu_table_reads_checks_only_and_notes_settings_that_failed(results):
    """The other results of a device call, committed beside its check as <device>_<date>_<result>.json, are not
    read as checks; a benchmark that failed on the device (out of memory) is named under the table, not a crash."""
    from benchmarks.tables import gpu_table

    gpu = results / "gpu"
    (gpu / "h100_2026-12-07_speed.json").write_text(json.dumps({"rows": [], "skipped": []}))
    (gpu / "h100_2026-12-07_end_to_end.json").write_text(json.dumps({"games": 50}))
    check = json.loads((gpu / "h200_2026-11-27.json").read_text())
    check["benchmarks"].append({"name": "per_eval_65536", "error": "CUDA out of memory"})
    (gpu / "h100_2026-12-07.json").write_text(json.dumps(check))
    text = gpu_table(results)
    assert "h100_2026-12-07.json" in text and "_speed.json" not in text and "_end_to_end.json" not in text
    assert "Not measured (the error each gave): `per_eval_65536: CUDA out of memory`." in text
