"""A new user's first mistakes get messages that name the fix (issue 34, item 6), and the README's snippet
prints what its comment says."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import pytest
import timm
import torch
from torch import nn

import timm_sage
from timm_sage.tools import cli
from timm_sage.train.command import similar_model_names
from timm_sage.train.config import load_config

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    "typo, meant", [("resnet_18", "resnet18"), ("ResNet-50", "resnet50"), ("wrn_16_8", "wrn16_8")]
)
def test_a_misspelt_model_name_suggests_the_right_one(typo, meant):
    import timm_sage.models  # noqa: F401  (wrn16_8)

    names = similar_model_names(typo, timm.list_models())
    assert names[0] == meant and len(names) <= 5
    assert similar_model_names("", ["resnet18"]) == []


def test_train_names_the_model_and_suggests(capsys):
    code = cli.main(["train", "--config", "fashion_mnist_sage", "--model", "resnet_18", "--no-progress"])
    assert code == 2
    error = capsys.readouterr().err
    assert "model: 'resnet_18' is not a timm model name" in error and "similar names: resnet18" in error


def test_a_bad_mixup_mode_names_the_key_and_the_flag():
    message = r"mixup_mode \(--mixup-mode\) must be one of batch, .*sage, got 'SAGE'"
    with pytest.raises(ValueError, match=message):
        load_config(None, {"mixup": 1.0, "mixup_mode": "SAGE"})
    assert load_config(None, {"mixup": 1.0, "mixup_mode": "sage"}).mixup_mode == "sage"


def test_num_classes_against_the_models_logits_at_the_first_call():
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 100)
    )
    mixer = timm_sage.SageMixup(mode="sage", num_classes=10, model=model, seed=0)
    x, y = torch.randn(4, 3, 16, 16), torch.randint(0, 10, (4,))
    message = r"num_classes=10, but the model outputs 100 logits.*num_classes=100"
    with pytest.raises(ValueError, match=message):
        mixer(x, y)
    right = timm_sage.SageMixup(mode="sage", num_classes=100, model=model, seed=0)
    mixed, target = right(x, y)
    assert target.shape == (4, 100) and mixed.shape == x.shape


def test_readme_snippet_prints_what_its_comment_says():
    text = (ROOT / "README.md").read_text()
    (code,) = [block for block in re.findall(r"```python\n(.*?)```", text, flags=re.S) if "print(" in block]
    expected = re.search(r"^# prints: (.+)$", code, flags=re.M).group(1).strip()
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, "README.md", "exec"), {"__name__": "__readme__"})
    assert out.getvalue().strip() == expected
