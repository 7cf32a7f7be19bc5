"""The ``timm-sage`` command line: ``--help``/``--version`` import nothing heavy, every ``train`` option is
described, and ``import timm_sage`` stays light while its public names load on use (issue 34)."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest

from timm_sage.tools import cli
from timm_sage.train.config import DEFAULT_ONLY, NEUTRAL, SUPPORTED
from timm_sage.train.key_help import KEY_HELP

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "timm", "matplotlib", "numpy", "yaml")


def _python(code: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"},
    )  # fmt: skip
    return done.stdout


@pytest.mark.parametrize("flag", ["--help", "--version", None])
def test_top_level_help_and_version_import_nothing_heavy(flag):
    argv = [] if flag is None else [flag]
    out = _python(
        "import contextlib, io, json, sys\n"
        "from timm_sage.tools import cli\n"
        "buffer = io.StringIO()\n"
        "with contextlib.redirect_stdout(buffer):\n"
        "    try:\n"
        f"        code = cli.main({argv!r})\n"
        "    except SystemExit as stop:\n"
        "        code = stop.code\n"
        f"print(json.dumps([code, buffer.getvalue(), [m for m in {HEAVY!r} if m in sys.modules]]))\n"
    )
    code, text, loaded = json.loads(out.splitlines()[-1])
    assert loaded == []  # what made --help take seconds: torch and timm at import
    if flag == "--version":
        assert code == 0 and text.strip() == _python("import timm_sage; print(timm_sage.__version__)").strip()
    else:
        assert code == (0 if flag else 2) and all(name in text for name in cli.COMMANDS)


def test_import_is_light_and_public_names_load_on_use():
    out = _python(
        "import json, sys, timm_sage\n"
        "before = [m for m in ('torch', 'timm') if m in sys.modules]\n"
        "names = {name: type(getattr(timm_sage, name)).__name__ for name in timm_sage.__all__}\n"
        "import timm\n"
        "print(json.dumps([before, names, timm.is_model('wrn16_8'), timm_sage.models.MODEL_NAMES[0]]))\n"
    )
    before, names, registered, first_model = json.loads(out.splitlines()[-1])
    assert before == []
    assert names["SageMixup"] == "type" and names["sage_mix"] == "function" and names["__version__"] == "str"
    assert registered and first_model == "preactresnet18"  # the first use registered the CIFAR networks
    import timm_sage

    with pytest.raises(AttributeError, match="no attribute 'SageMixupp'"):
        timm_sage.SageMixupp  # noqa: B018


def test_every_supported_key_has_a_description_and_no_stale_ones():
    keys = {key for key in SUPPORTED if not key.startswith("sage_")}
    assert keys - set(KEY_HELP) == set(), "add a line for each to timm_sage/train/key_help.py"
    assert set(KEY_HELP) - keys == set()
    assert all(len(text) > 10 for text in KEY_HELP.values())


def _train_parser() -> argparse.ArgumentParser:
    parser = cli.build_parser("train")
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices["train"]


def test_every_option_of_train_help_is_described():
    parser = _train_parser()
    described: set[str] = set()
    for action in parser._actions:
        if action.help not in (None, "", argparse.SUPPRESS):
            described.add(action.dest)
    for group in parser._action_groups:  # the ignored and off-only train.py keys: named in their group's text
        named = set((group.description or "").split(", "))
        described |= {a.dest for a in group._group_actions if named & set(a.option_strings)}
    undescribed = {a.dest for a in parser._actions if a.dest not in described and a.dest != "help"}
    assert undescribed == set()
    keys = {*SUPPORTED, *NEUTRAL, *DEFAULT_ONLY} - {"config"}
    assert {"cfg__" + key for key in keys} <= described
    text = parser.format_help()
    assert "(default 128)" in text  # batch_size: the default comes from the same table as the parser
    assert "--pin-mem" in text and "--reprob" in text


def test_help_wraps_flags_whole():
    text = _train_parser().format_help()
    assert "--pin-\n" not in text and "--bce-\n" not in text
