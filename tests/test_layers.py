"""The package stands in layers (DESIGN.md): no import circle between files, no import from a
lower layer to a higher one, nothing loose at the top level. ``scripts/check_layers.py`` is the
check; these tests run it on the package and on small packages built to break each rule."""

from __future__ import annotations

import importlib.util
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load_checker():
    spec = importlib.util.spec_from_file_location("check_layers", ROOT / "scripts/check_layers.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


check_layers = _load_checker()


def write_package(tmp_path: Path, files: dict[str, str]) -> Path:
    """A ``vlmclf`` package with the given files (path -> source) and every ``__init__``."""
    package = tmp_path / "vlmclf"
    for name, source in {"__init__.py": "", **files}.items():
        path = package / name
        path.parent.mkdir(parents=True, exist_ok=True)
        for folder in path.relative_to(package).parents:
            (package / folder / "__init__.py").touch()
        path.write_text(textwrap.dedent(source))
    return package


def test_the_package_stands_in_layers():
    assert check_layers.check(ROOT / "src/vlmclf") == []


def test_every_top_level_name_is_in_the_table():
    names = {p.stem for p in (ROOT / "src/vlmclf").iterdir() if p.suffix == ".py" or p.is_dir()}
    names -= {"__init__", "__pycache__"}
    assert names <= set(check_layers.ALLOWED), names - set(check_layers.ALLOWED)


def test_a_lazy_import_circle_is_found(tmp_path):
    package = write_package(tmp_path, {
        "models/a.py": "from vlmclf.models.b import B\n",
        "models/b.py": "B = 1\ndef later():\n    from vlmclf.models.a import x\n",
    })  # fmt: skip
    assert check_layers.check(package) == ["import circle: vlmclf.models.a <-> vlmclf.models.b"]


def test_a_type_checking_circle_is_found(tmp_path):
    package = write_package(tmp_path, {
        "analysis/run.py": "from vlmclf.analysis import trainer\n",
        "analysis/trainer.py": """
            from typing import TYPE_CHECKING
            if TYPE_CHECKING:
                from vlmclf.analysis.run import Request
        """,
    })  # fmt: skip
    problems = check_layers.check(package)
    assert problems == ["import circle: vlmclf.analysis.run <-> vlmclf.analysis.trainer"]


def test_a_circle_through_a_package_init_is_found(tmp_path):
    """``demo/__init__`` re-exporting ``demo.run`` puts every importer of ``demo.report`` on the
    path to ``demo.run``: the circle the report once had through the demo."""
    package = write_package(tmp_path, {
        "analysis/demo/__init__.py": "from vlmclf.analysis.demo.run import go\n",
        "analysis/demo/run.py": "from vlmclf.analysis import views\n",
        "analysis/demo/report.py": "",
        "analysis/views.py": "from vlmclf.analysis.demo.report import draw\n",
    })  # fmt: skip
    [problem] = check_layers.check(package)
    assert problem.startswith("import circle: vlmclf.analysis.demo <-> ")
    assert "vlmclf.analysis.views" in problem


def test_a_package_importing_its_own_children_is_no_circle(tmp_path):
    package = write_package(tmp_path, {
        "store/__init__.py": "from vlmclf.store.run_store import RunStore\n",
        "store/run_store.py": "from vlmclf.store.rows import row\nclass RunStore: ...\n",
        "store/rows.py": "from vlmclf.records import Prediction\n",
        "records.py": "class Prediction: ...\n",
    })  # fmt: skip
    assert check_layers.check(package) == []


@pytest.mark.parametrize(
    ("source", "problem"),
    [
        ("from vlmclf.analysis.probe import plot\n",
         "vlmclf.report.html imports vlmclf.analysis: report may not import analysis"),
        ("import vlmclf.paper.protocols\n",
         "vlmclf.report.html imports vlmclf.paper: report may not import paper"),
    ],
)  # fmt: skip
def test_an_upward_import_is_found(tmp_path, source, problem):
    package = write_package(tmp_path, {
        "report/html.py": source, "analysis/probe.py": "", "paper/protocols.py": "",
    })  # fmt: skip
    assert problem in check_layers.check(package)


def test_a_loose_top_level_module_is_named(tmp_path):
    package = write_package(tmp_path, {"runner.py": "from vlmclf.records import P\n",
                                       "records.py": ""})  # fmt: skip
    assert check_layers.check(package) == [
        "vlmclf.runner: not in the layer table (scripts/check_layers.py)"
    ]


def test_the_script_exits_1_with_one_line_per_problem(tmp_path, capsys):
    package = write_package(tmp_path, {"store/db.py": "from vlmclf.run import runner\n",
                                       "run/runner.py": ""})  # fmt: skip
    assert check_layers.main([str(package)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out == [
        "vlmclf.store.db imports vlmclf.run: store may not import run",
        "vlmclf.store.db imports vlmclf.run.runner: store may not import run",
        f"2 problem(s) in {package}",
    ]
