"""The published numbers beside ours (issue 25, item 9): ``reproduce TABLE`` (listing and
``--run`` layout) and ``report`` put the number the paper prints for a cell beside ours with the
difference, and say so where it prints none."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from vlmclf.cli import app
from vlmclf.paper.published_cells import published_cell
from vlmclf.paper.reproduce import TABLES, layout
from vlmclf.paper.steps import Context
from vlmclf.records import Prediction
from vlmclf.report.html import render_report
from vlmclf.report.published import paper_model, published_numbers, run_cell, thesis_model
from vlmclf.store import RunStore

LLAVA = "hf:llava-hf/llava-1.5-7b-hf"
CLIP_L = "hf:openai/clip-vit-large-patch14-336"


def test_models_are_matched_by_hub_id_local_folder_name_or_api_id():
    assert paper_model(LLAVA) == "LLaVA1.5-7B"
    assert paper_model("hf:/models/llava-1.5-7b-hf/") == "LLaVA1.5-7B"
    assert paper_model(CLIP_L) == "CLIP-L"
    assert paper_model("hf:Salesforce/blip2-opt-2.7b") == "BLIP2-2.7B"
    assert paper_model("openai:gpt-4-turbo-2024-04-09") == "GPT4"
    assert paper_model("random:llava") is None and paper_model("hf:llava-hf/llava-1.5") is None
    assert thesis_model("hf:Qwen/Qwen2-VL-2B-Instruct") == "Qwen2-VL-2B-Instruct"
    assert thesis_model("hf:microsoft/resnet-50") == "microsoft/resnet-50"


def test_reproduce_table1_layout_puts_clip_l_imagenet_74_8_beside_ours():
    ctx = Context(model=LLAVA, clip_model=CLIP_L, datasets=("imagenet", "flowers102"))
    cells = {
        (f"{LLAVA} (open world)", "imagenet"): 0.2,
        (f"{LLAVA} (closed world)", "imagenet"): 0.3,
        (f"{CLIP_L} (zero-shot)", "imagenet"): 0.75,
        (f"{CLIP_L} (zero-shot)", "flowers102"): 0.7,
    }
    text = layout(TABLES["table1"], cells, ctx)
    clip_row = f"| {CLIP_L} (zero-shot) | 75.0 (paper 74.8, Δ +0.2) | 70.0 (paper 76.0, Δ -6.0) |"
    assert clip_row in text
    assert f"| {LLAVA} (open world) | 20.0 (paper 22.8, Δ -2.8) | - (paper 5.9) |" in text
    assert "30.0 (paper N/A)" in text  # the paper's N/A: 1000 labels do not fit the context
    other = layout(TABLES["table1"], cells, Context(model="random:llava", datasets=("imagenet",)))
    assert "20.0 (no published number)" in other


def test_reproduce_table1_listing_names_the_published_numbers():
    args = ["reproduce", "table1", "--model", LLAVA, "--clip-model", CLIP_L, "--dataset",
            "imagenet", "--data-root", "/data/imagenet"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "# paper table1, CLIP-L, setting=closed: imagenet 74.8" in result.output
    assert "# paper table1, LLaVA1.5-7B, setting=open: imagenet 22.8" in result.output
    result = CliRunner().invoke(app, ["reproduce", "table1", "--model", "random:llava"])
    assert "# no published number for these models in this table" in result.output


def test_every_paper_cell_of_a_reproduced_table_is_found_for_its_row():
    """Each printed number of the paper's Tables 1, 2, 3 (probing), 7 and 9 is the one our row
    for it stands beside, the right value, not a neighbour's."""
    found = 0
    for cell in published_numbers()["paper"]["cells"]:
        spec = {"CLIP-L": CLIP_L, "LLaVA1.5-7B": LLAVA,
                "BLIP2-2.7B": "hf:Salesforce/blip2-opt-2.7b"}.get(cell["model"])  # fmt: skip
        if spec is None:
            continue
        table, row, column = _our_cell(cell, spec)
        if table is None:
            continue
        ctx = Context(model=spec, clip_model=CLIP_L, datasets=(cell["dataset"],))
        got = published_cell(table, row, column, ctx)
        assert got is not None and got.value == cell["value"], (cell, table, row)
        found += 1
    assert found >= 120


def _our_cell(cell: dict, spec: str) -> tuple[str | None, str, str]:
    t, ds = cell["table"], cell["dataset"]
    if t == "table1":
        row = f"{spec} (zero-shot)" if spec == CLIP_L else f"{spec} ({cell['setting']} world)"
        return "table1", row, ds
    if t == "table7":
        return "table9", f"{spec} {ds}", f"K={cell['k']}"
    if t == "table2" and cell["row"].startswith("label"):
        ours = {"label, fixed order": "fixed order", "label, random order": "random order",
                "label, random order + CoT": "chain of thought"}[cell["row"]]  # fmt: skip
        return "table7", f"closed world, {ours}", ds
    rows = {"base prompt": "generation, prompt base", "prompt alternative 1":
            "generation, prompt alt1", "prompt alternative 2": "generation, prompt alt2",
            "prob. inference, sum of tokens": "likelihood sum, top-1",
            "prob. inference, mean of tokens": "likelihood mean, top-1"}  # fmt: skip
    if t == "table2" and cell["row"] in rows:
        return "table2", rows[cell["row"]], ds
    if t == "table3_probing":
        pooling = {"last token": "last_token", "average token": "mean"}[cell["feature"]]
        return "table3", f"VLM probe, {pooling} (paper protocol)", ds
    return None, "", ""


def test_report_shows_the_published_number_and_delta_beside_a_run(tmp_path: Path):
    """A CLIP-L run on ImageNet stored as the runner stores it (spec, class names, rows): the
    report's Table 1 cell carries the paper's 74.8 and ours minus it; a random model says none."""
    store_path = tmp_path / "runs.sqlite"
    names = ["tench", "goldfish", "shark", "hen"]
    with RunStore(store_path) as store:
        for run_id, model, hits in (("clip", "hf:/m/clip-vit-large-patch14-336", 3),
                                    ("rand", "random:clip", 1)):  # fmt: skip
            spec = {"model": model, "dataset": "imagenet", "method": "clip"}
            store.start_run(run_id, json.dumps(spec), names, 4)
            rows = [Prediction(f"e{i}", i, pred=i if i < hits else (i + 1) % 4, hit=i < hits)
                    for i in range(4)]  # fmt: skip
            store.add_predictions(run_id, rows)
            store.finish_run(run_id, "done", 1.0)
    page = render_report(store_path)
    assert "(paper 74.8, Δ +0.2)" in page  # 75.0 - 74.8
    assert "(no published number)" in page
    assert run_cell({"model": "hf:/m/clip-vit-large-patch14-336", "dataset": "imagenet",
                     "method": "clip", "k": 20}).value == 97.5  # fmt: skip
