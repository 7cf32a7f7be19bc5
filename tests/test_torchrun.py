"""timm's train.py shape under ``torchrun --nproc_per_node 2`` (gloo, CPU) with the plugin hook.

Each rank mixes its own shard with its own stream (train.py seeds ``seed + rank``, the plugin seeds the
mixer from ``torch.initial_seed()``); DDP keeps the weights identical across ranks, the clean-loss
gradients of ``sage_update_ratio < 1`` included.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).with_name("timm_train_like.py")


TORCHRUN = Path(sys.executable).with_name("torchrun")


@pytest.mark.skipif(not TORCHRUN.exists(), reason="needs torchrun beside the interpreter")
def test_torchrun_two_ranks_stay_in_sync_and_mix_their_own_shards(tmp_path):
    config = tmp_path / "sage.yaml"  # --device-modules adds no flags: the sage_* keys come from the YAML
    config.write_text("mixup: 1.0\nmixup_mode: sage\nsage_update_ratio: 0.5\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[1])}
    command = [
        str(TORCHRUN), "--standalone", "--nproc_per_node", "2", str(SCRIPT), "--config", str(config),
        "--device-modules", "timm_sage.plugin", "--no-prefetcher", "--num-samples", "32", "--batch-size", "8",
        "--record", str(tmp_path / "run"),
    ]  # fmt: skip
    done = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"run.rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["rank"] for r in ranks] == [0, 1] and all(r["world_size"] == 2 for r in ranks)
    assert ranks[0]["seed"] == 42 and ranks[1]["seed"] == 43  # seed + rank, as train.py
    assert len(ranks[0]["losses"]) == len(ranks[1]["losses"]) == 2  # 32 images, 2 ranks, batches of 8
    # Each rank mixed its own shard: different images, different soft targets.
    assert ranks[0]["inputs"] != ranks[1]["inputs"] and ranks[0]["targets"] != ranks[1]["targets"]
    # DDP averaged every gradient (the clean part of r = 0.5 too): the weights are the same on both.
    # BatchNorm's running statistics are rank-local between DDP's broadcasts (stock DDP behaviour).
    weights = [name for name in ranks[0]["params"] if "running_" not in name and "num_batches" not in name]
    assert len(weights) > 10
    for name in weights:
        assert ranks[0]["params"][name] == pytest.approx(ranks[1]["params"][name], rel=1e-5, abs=1e-6), name
