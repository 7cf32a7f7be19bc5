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

``preflight``: in seconds, before any stage: every module the stages import, the CUDA device (a kernel
runs on it and synchronises), triton for the compile stage on CUDA, ``TIMM_TRAIN_PY`` when set; writes
OUT/preflight.json and exits 1 with the whole list of what is missing. Optional modules (albumentations:
its tests skip) are listed, not required. Imports nothing at module level beyond the standard library, so
that a machine without torch gets the list too.

Every stage writes its JSON as it goes (sync-step after each option set), atomically.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# label -> SageMixup options; amp_dtype names a torch dtype (torch is imported by the stage, not here).
SYNC_OPTIONS = {
    "float16 GradScaler update_ratio=0.7": {"amp_dtype": "float16", "update_ratio": 0.7, "scaler": True},
    "bfloat16 search_size cheap": {"amp_dtype": "bfloat16", "search_size": 16, "saliency_scale": 0.5},
    "bfloat16 cross_entropy": {"amp_dtype": "bfloat16", "saliency_loss": "cross_entropy"},
    "cutmix prob=0.7": {"amp_dtype": "bfloat16", "cutmix_alpha": 1.0, "prob": 0.7},
}

# What the stages import: (module, what needs it). Missing one stops the check at once.
REQUIRED_MODULES = (
    ("torch", "every stage"),
    ("torchvision", "timm, bench mix (its MixUp/CutMix rows)"),
    ("timm", "every stage"),
    ("numpy", "every stage"),
    ("PIL", "train_py (the generated image folder)"),
    ("yaml", "timm's train.py, timm-sage train"),
    ("safetensors", "timm"),
    ("huggingface_hub", "timm"),
    ("tqdm", "bench"),
    ("pytest", "cuda_tests"),
    ("hypothesis", "cuda_tests (the fuzz tests)"),
    ("timm_sage", "every stage (this checkout, on PYTHONPATH)"),
    ("timm_sage.plugin", "train_py"),
    ("timm_sage.tools.bench", "bench, compile"),
)
# The train stage's run is killed after this long (the stage's limit in gpu_check.sh is 80 s).
TRAIN_SECONDS = 70

# Missing these skips tests, not stages.
OPTIONAL_MODULES = (("albumentations", "tests/test_albumentations.py skips"),)


def _write_json(path: Path, payload: dict) -> None:
    """Atomically: a stage killed by its time limit leaves the last complete file."""
    temporary = path.with_suffix(path.suffix + ".tmp")
    temporary.write_text(json.dumps(payload, indent=2))
    os.replace(temporary, path)


def preflight(device_type: str, out: Path, stages: str) -> int:
    import importlib

    start = time.perf_counter()
    missing: list[str] = []
    absent_optional: list[str] = []
    versions: dict[str, str] = {}
    for name, needed_by in (*REQUIRED_MODULES, *OPTIONAL_MODULES):
        try:
            module = importlib.import_module(name)
            versions[name] = str(getattr(module, "__version__", "present"))
        except Exception as error:  # ImportError, or an import that fails on this machine
            entry = f"{name} ({needed_by}): {type(error).__name__}: {error}"
            (absent_optional if (name, needed_by) in OPTIONAL_MODULES else missing).append(entry)
    report: dict = {"device": device_type, "versions": versions}
    if "torch" in versions and device_type == "cuda":
        import torch

        if not torch.cuda.is_available():
            missing.append(f"a CUDA device (torch {torch.__version__} sees none; torch.version.cuda "
                           f"{torch.version.cuda})")  # fmt: skip
        else:
            try:
                probe = torch.randn(256, 256, device="cuda")
                (probe @ probe).sum().item()
                torch.cuda.synchronize()
                report["cuda_device"] = torch.cuda.get_device_name()
                report["cuda_capability"] = list(torch.cuda.get_device_capability())
            except Exception as error:
                missing.append(f"a working CUDA device: {type(error).__name__}: {error}")
        if "compile" in stages.split():
            try:
                import triton

                versions["triton"] = triton.__version__
            except Exception as error:
                missing.append(f"triton (compile stage: inductor on CUDA): {type(error).__name__}: {error}")
    real = os.environ.get("TIMM_TRAIN_PY")
    if real and "train_py" in stages.split() and not Path(real).is_file():
        missing.append(f"TIMM_TRAIN_PY={real} (train_py): no such file")
    report.update(missing=missing, optional_missing=absent_optional, ok=not missing,
                  seconds=round(time.perf_counter() - start, 2))  # fmt: skip
    _write_json(out / "preflight.json", report)
    for entry in absent_optional:
        print(f"optional, missing: {entry}")
    if missing:
        print("preflight: missing, nothing installed, fix these and run again:", *missing, sep="\n  ")
        return 1
    print(f"preflight ok in {report['seconds']} s: " + ", ".join(f"{k} {v}" for k, v in versions.items()))
    return 0


def sync_step(device, out: Path) -> int:
    import timm
    import torch
    import torch.nn.functional as F

    from timm_sage import SageMixup

    cuda = device.type == "cuda"
    name, batch, size, classes = ("resnet18", 32, 64, 100) if cuda else ("test_resnet", 4, 16, 10)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, size, size, generator=gen).to(device)
    y = torch.randint(0, classes, (batch,), generator=gen).to(device)
    results: dict[str, dict] = {}
    for label, options in SYNC_OPTIONS.items():
        options = dict(options, amp_dtype=getattr(torch, SYNC_OPTIONS[label]["amp_dtype"]))
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
        _write_json(out / "sync_step.json", {"device": str(device), "results": results})
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


def train(device, out: Path) -> int:
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
    _write_json(out / "train_py.json", {"script": real or "tests/timm_train_like.py", "running": command})
    start = time.perf_counter()
    # The run's output goes to the stage's log line by line (nothing is lost if the stage is killed), and
    # the run itself is killed before the stage's own limit would orphan it.
    lines: list[str] = []
    with subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    ) as process:
        watchdog = threading.Timer(TRAIN_SECONDS, process.kill)
        watchdog.start()
        for line in process.stdout:
            print(line, end="")
            lines.append(line)
        returncode = process.wait()
        watchdog.cancel()
    output = "".join(lines)
    record = {
        "script": real or "tests/timm_train_like.py",
        "device": str(device),
        "returncode": returncode,
        "seconds": round(time.perf_counter() - start, 2),
    }
    if real and returncode == 0 and "timm_sage.plugin: installed for --mixup-mode sage" not in output:
        record["returncode"] = 1  # train.py ran, but without the plugin
    harness = out / "harness.rank0.json"
    if not real and returncode == 0:
        # What the harness trained on: finite losses, and soft (mixed) targets on some step.
        run = json.loads(harness.read_text())
        record["losses"] = run["losses"]
        record["mixed_steps"] = sum(any(0.0 < v < 1.0 for row in t for v in row) for t in run["targets"])
        if not all(map(math.isfinite, run["losses"])) or record["mixed_steps"] == 0:
            record["returncode"] = 1
    _write_json(out / "train_py.json", record)
    print(json.dumps(record))
    return record["returncode"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("stage", choices=("preflight", "sync-step", "train"))
    parser.add_argument("--device", default="cuda", choices=("cpu", "cuda"))
    parser.add_argument("--out", type=Path, default=Path("output/gpu"))
    parser.add_argument("--stages", default="cuda_tests sync_step train_py bench compile")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.stage == "preflight":
        return preflight(args.device, args.out, args.stages)
    import torch

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("--device cuda, but torch sees no CUDA device", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    return sync_step(device, args.out) if args.stage == "sync-step" else train(device, args.out)


if __name__ == "__main__":
    sys.exit(main())
