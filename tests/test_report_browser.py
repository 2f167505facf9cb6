"""The report opened in a real headless browser (Chromium): its tables and figures render and
markup injected through class names, answers, model ids and run meta stays text.

Chromium comes from Debian (`make setup` installs the ``chromium`` package when apt-get is
there); the test is skipped, saying so, only where no Chromium can be found.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from html_dom import Element, parse_html
from report_fixtures import EVIL_ANSWER, SCRIPT_NAME, build_report_store

from vlmclf.report.html import write_report

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
WINDOW = (1280, 1800)
BAR_BLUE = (0x4C, 0x72, 0xB0)  # the per-class bars' colour (html_figures.per_class_figure)


def find_browser() -> str:
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    pytest.skip(
        "no Chromium on PATH (looked for " + ", ".join(BROWSERS) + "); `make setup` installs "
        "Debian's chromium package, or run `apt-get install -y chromium`"
    )


def headless(browser: str, page: Path, profile: Path, *flags: str) -> str:
    """Run the browser headless on a local file; return its stdout."""
    command = [
        browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
        "--no-first-run", "--hide-scrollbars", f"--user-data-dir={profile}", *flags,
        page.as_uri(),
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=90, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def dump_dom(browser: str, page: Path, tmp_path: Path) -> Element:
    """The DOM after the browser has loaded the page (and run any script it would run)."""
    return parse_html(headless(browser, page, tmp_path / "profile-dom", "--dump-dom"))


def title_of(dom: Element) -> str:
    return next(dom.iter("title")).text()


@pytest.fixture(scope="module")
def browser() -> str:
    return find_browser()


def test_the_harness_sees_a_script_that_runs(browser: str, tmp_path: Path) -> None:
    """Control: the same injection written raw (no escaping, no CSP) runs and is detected, so
    the checks below can fail."""
    raw = tmp_path / "raw.html"
    raw.write_text(f"<html><head><title>vlmclf report</title></head><body>{SCRIPT_NAME}</body>")
    dom = dump_dom(browser, raw, tmp_path)
    assert title_of(dom) == "pwned-name" and "INJECTED" in dom.text()


def test_report_renders_in_chromium_and_injections_stay_text(browser: str, tmp_path: Path) -> None:
    store = tmp_path / "runs.sqlite"
    build_report_store(store)
    page = write_report(tmp_path / "report.html", store)

    dom = dump_dom(browser, page, tmp_path)
    assert title_of(dom) == "vlmclf report"  # no injected script set it
    assert list(dom.iter("script")) == []
    assert not any(a.startswith("on") for e in dom.iter() for a in e.attrs)
    body_text = next(dom.iter("body")).text()
    assert "INJECTED" not in body_text.replace(SCRIPT_NAME, "")  # nothing was appended
    assert SCRIPT_NAME in body_text and EVIL_ANSWER in body_text
    rows = list(dom.find_id("table1").iter("tr"))
    assert len(rows) == 4 and all(len(list(r.iter("td"))) == 5 for r in rows[1:])
    images = list(dom.iter("img"))
    assert len(images) == 6 and all(i.attrs["src"].startswith("data:image/png") for i in images)

    shot = tmp_path / "report.png"
    headless(browser, page, tmp_path / "profile-shot", f"--screenshot={shot}",
             f"--window-size={WINDOW[0]},{WINDOW[1]}")  # fmt: skip
    assert_rendered(shot)


def near(rgb: tuple[int, int, int], target: tuple[int, int, int], tolerance: int = 8) -> bool:
    return max(abs(a - b) for a, b in zip(rgb, target, strict=True)) <= tolerance


def assert_rendered(shot: Path) -> None:
    """Not blank (many colours, ink on a good share of the page) and the per-class bars drawn
    (their blue present: an image that failed to decode shows no pixels of it)."""
    from PIL import Image

    with Image.open(shot) as image:
        pixels = image.convert("RGB")
    assert pixels.size == WINDOW
    colours = pixels.getcolors(maxcolors=1 << 20)
    assert len(colours) > 100
    white = sum(n for n, rgb in colours if min(rgb) >= 250)
    assert white < 0.97 * WINDOW[0] * WINDOW[1]
    blue = sum(n for n, rgb in colours if near(rgb, BAR_BLUE))
    assert blue > 2000, f"only {blue} pixels of the bars' blue: figures did not render"
