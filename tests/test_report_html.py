"""The HTML report: self-contained, every table and plot in it, and it opens in headless Chromium without errors."""

from __future__ import annotations

import html
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from report_records import synthetic_records

from kdbench.cli import EXIT_BAD_INPUT, EXIT_OK, main
from kdbench.report.build import build_tables
from kdbench.report.figures import write_plots
from kdbench.report.frames import frames_from_records
from kdbench.report.groups import RULES
from kdbench.report.html import render_html
from kdbench.report.visual import write_html_report
from kdbench.tracking.record import write_record

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(CHROMIUM is None and not os.environ.get("KDBENCH_REQUIRE_CHROMIUM"),
                                    reason="Debian chromium is not installed (CI sets KDBENCH_REQUIRE_CHROMIUM=1)")


def _records():
    return synthetic_records(grid="htmlgrid", rhos=(1.0, 100.0), methods=("vanilla", "kd"), seeds=(0, 1, 2),
                             epochs=3)


@pytest.fixture(scope="module")
def html_report(tmp_path_factory):
    """(page path, report, saved plots) of a small long-tailed grid, PNG only."""
    out = tmp_path_factory.mktemp("html")
    frames = frames_from_records(_records())
    rule = RULES["default"]
    report = build_tables(frames, rule)
    plots = write_plots(frames, out / "plots", rule, formats=("png",))
    written = write_html_report(report, frames, out, rule, plots=plots)
    return written[0], report, plots


def dump_dom(page: Path, tmp_path: Path) -> tuple[str, str]:
    """(DOM after load, Chromium's log) of ``page`` opened in headless Chromium."""
    assert CHROMIUM is not None, "KDBENCH_REQUIRE_CHROMIUM is set but chromium is missing (apt-get install chromium)"
    done = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
         f"--user-data-dir={tmp_path / 'chromium-profile'}", "--virtual-time-budget=10000",
         "--enable-logging=stderr", "--v=0", "--dump-dom", page.resolve().as_uri()],
        capture_output=True, text=True, timeout=180, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout, done.stderr


def _body_tag(dom: str) -> str:
    match = re.search(r"<body[^>]*>", dom)
    assert match, dom[:500]
    return match.group(0)


def _console_errors(log: str) -> list[str]:
    return [line for line in log.splitlines() if "CONSOLE" in line and ("Uncaught" in line or "Error" in line)]


def test_page_is_self_contained_with_every_table_and_plot(html_report):
    page, report, plots = html_report
    text = page.read_text()
    assert len(plots) == 10  # top1 ×2, rho, per_class ×2, per_class_delta ×2, curves ×2, groups at ρ=100
    assert text.count("<table") == len(report.tables) == 4
    assert text.count('src="data:image/png;base64,') == len(plots)
    plain = html.unescape(text)
    for table in report.tables:
        assert f">{table.title}</h2>" in plain
    assert not re.search(r'(src|href)="(?!data:|#)', text), "a resource outside the page"
    assert "http://" not in text and "https://" not in text
    assert "group rule 'default'" in plain  # the head/medium/tail table's note is printed


@needs_chromium
def test_page_opens_in_headless_chromium_without_errors(html_report, tmp_path):
    page, report, plots = html_report
    dom, log = dump_dom(page, tmp_path)
    body = _body_tag(dom)
    assert f'data-kdbench-ready="{len(plots)}/{len(plots)} images"' in body, "the page did not finish loading"
    assert "data-kdbench-errors" not in body
    assert _console_errors(log) == []
    assert dom.count("<table") == len(report.tables)
    for table in report.tables:
        assert table.title in html.unescape(dom)
    assert dom.count("<figure") == len(plots)


@needs_chromium
def test_the_error_marker_catches_a_broken_script(tmp_path, html_report):
    """The check above can fail: a page whose script throws is marked in the DOM."""
    _, report, plots = html_report
    page = tmp_path / "broken.html"
    broken = render_html("broken", [], plots[:1]).replace("</body>", "<script>noSuchFunction();</script></body>")
    page.write_text(broken)
    dom, log = dump_dom(page, tmp_path)
    body = _body_tag(dom)
    assert "data-kdbench-errors=" in body and "noSuchFunction" in body
    assert _console_errors(log)


# --- the command line: kdbench report --format html, kdbench plot ----------------------------------------------------

@pytest.fixture(scope="module")
def grid_dir(tmp_path_factory) -> Path:
    """results/<grid> with runs/<id>/record.json written the way a grid run writes them."""
    root = tmp_path_factory.mktemp("results") / "htmlgrid"
    for record in _records():
        write_record(root / "runs" / record.run_id, record)
    return root


def test_report_format_html_writes_the_page_and_the_plots(grid_dir, tmp_path, capsys):
    args = ["report", str(grid_dir), "--format", "html", "--filter", "dataset=cifar", "--out", str(tmp_path)]
    assert main(args) == EXIT_OK
    page = (tmp_path / "report.html").read_text()
    pngs = sorted(p.name for p in (tmp_path / "plots").glob("*.png"))
    assert pngs == ["curves_cifar_resnet56_to_resnet20.png", "per_class_cifar_resnet56_to_resnet20.png",
                    "per_class_delta_cifar_resnet56_to_resnet20.png", "top1_cifar.png"]
    assert len(list((tmp_path / "plots").glob("*.pdf"))) == 4
    # balanced: no head/tail; then the five tables of the configuration and provenance section
    assert page.count('src="data:image/png;base64,') == 4 and page.count("<table") == 3 + 5
    assert '<h2 id="configuration-and-provenance">Configuration and provenance</h2>' in page
    assert "skipped: head/medium/tail table: every dataset of this report is balanced" in html.unescape(page)
    assert not list(tmp_path.glob("*.csv")), "--format html writes no CSV tables"
    assert f"wrote 9 files under {tmp_path}" in capsys.readouterr().out


def test_plot_command_filters_and_keeps_the_grid_colours(grid_dir, tmp_path, capsys):
    code = main(["plot", str(grid_dir), "--filter", "dataset=cifar-lt-exp-100", "--plot-format", "png",
                 "--out", str(tmp_path)])
    assert code == EXIT_OK
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["curves_cifar-lt-exp-100_resnet56_to_resnet20.png",
                     "groups_cifar-lt-exp-100_resnet56_to_resnet20.png",
                     "per_class_cifar-lt-exp-100_resnet56_to_resnet20.png",
                     "per_class_delta_cifar-lt-exp-100_resnet56_to_resnet20.png", "top1_cifar-lt-exp-100.png"]
    assert "wrote 5 plots" in capsys.readouterr().out


def test_plot_command_rejects_bad_input(grid_dir, tmp_path, capsys):
    assert main(["plot", str(grid_dir), "--plot-format", "svg", "--out", str(tmp_path)]) == EXIT_BAD_INPUT
    assert "--plot-format 'svg': allowed formats are png, pdf" in capsys.readouterr().err
    assert main(["plot", str(grid_dir), "--filter", "method=nosuch", "--out", str(tmp_path)]) == EXIT_BAD_INPUT
    assert "no runs of grid 'htmlgrid' match --filter method=nosuch" in capsys.readouterr().err
    assert main(["plot", str(tmp_path / "nothing-here")]) == EXIT_BAD_INPUT
    assert list(tmp_path.iterdir()) == []
