"""The docs' figures are what their commands draw from today's code (issue 34, item 4).

``timm-sage show`` writes ``show.json`` beside its PNGs (:mod:`timm_sage.tools.provenance`): the
command, its arguments, the digests of its inputs and of the code that computes and draws the figures,
and each PNG's SHA-256. When the code changes, the digest does, and this test names the command to rerun.
"""

from __future__ import annotations

import ast
import hashlib
import re
import shutil
from pathlib import Path

import pytest

from timm_sage.tools import provenance, show

ROOT = Path(__file__).resolve().parents[1]
FIGURES = ROOT / "docs" / "figures"
RECORDS = sorted(FIGURES.glob("*.json"))
# Figures drawn by other commands, each written beside the figure in the docs (results of studies and
# benchmarks: their data are measurements, redrawn when the study or benchmark is run again).
MEASURED = {
    "scale.png": "timm-sage bench scale",
    "scenes_samples.png": "timm-sage scenes",
    "scenes2_samples.png": "timm-sage scenes",
    "scenes3_samples.png": "timm-sage scenes",
    "scenes3_frontier.png": "timm-sage study",
    "study_curves.png": "timm-sage study",
    "study_scarce.png": "timm-sage study",
    "study_scarce_forward.png": "timm-sage study",
    "study_scenes.png": "timm-sage study",
    "study_scenes2.png": "timm-sage study",
    "study_scenes2_cost.png": "timm-sage study",
}


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_there_is_a_record_of_the_show_figures():
    assert FIGURES / "show.json" in RECORDS
    assert set(provenance.read_record(FIGURES / "show.json")["figures"]) == {"comparison.png", "anatomy.png"}


@pytest.mark.parametrize("record_path", RECORDS, ids=lambda p: p.name)
def test_figures_were_drawn_by_todays_code(record_path):
    record = provenance.read_record(record_path)
    files = provenance.code_files(record["entry"])
    stale = sorted({str(p.relative_to(ROOT)) for p in files} ^ set(record["code_files"]))
    assert provenance.code_digest(files) == record["code_digest"], (
        f"the code that draws {', '.join(record['figures'])} changed since they were drawn "
        f"(files added or removed: {stale or 'none'}): rerun `{record['command']}` and commit the figures "
        f"and {record_path.name}"
    )
    for name, digest in record["figures"].items():
        assert _sha256(record_path.parent / name) == digest, f"{name} is not what {record['command']} wrote"


def test_the_record_says_the_command_and_its_inputs():
    record = provenance.read_record(FIGURES / "show.json")
    assert record["command"] == show.show_command("docs/figures", record["arguments"])
    assert record["command"] == "timm-sage show -o docs/figures --seed 3"  # as docs/index.md shows it
    assert "`timm-sage show -o docs/figures --seed 3`" in (ROOT / "docs" / "index.md").read_text()
    files = show._data_files(record["arguments"]["data"])
    if not all(path.is_file() for path in files) or not files:
        pytest.skip("the Fashion-MNIST files the figures read are not on this machine")
    assert provenance.file_digest(files) == record["inputs_digest"]


def test_every_figure_in_the_docs_has_a_command():
    texts = [(ROOT / "README.md").read_text(), *(p.read_text() for p in (ROOT / "docs").glob("*.md"))]
    shown = {name for text in texts for name in re.findall(r"figures/([\w.-]+\.png)", text)}
    recorded = {name for path in RECORDS for name in provenance.read_record(path)["figures"]}
    assert shown - recorded - set(MEASURED) == set()
    assert {p.name for p in FIGURES.glob("*.png")} <= recorded | set(MEASURED)


def test_the_digest_follows_code_not_comments_or_docstrings(tmp_path):
    source = tmp_path / "pkg" / "m.py"
    source.parent.mkdir()
    source.write_text('"""Doc."""\n\ndef f(x):\n    """Twice."""\n    return 2 * x  # why\n')
    before = provenance.code_digest([source], root=tmp_path)
    source.write_text('"""Other."""\n\n\ndef f(x):\n    """Two times."""\n    return 2 * x  # because\n')
    assert provenance.code_digest([source], root=tmp_path) == before
    source.write_text('"""Doc."""\n\ndef f(x):\n    """Twice."""\n    return 3 * x\n')
    assert provenance.code_digest([source], root=tmp_path) != before


def test_the_digest_is_the_same_on_every_python():
    # ast.dump differs between versions (3.12 adds type_params, 3.13 leaves out empty fields): the
    # canonical form leaves empty fields out everywhere, so a record made on 3.11 holds on 3.12
    source = "class C:\n    def f(self, x: int = 1) -> int:\n        return x\n"
    text = provenance._canonical(ast.parse(source))
    assert "type_params" not in text and "decorator_list" not in text and "None" not in text
    assert "FunctionDef(name='f'" in text and "Constant(value=1)" in text


def test_code_files_follow_imports_inside_functions_too():
    files = {str(p.relative_to(ROOT)) for p in provenance.code_files("timm_sage.tools.show")}
    # show.py imports show_data at the top; show_data imports the checkpoint loader; core via functional
    assert {"timm_sage/tools/show.py", "timm_sage/tools/show_data.py", "timm_sage/core/step.py"} <= files
    assert "timm_sage/tools/provenance.py" not in files and "timm_sage/__init__.py" not in files


@pytest.mark.slow
def test_the_command_redraws_the_committed_figures(tmp_path):
    """The end-to-end check (about 20 s on one thread): the recorded command, rerun, writes the same PNG
    bytes, where the versions of torch, timm, numpy and matplotlib are the recorded ones."""
    pytest.importorskip("matplotlib")
    record = provenance.read_record(FIGURES / "show.json")
    if provenance._versions() != record["versions"]:
        pytest.skip(f"library versions differ from the record's: {record['versions']}")
    if not all(path.is_file() for path in show._data_files(None)):
        pytest.skip("Fashion-MNIST is not on this machine")
    paths = show.show(tmp_path, **record["arguments"])
    for name, path in paths.items():
        assert _sha256(path) == record["figures"][f"{name}.png"], name
    assert provenance.read_record(tmp_path / "show.json")["code_digest"] == record["code_digest"]
    shutil.rmtree(tmp_path)
