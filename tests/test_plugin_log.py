"""What timm's train.py shows with the plugin (issue 34): its logged ``Loss`` is the mixed loss before the
``update_ratio`` weight, and the start-up line names every SAGE option in effect."""

from __future__ import annotations

import argparse
import logging

import pytest
import timm
import torch

from timm_sage import plugin
from timm_sage.config import SageConfig


def test_logged_loss_keeps_its_value_and_the_weighted_gradient():
    w = torch.tensor([1.5, -2.0], requires_grad=True)
    loss = (w**2).sum()  # 6.25; d/dw = 2w = (3, -4)
    out = plugin.logged_as_unweighted(loss, torch.tensor(0.7))
    assert out.item() == pytest.approx(6.25)  # what train.py prints: unweighted
    out.backward()
    torch.testing.assert_close(w.grad, torch.tensor([2.1, -2.8]))  # 0.7 * 2w: the weighted loss's gradient


def _args(**sage):
    return argparse.Namespace(mixup=1.0, cutmix=0.0, cutmix_minmax=None, mixup_mode="sage", **sage)


def test_banner_is_one_line_with_every_option_in_effect(caplog):
    namespace = {"Mixup": timm.data.Mixup}
    with caplog.at_level(logging.INFO, logger="timm_sage.plugin"):
        state = plugin.install(namespace, _args(sage_update_ratio=0.7, sage_blur_kernel=3, sage_seed=7))
    (line,) = [r.getMessage() for r in caplog.records if "installed" in r.getMessage()]
    assert "\n" not in line and line == plugin.banner(state)
    expected = SageConfig(update_ratio=0.7, blur_kernel=3).as_dict()
    for name, value in expected.items():
        assert f" {name}={value}" in line, name
    assert "seed=7 + rank" in line and "(Mixup)" in line
    plain = plugin.banner(plugin.install({"Mixup": timm.data.Mixup}, _args()))
    assert f"update_ratio={SageConfig().update_ratio}" in plain and "seed=train.py's --seed + rank" in plain
