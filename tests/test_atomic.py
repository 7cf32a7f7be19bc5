"""Every file the package writes goes through timm_sage._atomic and honours the umask (0644 under 0022)."""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

import pytest

from timm_sage import _atomic
from timm_sage.tools.recipes import write_recipe
from timm_sage.tools.report import write_between_markers
from timm_sage.train import outputs

PACKAGE = Path(__file__).resolve().parents[1] / "timm_sage"


@pytest.fixture
def umask_0022():
    previous = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(previous)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _no_leftovers(folder: Path) -> None:
    assert not [p.name for p in folder.iterdir() if p.name.endswith(".tmp")]


def test_atomic_helpers_give_0644_under_umask_0022(tmp_path, umask_0022):
    written = [
        _atomic.atomic_write_bytes(tmp_path / "a.bin", b"\x00\x01"),
        _atomic.atomic_write_text(tmp_path / "sub" / "b.txt", "text"),
    ]
    with _atomic.atomic_open(tmp_path / "c.bin") as handle:
        handle.write(b"abc")
    with _atomic.atomic_path(tmp_path / "d.png") as temporary:
        temporary.write_bytes(b"png")
    written += [tmp_path / "c.bin", tmp_path / "d.png"]
    for path in written:
        assert _mode(path) == 0o644, path
    assert (tmp_path / "c.bin").read_bytes() == b"abc" and (tmp_path / "d.png").read_bytes() == b"png"
    _no_leftovers(tmp_path)


def test_atomic_write_follows_a_stricter_umask_and_replaces_atomically(tmp_path):
    previous = os.umask(0o077)
    try:
        path = _atomic.atomic_write_text(tmp_path / "x.txt", "one")
    finally:
        os.umask(previous)
    assert _mode(path) == 0o600
    with pytest.raises(RuntimeError, match="boom"), _atomic.atomic_open(path) as handle:
        handle.write(b"half")
        raise RuntimeError("boom")
    assert path.read_text() == "one"  # the old content survives a failed write
    _no_leftovers(tmp_path)


def test_train_recipe_report_and_figure_writers_give_0644(tmp_path, umask_0022):
    outputs.write_args(tmp_path, {"model": "resnet18", "lr": 0.1})
    outputs.write_metrics(tmp_path, [{"epoch": 1, "train_loss": 1.0, "test_top1": 50.0}])
    outputs.write_summary(tmp_path, {"final_top1": 50.0})
    outputs.save_checkpoint(tmp_path / "last.pth.tar", {"epoch": 1, "model": {}})
    write_recipe(tmp_path / "recipe.yaml", {"model": "resnet18", "mixup": 1.0, "mixup_mode": "sage"})
    write_between_markers(tmp_path / "report.md", "| a |", "table")
    pytest.importorskip("matplotlib")
    from timm_sage.tools.plots import _pyplot, save_figure_atomic

    plt = _pyplot()
    figure = plt.figure(figsize=(1, 1))
    save_figure_atomic(figure, tmp_path / "figure.png")
    plt.close(figure)
    names = [
        "args.yaml", "metrics.csv", "metrics.jsonl", "summary.json", "last.pth.tar", "recipe.yaml",
        "report.md", "figure.png",
    ]  # fmt: skip
    for name in names:
        assert _mode(tmp_path / name) == 0o644, name
    _no_leftovers(tmp_path)


def test_no_writer_bypasses_the_atomic_helper():
    """tempfile + os.replace leave 0600 files: only timm_sage/_atomic.py may rename temporary files."""
    pattern = re.compile(r"NamedTemporaryFile|mkstemp|os\.replace|os\.rename")
    offenders = [
        f"{path.relative_to(PACKAGE)}:{number}"
        for path in sorted(PACKAGE.rglob("*.py"))
        if path.name != "_atomic.py"
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if pattern.search(line)
    ]
    assert offenders == []
