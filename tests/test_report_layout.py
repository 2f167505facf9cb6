"""The demo's report as a reader sees it: figures inline exactly as their PNGs (log-axis ticks
drawn, not TeX source), legends inside their figure, tables that scroll inside their own box at
1280 px, each section once, per-class charts titled with their run; the probe's terminal table
without Markdown escapes and with the optimiser each protocol used; the demo's findings in
plain sentences. One tiny real demo run (the organism on Fashion-MNIST) feeds every check."""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from PIL import Image, ImageChops
from typer.testing import CliRunner

import vlmclf.analysis.views  # noqa: F401 - registers the analyses with the report
from vlmclf.analysis.demo.report import demo_page
from vlmclf.analysis.probe.report import probe_markdown, probe_text
from vlmclf.cli import app
from vlmclf.report.html import per_class_title
from vlmclf.report.html_parts import html_table
from vlmclf.store import RunStore

pytestmark = pytest.mark.skipif(
    not Path("/usr/share/datasets/fashion-mnist").exists(), reason="Debian's dataset-fashion-mnist"
)
VIEWPORT = 1280
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> dict:
    folder = tmp_path_factory.mktemp("demo")
    args = ["demo", "--n-clip", "24", "--n-vlm", "10", "--n-probe-train", "40", "--batch-size",
            "10", "--no-progress", "--json", "--store", str(folder / "runs.sqlite"), "--out",
            str(folder / "reports")]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    found = json.loads(result.stdout.strip().splitlines()[-1])
    return {**found, "store": folder / "runs.sqlite", "folder": folder}


def inline_images(page: str) -> list[Image.Image]:
    uris = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    return [Image.open(io.BytesIO(base64.b64decode(uri))).convert("RGB") for uri in uris]


def same_pixels(a: Image.Image, b: Image.Image) -> bool:
    return a.size == b.size and ImageChops.difference(a, b).getbbox() is None


def test_figures_inline_are_their_pngs_and_each_section_is_shown_once(demo: dict):
    page = Path(demo["files"]["html"]).read_text()
    images = inline_images(page)
    for name in ("frequency_intervention", "label_set_size"):
        with Image.open(demo["files"][name]) as saved:
            assert any(same_pixels(saved.convert("RGB"), shown) for shown in images), name
    assert page.count('id="demo-findings"') == 1 and page.count("finding of the paper") == 1
    assert page.count("<h3>demo ") == 1 and page.count("<h3>probe ") == 1


def test_probe_figure_keeps_its_legend_inside(demo: dict):
    with RunStore(demo["store"], read_only=True) as store:
        probe = next(a for a in store.list_analyses() if a.kind == "probe")
    from vlmclf.analysis.probe.report import plot_probe

    figure = plot_probe(probe.result, demo["folder"] / "probe-check.png")
    with Image.open(figure) as image:
        pixels = image.convert("RGB")
    width, height = pixels.size
    edges = [pixels.getpixel((x, y)) for y in range(height) for x in (0, 1, width - 2, width - 1)]
    assert all(min(rgb) >= 245 for rgb in edges), "something is cut at the figure's edge"
    legend_band = pixels.crop((0, int(height * 0.85), width, height))
    colours = {rgb for _, rgb in legend_band.getcolors(1 << 16)}
    assert any(near(rgb, (0xC4, 0x4E, 0x52)) for rgb in colours)  # the paper swatch
    assert any(near(rgb, (0x4C, 0x72, 0xB0)) for rgb in colours)  # the clean swatch


def near(rgb: tuple[int, int, int], target: tuple[int, int, int], tolerance: int = 10) -> bool:
    return max(abs(a - b) for a, b in zip(rgb, target, strict=True)) <= tolerance


def test_per_class_charts_are_titled_with_their_run(demo: dict):
    with RunStore(demo["store"], read_only=True) as store:
        records = store.list_runs()
    titles = [per_class_title(record) for record in records]
    assert len(set(titles)) == len(records)
    for record, title in zip(records, titles, strict=True):
        assert record.run_id[:8] in title and record.spec["model"] in title


def test_probe_terminal_text_has_no_markdown_escapes_and_names_each_optimiser(demo: dict):
    with RunStore(demo["store"], read_only=True) as store:
        probe = next(a for a in store.list_analyses() if a.kind == "probe")
    text = probe_text(probe.result)
    assert "train -> test" in text and "&gt;" not in text and "\\[" not in text
    assert "|" not in text and "**" not in text
    assert "Clean protocol's probe: L-BFGS (full batch, to convergence)" in text
    assert "Paper protocol's probe: Adam lr 0.001" in text and "Adam" not in text.split(
        "Clean protocol's probe:")[1].splitlines()[0]  # fmt: skip
    assert "train -&gt; test" in probe_markdown(probe.result)  # the Markdown file keeps its


def test_demo_findings_read_as_sentences(demo: dict):
    evidence = " ".join(f["evidence"] for f in demo["findings"])
    assert "×-" not in evidence and "(reached:" not in evidence
    assert "CLIP's level counts as reached when that interval lies below +0.05" in evidence
    assert re.search(r"VLM error (×\d+\.\d CLIP's|ratio undefined \(CLIP made no error\))",
                     evidence)  # fmt: skip


def find_browser() -> str:
    for name in BROWSERS:
        if shutil.which(name):
            return shutil.which(name)
    pytest.skip("no Chromium on PATH; `make setup` installs Debian's chromium package")


def screenshot(page: Path, out: Path, profile: Path) -> Image.Image:
    command = [find_browser(), "--headless", "--no-sandbox", "--disable-gpu",
               "--disable-dev-shm-usage", "--no-first-run", "--hide-scrollbars",
               f"--user-data-dir={profile}", f"--screenshot={out}",
               f"--window-size={VIEWPORT},5000", page.as_uri()]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    with Image.open(out) as image:
        return image.convert("RGB")


def test_demo_report_fits_1280_px_with_a_wide_table_scrolling_in_its_box(demo: dict):
    """Nothing is drawn right of the page's column: the body is 72em (1152 px) wide, centred,
    so at 1280 px everything lies left of x = 1216 unless a figure or table overflows it."""
    with RunStore(demo["store"], read_only=True) as store:
        record = next(a for a in store.list_analyses() if a.kind == "demo")
    # 14 columns of unbreakable cells, as rematch's table of rules x metrics has
    wide = [{f"rule_{i}": f"{0.123456789 * i:.9f}_{'x' * 12}" for i in range(14)}] * 3
    page_text = demo_page(demo["store"], record.result, record.analysis_id).replace(
        "<h2 id=\"results\">", html_table(wide, css_id="wide") + "<h2 id=\"results\">", 1)
    page = demo["folder"] / "wide.html"
    page.write_text(page_text)
    shot = screenshot(page, demo["folder"] / "shot.png", demo["folder"] / "profile")
    assert shot.size[0] == VIEWPORT
    margin = shot.crop((1220, 0, VIEWPORT, shot.size[1]))
    assert min(min(rgb) for _, rgb in margin.getcolors(1 << 16)) >= 245, (
        "something is drawn past the page's right edge"
    )
    ink = shot.crop((64, 0, 1216, shot.size[1]))
    blues = sum(n for n, rgb in ink.getcolors(1 << 20) if near(rgb, (0x4C, 0x72, 0xB0)))
    assert blues > 2000  # the figures rendered
    # control: the same wide table without its scroll box runs past the right edge
    unboxed = page_text.replace("overflow-x:auto}", "overflow-x:visible}").replace(
        "display:block;max-width:100%;", "")
    control = demo["folder"] / "control.html"
    control.write_text(unboxed)
    shot = screenshot(control, demo["folder"] / "control.png", demo["folder"] / "profile2")
    margin = shot.crop((1220, 0, VIEWPORT, shot.size[1]))
    assert min(min(rgb) for _, rgb in margin.getcolors(1 << 16)) < 245
