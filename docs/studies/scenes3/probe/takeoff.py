"""Steps to takeoff: train a config for at most EPOCHS epochs and report the first optimizer step at which
the mean training loss of the last 20 steps falls below 98 % of ln C (the study tool's stall threshold,
read per step instead of per epoch), and the validation top-1 after each epoch.

    OMP_NUM_THREADS=1 python docs/studies/scenes3/probe/takeoff.py CONFIG.yaml EPOCHS SEED [--KEY VALUE ...]
        [--width W] [--zero-init]   # the model's keywords
        [--stop-at-takeoff]   # end after the epoch in which the run took off

One JSON line per run on stdout (appended by the caller to probe/takeoff.jsonl). The schedule is the
config's own (the scheduler steps per epoch as in ``timm-sage train``), so the first epochs are those of
the full run.
"""

from __future__ import annotations

import json
import math
import sys
import time

import torch


def main(argv: list[str]) -> None:
    from timm_sage.train.config import load_config
    from timm_sage.train.loop import hard_labels
    from timm_sage.train.session import Trainer

    stop_at_takeoff = "--stop-at-takeoff" in argv
    argv = [a for a in argv if a != "--stop-at-takeoff"]
    config, epochs, seed, overrides = argv[0], int(argv[1]), int(argv[2]), argv[3:]
    # --width W and --zero-init: the model's keywords, without YAML on the command line
    model_kwargs: dict = {}
    if "--zero-init" in overrides:
        overrides.remove("--zero-init")
        model_kwargs["zero_init_residual"] = True
    if "--width" in overrides:
        at = overrides.index("--width")
        model_kwargs["width"] = float(overrides[at + 1])
        del overrides[at : at + 2]
    if model_kwargs:
        overrides += ["--model_kwargs", json.dumps(model_kwargs)]
    torch.set_num_threads(1)
    cfg = load_config(config, ["--seed", str(seed), "--output", "/tmp/takeoff", *overrides])
    trainer = Trainer(cfg, progress=False)
    threshold = 0.98 * math.log(cfg.num_classes)
    losses: list[float] = []
    takeoff, vals = None, []
    start = time.perf_counter()
    for epoch in range(epochs):
        if trainer.mixer is not None:  # Trainer.fit's rule, read from the rows kept below
            trainer.mixer.mixup_enabled = trainer.mixing_on(epoch)
        correct = seen = 0
        for x, y in trainer.train_loader.batches(epoch):
            result = trainer.train_one_step(x, y)
            losses.append(float(result.loss))
            correct += int((result.logits.argmax(1) == hard_labels(result.target)).sum())
            seen += y.shape[0]
            if takeoff is None and len(losses) >= 20 and sum(losses[-20:]) / 20 < threshold:
                takeoff = len(losses)
        trainer.rows.append({"epoch": epoch + 1, "train_top1": 100 * correct / max(seen, 1)})
        if trainer.scheduler is not None:
            trainer.scheduler.step(epoch + 1)
        vals.append(round(trainer._evaluate(trainer.forward_model, trainer.val_loader)["test_top1"], 2))
        if takeoff is not None and stop_at_takeoff:
            break
    print(json.dumps({
        "config": config, "seed": seed, "overrides": " ".join(overrides), "steps_per_epoch":
        len(trainer.train_loader), "takeoff_step": takeoff, "val_top1": vals,
        "seconds": round(time.perf_counter() - start, 1),
        "loss_per_epoch": [round(sum(c) / len(c), 4) for c in _chunks(losses, len(trainer.train_loader))],
    }), flush=True)


def _chunks(values: list[float], size: int) -> list[list[float]]:
    return [values[i : i + size] for i in range(0, len(values), size)]


if __name__ == "__main__":
    main(sys.argv[1:])
