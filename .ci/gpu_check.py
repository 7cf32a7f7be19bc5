#!/usr/bin/env python3
"""The Python stages of .ci/gpu_check.sh (each writes OUT/<stage>.json and exits non-zero on failure).

``sync-step``: SAGE steps of a timm resnet (several option sets: float16 autocast with a GradScaler and
update_ratio < 1, bfloat16 with the pooled search, cross-entropy saliency, CutMix switching) under
``torch.cuda.set_sync_debug_mode("error")``, which raises on any op that waits for the device; then one
training step on the mixed batch, to check the whole step runs. On the CPU (the dry run) the same steps
run without the sync guard.

``train``: timm's train.py through the plugin (``--device-modules timm_sage.plugin``) with ``--amp
--channels-last`` for a few steps: the real one when ``TIMM_TRAIN_PY`` points at a clone's train.py (on a
generated image folder), else the train.py-shaped harness tests/timm_train_like.py.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

SYNC_OPTIONS = {
    "float16 GradScaler update_ratio=0.7": {"amp_dtype": torch.float16, "update_ratio": 0.7, "scaler": True},
    "bfloat16 search_size cheap": {"amp_dtype": torch.bfloat16, "search_size": 16, "saliency_scale": 0.5},
    "bfloat16 cross_entropy": {"amp_dtype": torch.bfloat16, "saliency_loss": "cross_entropy"},
    "cutmix prob=0.7": {"amp_dtype": torch.bfloat16, "cutmix_alpha": 1.0, "prob": 0.7},
}


def sync_step(device: torch.device, out: Path) -> int:
    import timm
    import torch.nn.functional as F

    from timm_sage import SageMixup

    cuda = device.type == "cuda"
    name, batch, size, classes = ("resnet18", 32, 64, 100) if cuda else ("test_resnet", 4, 16, 10)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, size, size, generator=gen).to(device)
    y = torch.randint(0, classes, (batch,), generator=gen).to(device)
    results: dict[str, dict] = {}
    for label, options in SYNC_OPTIONS.items():
        options = dict(options)
        start = time.perf_counter()
        try:
            torch.manual_seed(0)
            model = timm.create_model(name, num_classes=classes).to(device)
            model = model.to(memory_format=torch.channels_last)
            optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
            scaler = torch.amp.GradScaler(device.type) if options.pop("scaler", False) else None
            amp_dtype = options["amp_dtype"]
            mixer = SageMixup(mode="sage", num_classes=classes, model=model, seed=0, grad_scaler=scaler,
                              **options)  # fmt: skip
            while mixer(x, y) and mixer.last.method != "sage":  # the first SAGE call checks the labels
                pass
            methods = []
            for _ in range(4):
                optimizer.zero_grad(set_to_none=True)
                if cuda:
                    torch.cuda.synchronize()
                    torch.cuda.set_sync_debug_mode("error")
                try:
                    images, target = mixer(x, y)
                finally:
                    if cuda:
                        torch.cuda.set_sync_debug_mode("default")
                methods.append(mixer.last.method)
                with torch.autocast(device.type, dtype=amp_dtype):
                    logits = model(images.contiguous(memory_format=torch.channels_last))
                loss = torch.sum(-target * F.log_softmax(logits.float(), -1), -1).mean() * mixer.loss_weight
                if scaler is not None:
                    scaler.scale(loss).backward()
                    scaler.step(optimizer)
                    scaler.update()
                else:
                    loss.backward()
                    optimizer.step()
            finite = bool(torch.isfinite(loss)) and bool(torch.isfinite(mixer.last.lam).all())
            # On the CPU dry run a non-finite loss is recorded, not a failure: oneDNN's bf16 kernels on
            # AMX CPUs gave NaN weight gradients in the training step itself (seen 2026-12-06 on this
            # project's box, with the code of 0.1.0 too); the dry run checks that the stage runs.
            results[label] = {"ok": finite or not cuda, "finite": finite, "methods": methods,
                              "loss": float(loss.detach())}  # fmt: skip
        except Exception as error:  # recorded: the other option sets still run
            results[label] = {"ok": False, "error": f"{type(error).__name__}: {error}",
                              "traceback": traceback.format_exc()}  # fmt: skip
        results[label]["seconds"] = round(time.perf_counter() - start, 2)
        print(label, "ok" if results[label]["ok"] else f"FAILED {results[label].get('error', '')}")
    (out / "sync_step.json").write_text(json.dumps({"device": str(device), "results": results}, indent=2))
    return 0 if all(r["ok"] for r in results.values()) else 1


def _image_folder(root: Path, classes: int = 2, per_class: int = 24, size: int = 72) -> Path:
    """A tiny ImageFolder (train/ and validation/) of generated PNGs for the real train.py."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "validation"):
        for label in range(classes):
            folder = root / split / f"class{label}"
            folder.mkdir(parents=True, exist_ok=True)
            for index in range(per_class):
                pixels = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
                pixels[: size // 2, : size // 2] = 200 if label else 30
                Image.fromarray(pixels).save(folder / f"{index}.png")
    return root


def train(device: torch.device, out: Path) -> int:
    sage = ["--mixup", "1.0", "--mixup-mode", "sage", "--device-modules", "timm_sage.plugin"]
    amp = ["--amp", "--amp-dtype", "bfloat16", "--channels-last"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    real = os.environ.get("TIMM_TRAIN_PY")
    if real:
        data = _image_folder(out / "train_py_data")
        command = [
            sys.executable, real, "--data-dir", str(data), "--train-split", "train",
            "--val-split", "validation", "--model", "resnet18", "--num-classes", "2", "--img-size", "64",
            "-b", "16", "--epochs", "1",
            "--workers", "2", "--log-interval", "1", "--output", str(out / "train_py_output"),
            "--device", device.type, *sage, *amp,
        ]  # fmt: skip
    else:
        command = [
            sys.executable, str(ROOT / "tests" / "timm_train_like.py"), "--device", device.type,
            "--num-samples", "48", "-b", "8", "--loss-scaler", "--mixup-prob", "0.8", "--cutmix", "1.0",
            "--smoothing", "0", "--record", str(out / "harness"), *sage, *amp,
        ]  # fmt: skip
    print("running:", " ".join(command), flush=True)
    start = time.perf_counter()
    completed = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    print(completed.stdout[-4000:], completed.stderr[-4000:], sep="\n")
    record = {
        "script": real or "tests/timm_train_like.py",
        "device": str(device),
        "returncode": completed.returncode,
        "seconds": round(time.perf_counter() - start, 2),
    }
    if (
        real
        and completed.returncode == 0
        and "--mixup-mode sage installed" not in completed.stdout + completed.stderr
    ):
        record["returncode"] = 1  # train.py ran, but without the plugin
    harness = out / "harness.rank0.json"
    if not real and completed.returncode == 0:
        # What the harness trained on: finite losses, and soft (mixed) targets on some step.
        run = json.loads(harness.read_text())
        record["losses"] = run["losses"]
        record["mixed_steps"] = sum(any(0.0 < v < 1.0 for row in t for v in row) for t in run["targets"])
        if not all(map(math.isfinite, run["losses"])) or record["mixed_steps"] == 0:
            record["returncode"] = 1
    (out / "train_py.json").write_text(json.dumps(record, indent=2))
    print(json.dumps(record))
    return record["returncode"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("stage", choices=("sync-step", "train"))
    parser.add_argument("--device", default="cuda", choices=("cpu", "cuda"))
    parser.add_argument("--out", type=Path, default=Path("output/gpu"))
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("--device cuda, but torch sees no CUDA device", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    return sync_step(device, args.out) if args.stage == "sync-step" else train(device, args.out)


if __name__ == "__main__":
    sys.exit(main())
