"""Timing and reporting helpers for ``timm-sage bench``: medians after warm-up, one table format."""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from timm_sage._atomic import atomic_write_text


@dataclass
class BenchRow:
    """One measured line: suite, case, name, a median ``value`` in ``unit``, a ratio to ``baseline``."""

    suite: str
    case: str
    name: str
    value: float
    baseline: str = ""
    ratio: float | None = None
    extra: dict = field(default_factory=dict)
    unit: str = "ms"


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_ms(fn: Callable[[], object], device: torch.device, *, repeats: int, warmup: int) -> float:
    """Median wall time of ``fn`` in milliseconds over ``repeats`` runs after ``warmup`` runs."""
    return statistics.median(interleaved_times_ms({"fn": fn}, device, repeats=repeats, warmup=warmup)["fn"])


def interleaved_times_ms(
    calls: dict[str, Callable[[], object]],
    device: torch.device,
    *,
    repeats: int,
    warmup: int,
    desc: str | None = None,
) -> dict[str, list[float]]:
    """Wall times in ms of each call's timed runs, the calls taken in turn (round-robin) ``repeats``
    times after ``warmup`` rounds: a machine that slows down or speeds up mid-run shifts every call
    alike, so their ratios hold better than when each call's repeats run back to back. ``desc``: the
    label of a progress bar over the rounds."""
    rounds = tqdm(total=warmup + repeats, desc=desc, leave=False, disable=desc is None)
    for _ in range(warmup):
        for fn in calls.values():
            fn()
        rounds.update()
    synchronize(device)
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(repeats):
        for name, fn in calls.items():
            start = time.perf_counter()
            fn()
            synchronize(device)
            times[name].append((time.perf_counter() - start) * 1000.0)
        rounds.update()
    rounds.close()
    return times


def machine_description(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}"
    return (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, "
        f"{torch.get_num_threads()} torch threads, torch {torch.__version__}"
    )


def format_table(rows: list[BenchRow]) -> str:
    """A Markdown table: suite, case, what, median value and unit, ratio (to the named baseline)."""
    lines = ["| suite | case | what | median | unit | ratio | to |", "|---|---|---|---:|---|---:|---|"]
    for row in rows:
        ratio = "" if row.ratio is None else f"{row.ratio:.3f}"
        cells = (row.suite, row.case, row.name, f"{row.value:.2f}", row.unit, ratio, row.baseline)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_json_atomic(path: str | Path, rows: list[BenchRow], meta: dict) -> None:
    payload = {"meta": meta, "rows": [asdict(row) for row in rows]}
    atomic_write_text(path, json.dumps(payload, indent=2))
