"""``timm-sage study``: run a set of training configs over several seeds, then report mean and spread.

Each run is an ordinary ``timm-sage train`` in a child process with its own output folder; a finished
run (its ``summary.json`` exists) is skipped and an interrupted one resumes from its checkpoint, so the
study itself can be stopped and started again. ``--report`` turns the runs into a Markdown table and a
PNG of test accuracy per epoch, written between markers into a Markdown file.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

from timm_sage.tools.report import write_between_markers

SECTION = "study"


def run_name(config: Path, seed: int) -> str:
    return f"{config.stem}-seed{seed}"


# The small files of a study that its report needs (per run, and the plans): what --record keeps.
RECORD_FILES = ("summary.json", "metrics.jsonl", "args.yaml", "plan.json", "epoch_seconds.json")


def sync_record(output: Path, record: Path | None, direction: str) -> int:
    """Copy the :data:`RECORD_FILES` under ``output`` to the same places under ``record``
    (``direction="save"``), or those under ``record`` that ``output`` lacks back to it ("restore"), so a
    study resumes on another machine from a committed record (finished runs skipped, the same plans).
    Writes are atomic; returns the number of files copied."""
    from timm_sage._atomic import atomic_write_bytes

    if record is None:
        return 0
    source, target = (output, record) if direction == "save" else (record, output)
    if not source.is_dir():
        return 0
    copied = 0
    for path in sorted(source.rglob("*")):
        if path.name not in RECORD_FILES or not path.is_file() or "_timing" in path.parts[:-2]:
            continue
        if path.name in ("metrics.jsonl", "args.yaml") and not (path.parent / "summary.json").is_file():
            continue  # a run still training: recorded once it has finished
        destination = target / path.relative_to(source)
        data = path.read_bytes()
        if direction == "restore" and destination.is_file():
            continue
        if direction == "save" and destination.is_file() and destination.read_bytes() == data:
            continue
        atomic_write_bytes(destination, data)
        copied += 1
    return copied


def run_study(
    configs: list[Path],
    seeds: list[int],
    output: Path,
    extra: list[str],
    epochs: dict[str, int] | None = None,
    record: Path | None = None,
) -> list[Path]:
    """Train every config with every seed, seed by seed (so a stopped study has every method for the
    first seeds), skipping finished runs and resuming interrupted ones; returns the run folders.
    ``epochs`` ({config stem: epochs}) shortens a config's schedule: its own cosine schedule over fewer
    epochs, trained to completion (the equal wall-clock runs)."""
    for config in configs:
        if not config.is_file():
            raise FileNotFoundError(f"config {config} does not exist")
    folders = []
    for seed in seeds:
        for config in configs:
            name = run_name(config, seed)
            folder = output / name
            folders.append(folder)
            if (folder / "summary.json").is_file():
                print(f"[study] {name}: finished earlier, skipped", flush=True)
                continue
            if not _claim(folder):
                print(f"[study] {name}: being trained by another process, skipped", flush=True)
                continue
            command = [
                sys.executable,
                "-m",
                "timm_sage.tools.cli",
                "train",
                "--config",
                str(config),
                "--seed",
                str(seed),
                "--output",
                str(output),
                "--experiment",
                name,
                *extra,
            ]
            if epochs and config.stem in epochs:
                command += ["--epochs", str(epochs[config.stem])]
            if (folder / "last.pth.tar").is_file():
                command += ["--resume", str(folder / "last.pth.tar")]
            elif folder.is_dir():  # a start that died before its first checkpoint: free the name again
                shutil.rmtree(folder)
            print(f"[study] {name}: {' '.join(command[3:])}", flush=True)
            try:
                subprocess.run(command, check=True)
            finally:
                _lock_path(folder).unlink(missing_ok=True)
            sync_record(folder, record / name if record is not None else None, "save")
    return folders


def _lock_path(folder: Path) -> Path:
    """``OUTPUT/.NAME.lock``, beside the run's folder (which the trainer creates)."""
    return folder.with_name(f".{folder.name}.lock")


def _claim(folder: Path) -> bool:
    """Claim the run ``folder`` for this process: create its lock (exclusively) holding our pid.
    False when another live process holds it; a lock left by a dead process is taken over. So two
    processes running the same study command share its runs (at most two on this project's 2-core box)."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    lock = _lock_path(folder)
    for _ in range(2):
        try:
            descriptor = os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            try:
                holder = int(lock.read_text().strip() or "0")
            except (OSError, ValueError):
                holder = 0
            if holder and holder != os.getpid() and _alive(holder):
                return False
            lock.unlink(missing_ok=True)  # stale: its process is gone
            continue
        with os.fdopen(descriptor, "w") as handle:
            handle.write(str(os.getpid()))
        return True
    return False


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # pragma: no cover - another user's process
        return True
    return True


def method_names(stems: list[str]) -> dict[str, str]:
    """Config stem -> method name: the stem less the prefix every stem shares, cut at an underscore
    (``fashion_mnist_study_sage`` -> ``sage``; ``fmnist_scarce_sage_norearrange`` ->
    ``sage_norearrange`` beside ``fmnist_scarce_sage``). One stem alone keeps its last word."""
    unique = sorted(set(stems))
    if len(unique) == 1:
        return {unique[0]: unique[0].rsplit("_", 1)[-1]}
    prefix = os.path.commonprefix(unique)
    prefix = prefix[: prefix.rfind("_") + 1]
    return {stem: stem[len(prefix) :] or stem for stem in unique}


def _stem_and_seed(folder: Path) -> tuple[str, int]:
    stem, seed = folder.name.rsplit("-seed", 1)
    return stem, int(seed)


def collect(
    folders: list[Path],
    epoch_seconds: dict[str, float] | None = None,
    metric: str = "test",
    names: dict[str, str] | None = None,
) -> dict[str, list[dict]]:
    """Finished runs by method, in the order of ``folders``.

    ``metric`` "val" takes the curve points from the validation evaluations (runs with ``val_size``),
    which is where choices are made; the test top-1 of the final weights is always ``final_top1``.

    Each run: ``seed``, ``final_top1``, ``best_top1``, ``final_train_top1`` (None unless the run had
    ``eval_train``), ``train_s`` (training seconds, evaluation excluded: the median epoch time times the
    epochs, or ``epoch_seconds[stem]`` where given), ``epochs`` and ``points``:
    ``[(epoch, training seconds up to it, test top-1)]`` for every
    evaluated epoch.
    """
    names = names or method_names([_stem_and_seed(f)[0] for f in folders])
    results: dict[str, list[dict]] = {}
    for folder in folders:
        summary_path = folder / "summary.json"
        if not summary_path.is_file():
            continue
        summary = json.loads(summary_path.read_text())
        rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines() if line]
        # Training seconds per epoch: the run's median epoch time, robust to other load on the machine
        # during some epochs (a 2-core box shared with tests or other runs), times the epoch count.
        epoch_s = statistics.median(float(row.get("epoch_time", 0.0)) for row in rows) if rows else 0.0
        stem = _stem_and_seed(folder)[0]
        if epoch_seconds and stem in epoch_seconds:
            epoch_s = epoch_seconds[stem]
        seconds = epoch_s * len(rows)
        key = "val_top1" if metric == "val" else "test_top1"
        points = [
            (int(row["epoch"]), epoch_s * int(row["epoch"]), float(row[key]))
            for row in rows
            if row.get(key) is not None
        ]
        seed = _stem_and_seed(folder)[1]
        classes = int(summary.get("num_classes") or 10)
        if is_stalled(rows, classes):
            print(
                f"[study] STALLED: {folder.name} is still at chance after epoch {STALL_EPOCH} (train loss "
                f">= {STALL_SHARE:.0%} of ln {classes})",
                flush=True,
            )
        results.setdefault(names[stem], []).append(
            {
                "seed": seed,
                "final_top1": summary["final_top1"],
                "best_top1": summary["best_top1"],
                "final_train_top1": summary.get("final_train_top1"),
                "final_val_top1": summary.get("final_val_top1"),
                "train_s": seconds,
                "epochs": len(rows),
                "points": points,
                "wall_s": summary.get("wall_time_s"),
                "test_disjoint_top1": summary.get("test_disjoint_top1"),
                "stalled": is_stalled(rows, classes),
                "diverged": is_diverged(rows),
                "takeoff": takeoff_epoch(rows, classes),
                "mixed_epochs": mixed_epochs(rows),
            }
        )
    return results


# A run whose training loss after epoch 3 is still within 2 % of ln C (uniform predictions over C classes)
# has not started to learn: a stall, flagged in every study's report.
STALL_EPOCH = 3
STALL_SHARE = 0.98


def takeoff_epoch(rows: list[dict], classes: int) -> int | None:
    """The first epoch whose training loss is below ``STALL_SHARE * ln(classes)`` (None: never)."""
    threshold = STALL_SHARE * math.log(classes)
    for row in rows:
        loss = row.get("train_loss")
        if loss is not None and math.isfinite(loss) and loss < threshold:
            return int(row["epoch"])
    return None


def is_stalled(rows: list[dict], classes: int) -> bool:
    """Still at chance after epoch :data:`STALL_EPOCH`: no takeoff by then (and the run got that far)."""
    if not any(int(row["epoch"]) >= STALL_EPOCH for row in rows):
        return False
    takeoff = takeoff_epoch(rows, classes)
    return takeoff is None or takeoff > STALL_EPOCH


def mixed_epochs(rows: list[dict]) -> int | None:
    """How many epochs mixed (the rows' ``mixing``); None for a run without a mixer or whose rows do not
    say (runs trained before the rows had it)."""
    flags = [row.get("mixing") for row in rows]
    return None if any(flag is None for flag in flags) else sum(flags)


def is_diverged(rows: list[dict]) -> bool:
    """A non-finite training loss in any epoch."""
    return any(row.get("train_loss") is not None and not math.isfinite(row["train_loss"]) for row in rows)


def stall_table(results: dict[str, list[dict]]) -> str:
    """Per method: runs still at chance after epoch 3 (:func:`is_stalled`), diverged runs, and each seed's
    takeoff epoch (the first below 98 % of ln C)."""
    # the epochs that mixed, where runs say (mixing may start late: mixup_on_epoch, mixup_on_train_top1)
    mixing = any(r.get("mixed_epochs") is not None for runs in results.values() for r in runs)
    lines = [
        f"| method | runs | stalled after epoch {STALL_EPOCH} | diverged | takeoff epoch per seed |"
        + (" mixed epochs / epochs per seed |" if mixing else ""),
        "|---|---:|---:|---:|---|" + ("---|" if mixing else ""),
    ]
    for method, runs in results.items():
        ordered = sorted(runs, key=lambda r: r["seed"])
        stalled = [r["seed"] for r in runs if r["stalled"]]
        diverged = sum(r["diverged"] for r in runs)
        takeoffs = ", ".join(
            f"{r['seed']}: {r['takeoff'] if r['takeoff'] is not None else 'never'}" for r in ordered
        )
        stalled_cell = f"{len(stalled)}" + (f" (seeds {', '.join(map(str, stalled))})" if stalled else "")
        line = f"| {method} | {len(runs)} | {stalled_cell} | {diverged} | {takeoffs} |"
        if mixing:
            cells = [
                f"{r['seed']}: "
                + ("n/a" if r.get("mixed_epochs") is None else f"{r['mixed_epochs']}/{r['epochs']}")
                for r in ordered
            ]
            line += " " + ", ".join(cells) + " |"
        lines.append(line)
    return "\n".join(lines)


def _has_validation(results: dict[str, list[dict]]) -> bool:
    """Whether every run had a validation split (``val_size``), so that its tables show it."""
    return all(r.get("final_val_top1") is not None for runs in results.values() for r in runs)


def _seeds_cell(runs: list[dict], *keys: str) -> str:
    """``"0: 84.41, 1: 83.90"``: each run's ``keys`` (joined by " / "), in seed order."""
    return ", ".join(
        f"{r['seed']}: " + " / ".join(f"{r[key]:.2f}" for key in keys)
        for r in sorted(runs, key=lambda r: r["seed"])
    )


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def table(results: dict[str, list[dict]]) -> str:
    """Equal epochs: final-epoch test top-1 (mean, sample std, per seed), best epoch, final train top-1
    on the un-augmented training images and the train/test gap (when the runs measured it)."""
    if _has_validation(results):
        return _val_table(results)
    lines = [
        "| method | runs | final top-1 mean | std | best top-1 mean | final train top-1 | train-test gap "
        "| train s/run | seeds (final top-1) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for method, runs in results.items():
        mean, spread = _mean_std([r["final_top1"] for r in runs])
        best = statistics.mean(r["best_top1"] for r in runs)
        trains = [r["final_train_top1"] for r in runs if r["final_train_top1"] is not None]
        train_cell, gap_cell = "n/a", "n/a"
        if len(trains) == len(runs):
            train_cell = f"{statistics.mean(trains):.2f}"
            gap = statistics.mean(t - r["final_top1"] for t, r in zip(trains, runs, strict=True))
            gap_cell = f"{gap:.2f}"
        seconds = statistics.mean(r["train_s"] for r in runs)
        seeds = _seeds_cell(runs, "final_top1")
        lines.append(
            f"| {method} | {len(runs)} | {mean:.2f} | {spread:.2f} | {best:.2f} | {train_cell} | {gap_cell} "
            f"| {seconds:.0f} | {seeds} |"
        )
    return "\n".join(lines)


def _val_table(results: dict[str, list[dict]]) -> str:
    """Runs with a validation split: the validation top-1 (where choices are made) beside the test top-1
    of the final weights (read once per run, after the last epoch)."""
    # The pooled scenes also test on photographs no split has seen: a robustness score, its own columns.
    disjoint = all(r.get("test_disjoint_top1") is not None for runs in results.values() for r in runs)
    extra_head, extra_rule = (" disjoint-photo test mean | std |", "---:|---:|") if disjoint else ("", "")
    lines = [
        "| method | runs | val top-1 mean | val std | test top-1 mean | test std |"
        + extra_head
        + " final train top-1 | train s/run | seeds (val / test top-1) |",
        "|---|---:|---:|---:|---:|---:|" + extra_rule + "---:|---:|---|",
    ]
    for method, runs in results.items():
        val, val_spread = _mean_std([r["final_val_top1"] for r in runs])
        test, test_spread = _mean_std([r["final_top1"] for r in runs])
        extra = ""
        if disjoint:
            other, other_spread = _mean_std([r["test_disjoint_top1"] for r in runs])
            extra = f" {other:.2f} | {other_spread:.2f} |"
        trains = [r["final_train_top1"] for r in runs if r["final_train_top1"] is not None]
        train_cell = f"{statistics.mean(trains):.2f}" if len(trains) == len(runs) else "n/a"
        seconds = statistics.mean(r["train_s"] for r in runs)
        seeds = _seeds_cell(runs, "final_val_top1", "final_top1")
        lines.append(
            f"| {method} | {len(runs)} | {val:.2f} | {val_spread:.2f} | {test:.2f} | {test_spread:.2f} |"
            f"{extra} {train_cell} | {seconds:.0f} | {seeds} |"
        )
    return "\n".join(lines)


def selection(results: dict[str, list[dict]], prefix: str = "sage") -> str:
    """The choice made on validation: the method with the best mean validation top-1 among those whose
    name starts with ``prefix`` (the SAGE settings), and how it compares on test with the best of the
    others. Empty when the runs have no validation split."""
    if not _has_validation(results):
        return ""
    val = {m: statistics.mean(r["final_val_top1"] for r in runs) for m, runs in results.items()}
    test = {m: _mean_std([r["final_top1"] for r in runs]) for m, runs in results.items()}
    candidates = [m for m in val if m.startswith(prefix)]
    others = [m for m in val if not m.startswith(prefix)]
    if not candidates:
        return ""
    chosen = max(candidates, key=val.get)
    text = (
        f"Chosen on validation among the {prefix} settings: **{chosen}** (val {val[chosen]:.2f}); its test "
        f"top-1 {test[chosen][0]:.2f} ± {test[chosen][1]:.2f}."
    )
    if others:
        rival = max(others, key=val.get)
        text += (
            f" Best other method on validation: {rival} (val {val[rival]:.2f}, test "
            f"{test[rival][0]:.2f} ± {test[rival][1]:.2f})."
        )
    return text


def top1_within(run: dict, budget_s: float) -> tuple[float, int] | None:
    """(test top-1, epoch) of the last evaluation whose cumulative training time fits ``budget_s``."""
    fitting = [(top1, epoch) for epoch, seconds, top1 in run["points"] if seconds <= budget_s * (1 + 1e-9)]
    return fitting[-1] if fitting else None


def budget_table(results: dict[str, list[dict]], reference: str) -> str:
    """Equal wall-clock: each method's test top-1 at the training time ``reference`` needs for its whole
    schedule (mean over its seeds), i.e. what a user with that budget gets from each method."""
    if reference not in results:
        raise ValueError(f"budget reference {reference!r} has no finished runs (methods: {sorted(results)})")
    budget = statistics.mean(r["train_s"] for r in results[reference])
    lines = [
        f"Budget: {budget:.0f} training seconds per run, {reference}'s whole schedule (mean of its seeds); "
        "a method's figure is its last test evaluation within the budget.",
        "",
        "| method | cost per epoch vs " + reference + " | epochs within budget | top-1 at budget mean | std "
        "| seeds (top-1 at budget) |",
        "|---|---:|---:|---:|---:|---|",
    ]
    per_epoch_ref = statistics.mean(r["train_s"] / r["epochs"] for r in results[reference])
    for method, runs in results.items():
        cost = statistics.mean(r["train_s"] / r["epochs"] for r in runs) / per_epoch_ref
        reached = {r["seed"]: top1_within(r, budget) for r in runs}
        if any(v is None for v in reached.values()):
            lines.append(f"| {method} | {cost:.2f}x | 0 | n/a | n/a | no evaluation within the budget |")
            continue
        mean, spread = _mean_std([v[0] for v in reached.values()])
        epochs = statistics.mean(v[1] for v in reached.values())
        seeds = ", ".join(f"{seed}: {v[0]:.2f}" for seed, v in sorted(reached.items()))
        lines.append(f"| {method} | {cost:.2f}x | {epochs:.0f} | {mean:.2f} | {spread:.2f} | {seeds} |")
    return "\n".join(lines)


def budget_epochs(
    epoch_seconds: dict[str, float], reference: str, epochs: int, tolerance: float = 0.05
) -> dict[str, int]:
    """Epochs of each config's shortened schedule within ``reference``'s whole-schedule time: ``floor(epochs
    * t_ref / t)`` for configs that cost more than ``1 + tolerance`` of the reference per epoch (the others
    keep their full schedule and are left out). Keys are config stems; ``reference`` a stem too."""
    if reference not in epoch_seconds:
        raise ValueError(
            f"budget reference {reference!r} has no epoch time (configs: {sorted(epoch_seconds)})"
        )
    budget = epoch_seconds[reference] * epochs
    return {
        stem: max(1, int(budget // seconds))
        for stem, seconds in epoch_seconds.items()
        if seconds > epoch_seconds[reference] * (1 + tolerance)
    }


def extended_epochs(
    epoch_seconds: dict[str, float], target: str, epochs: int, stems: list[str], tolerance: float = 0.05
) -> dict[str, int]:
    """Equal cost the other way: epochs of each of ``stems``' own schedules within ``target``'s
    whole-schedule time, ``floor(epochs * t_target / t)``, for the stems that cost less than
    ``1 - tolerance`` of the target per epoch (what a user with the costlier method's budget could run
    instead). Keys are config stems."""
    if target not in epoch_seconds:
        raise ValueError(f"--extend-to {target!r} has no epoch time (configs: {sorted(epoch_seconds)})")
    budget = epoch_seconds[target] * epochs
    return {
        stem: int(budget // epoch_seconds[stem])
        for stem in stems
        if epoch_seconds[stem] < epoch_seconds[target] * (1 - tolerance)
    }


# Two-sided 95 % quantiles of Student's t for 1-30 degrees of freedom (any table of t gives them).
_T975 = (
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
    2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
)  # fmt: skip


def t_quantile_975(dof: int) -> float:
    """The 97.5 % quantile of Student's t with ``dof`` degrees of freedom (1.96 beyond 30, within 2 %)."""
    if dof < 1:
        raise ValueError(f"dof must be >= 1, got {dof}")
    return _T975[dof - 1] if dof <= len(_T975) else 1.960


def paired_difference(anchor: list[dict], rival: list[dict], key: str = "final_top1") -> dict | None:
    """``anchor`` minus ``rival`` seed by seed on ``key``: {"seeds", "diffs", "mean", "low", "high"} with a
    95 % t interval over the seeds both have (None with fewer than two)."""
    theirs = {r["seed"]: r[key] for r in rival}
    pairs = sorted((r["seed"], r[key] - theirs[r["seed"]]) for r in anchor if r["seed"] in theirs)
    if len(pairs) < 2:
        return None
    diffs = [d for _, d in pairs]
    mean, spread = _mean_std(diffs)
    half = t_quantile_975(len(diffs) - 1) * spread / len(diffs) ** 0.5
    return {
        "seeds": [s for s, _ in pairs],
        "diffs": diffs,
        "mean": mean,
        "low": mean - half,
        "high": mean + half,
    }


def paired_table(results: dict[str, list[dict]], anchor: str) -> str:
    """``anchor`` minus each other method, paired by seed: mean difference of test top-1 (and of
    validation top-1 where the runs have it) with its 95 % t interval, and the per-seed differences.
    Empty when ``anchor`` has no runs."""
    if anchor not in results:
        return ""
    with_val = _has_validation(results)
    lines = [
        f"| {anchor} minus | seeds | "
        + ("val diff (95 % interval) | " if with_val else "")
        + "test diff | 95 % interval | beyond the interval | per seed (test) |",
        "|---|---:|" + ("---:|" if with_val else "") + "---:|---:|---|---|",
    ]
    for method, runs in results.items():
        if method == anchor:
            continue
        test = paired_difference(results[anchor], runs)
        if test is None:
            continue
        val_cell = ""
        if with_val:
            val = paired_difference(results[anchor], runs, "final_val_top1")
            val_cell = f"{val['mean']:+.2f} ({val['low']:+.2f}, {val['high']:+.2f}) | "
        verdict = "better" if test["low"] > 0 else "worse" if test["high"] < 0 else "no"
        seeds = ", ".join(f"{s}: {d:+.2f}" for s, d in zip(test["seeds"], test["diffs"], strict=True))
        lines.append(
            f"| {method} | {len(test['diffs'])} | {val_cell}{test['mean']:+.2f} "
            f"| ({test['low']:+.2f}, {test['high']:+.2f}) | {verdict} | {seeds} |"
        )
    return "\n".join(lines) if len(lines) > 2 else ""


def trained_budget_table(
    full: dict[str, list[dict]], shortened: dict[str, list[dict]], costs: dict[str, float], reference: str
) -> str:
    """Equal wall-clock with every schedule trained to completion: a method that costs more per epoch
    than ``reference`` trains its own cosine schedule over the epochs that fit in the reference's
    whole-schedule time (``shortened``); the others keep their full runs. Final weights' validation and
    test top-1 (mean, sample std, per seed), the number of runs, and the final train top-1 on the
    un-augmented training images (n/a unless every run measured it)."""
    with_val = _has_validation(full)
    lines = [
        "| method | cost per epoch vs "
        + reference
        + " | epochs trained | runs | "
        + ("val top-1 mean | " if with_val else "")
        + "test top-1 mean | std | final train top-1 | seeds (test top-1) |",
        "|---|---:|---:|---:|" + ("---:|" if with_val else "") + "---:|---:|---:|---|",
    ]
    for method, runs in trained_results(full, shortened).items():
        test, spread = _mean_std([r["final_top1"] for r in runs])
        epochs = statistics.mean(r["epochs"] for r in runs)
        val_cell = f"{statistics.mean(r['final_val_top1'] for r in runs):.2f} | " if with_val else ""
        trains = [r["final_train_top1"] for r in runs if r["final_train_top1"] is not None]
        train_cell = f"{statistics.mean(trains):.2f}" if len(trains) == len(runs) else "n/a"
        seeds = _seeds_cell(runs, "final_top1")
        lines.append(
            f"| {method} | {costs.get(method, 1.0):.2f}x | {epochs:.0f} | {len(runs)} | {val_cell}{test:.2f} "
            f"| {spread:.2f} | {train_cell} | {seeds} |"
        )
    return "\n".join(lines)


def trained_results(full: dict[str, list[dict]], shortened: dict[str, list[dict]]) -> dict[str, list[dict]]:
    """The runs a user with the reference's budget gets: the shortened runs where a method has them."""
    return {method: shortened.get(method, runs) for method, runs in full.items()}


def budget_label(budget: float) -> str:
    """``0.5`` -> ``"0.5"``, ``2.0`` -> ``"2"``: a budget's name in the plan, its folder (``b<label>``) and
    the report."""
    return f"{budget:g}"


def frontier_epochs(
    seconds: dict[str, float], reference: str, reference_epochs: int, budgets: list[float]
) -> dict[str, dict[str, int]]:
    """The accuracy-against-compute frontier's schedules: for each budget ``b`` (a multiple of
    ``reference``'s whole-schedule training time, ``reference_epochs`` epochs of ``seconds[reference]``)
    and each config stem, the epochs of its own schedule that take that time,
    ``max(1, round(b * E_ref * t_ref / t))``, rounded half up. Returns {budget label: {stem: epochs}}."""
    if reference not in seconds:
        raise ValueError(f"budget reference {reference!r} has no epoch time (configs: {sorted(seconds)})")
    for budget in budgets:
        if not (isinstance(budget, (int, float)) and math.isfinite(budget) and budget > 0):
            raise ValueError(f"--frontier budgets must be positive numbers, got {budget!r}")
    for stem, value in seconds.items():
        if not (math.isfinite(value) and value > 0):
            raise ValueError(f"seconds per epoch of {stem!r} must be positive, got {value!r}")
    total = reference_epochs * seconds[reference]
    return {
        budget_label(budget): {
            stem: max(1, math.floor(budget * total / value + 0.5)) for stem, value in seconds.items()
        }
        for budget in budgets
    }


def holm(pvalues: list[float]) -> list[float]:
    """Holm's step-down adjustment of a family of p-values, in their order: the i-th smallest becomes
    ``max over j <= i of min(1, (m - j + 1) * p_(j))`` (m the family's size), so that rejecting every
    adjusted p below alpha keeps the family-wise error rate at alpha.
    ``[0.01, 0.04, 0.03]`` -> ``[0.03, 0.06, 0.06]``."""
    for value in pvalues:
        if not (isinstance(value, (int, float)) and 0.0 <= value <= 1.0):
            raise ValueError(f"p-values must lie in [0, 1], got {value!r}")
    order = sorted(range(len(pvalues)), key=lambda i: pvalues[i])
    adjusted = [0.0] * len(pvalues)
    running = 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (len(pvalues) - rank) * pvalues[index]))
        adjusted[index] = running
    return adjusted


def _scipy_stats():
    try:
        from scipy import stats
    except ImportError as error:  # pragma: no cover - scipy comes with the test extra
        raise ImportError(
            "the frontier's paired t-tests need scipy: pip install scipy (or pip install 'timm-sage[test]')"
        ) from error
    return stats


def paired_test(anchor: list[dict], rival: list[dict], key: str = "final_top1") -> dict | None:
    """``anchor`` minus ``rival`` seed by seed on ``key``, over the seeds both have, with the paired
    t-test: {"seeds", "diffs", "mean", "median", "low", "high", "p"}; ``low``/``high`` the 95 % t interval
    ``mean ± t(0.975, n - 1) · sd / √n`` and ``p`` the two-sided p-value of the mean difference being
    zero (scipy's Student t). Differences that are all equal have no spread: p is 0 when they are not
    zero and 1 when they are (the limits of the test), never NaN. None with fewer than two seeds."""
    stats = _scipy_stats()
    theirs = {r["seed"]: r[key] for r in rival}
    pairs = sorted((r["seed"], r[key] - theirs[r["seed"]]) for r in anchor if r["seed"] in theirs)
    if len(pairs) < 2:
        return None
    diffs = [d for _, d in pairs]
    count = len(diffs)
    mean, spread = _mean_std(diffs)
    error = spread / count**0.5
    half = float(stats.t.ppf(0.975, count - 1)) * error
    if error > 0:
        p = float(2 * stats.t.sf(abs(mean) / error, count - 1))
    else:
        p = 0.0 if mean != 0 else 1.0
    return {
        "seeds": [s for s, _ in pairs],
        "diffs": diffs,
        "mean": mean,
        "median": statistics.median(diffs),
        "low": mean - half,
        "high": mean + half,
        "p": p,
    }


def frontier_best(results: dict[str, list[dict]]) -> tuple[str, str] | None:
    """The method a user would pick at one budget: the best mean final validation top-1 (the best mean
    test top-1 when the runs have no validation split, said in the second item: "val" or "test"). None
    without runs."""
    results = {method: runs for method, runs in results.items() if runs}
    if not results:
        return None
    key, on = ("final_val_top1", "val") if _has_validation(results) else ("final_top1", "test")
    best = max(results, key=lambda m: statistics.mean(r[key] for r in results[m]))
    return best, on


def _sorted_budgets(frontier: dict[str, dict[str, list[dict]]]) -> list[str]:
    return sorted(frontier, key=float)


def frontier_table(frontier: dict[str, dict[str, list[dict]]]) -> str:
    """One row per method, one group of columns per budget ({budget label: {method: runs}}): epochs
    trained, test top-1 mean ± sample std (runs), median, and mean training seconds per run; "n/a" where
    a method has no finished run at a budget."""
    budgets = _sorted_budgets(frontier)
    methods = list(dict.fromkeys(m for label in budgets for m in frontier[label]))
    head = "| method |" + "".join(
        f" {b}x epochs | {b}x test top-1 (runs) | {b}x median | {b}x train s |" for b in budgets
    )
    lines = [head, "|---|" + "---:|---:|---:|---:|" * len(budgets)]
    for method in methods:
        cells = []
        for label in budgets:
            runs = frontier[label].get(method, [])
            if not runs:
                cells.append(" n/a | n/a | n/a | n/a |")
                continue
            tests = [r["final_top1"] for r in runs]
            mean, spread = _mean_std(tests)
            epochs = round(statistics.mean(r["epochs"] for r in runs))
            seconds = statistics.mean(r["train_s"] for r in runs)
            cells.append(
                f" {epochs} | {mean:.2f} ± {spread:.2f} ({len(runs)}) | {statistics.median(tests):.2f} "
                f"| {seconds:.0f} |"
            )
        lines.append(f"| {method} |" + "".join(cells))
    return "\n".join(lines)


def frontier_best_table(frontier: dict[str, dict[str, list[dict]]]) -> str:
    """Per budget: the method best on validation (:func:`frontier_best`), its validation and test top-1
    (mean ± std, median) and the runs it has."""
    lines = [
        "| budget | best on validation | runs | val top-1 mean | test top-1 mean ± std | test median |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for label in _sorted_budgets(frontier):
        chosen = frontier_best(frontier[label])
        if chosen is None:
            lines.append(f"| {label}x | no finished runs | 0 | n/a | n/a | n/a |")
            continue
        best, on = chosen
        runs = frontier[label][best]
        tests = [r["final_top1"] for r in runs]
        mean, spread = _mean_std(tests)
        val = statistics.mean(r["final_val_top1"] for r in runs) if on == "val" else None
        name = best if on == "val" else f"{best} (no validation split: chosen on test)"
        val_cell = f"{val:.2f}" if val is not None else "n/a"
        lines.append(
            f"| {label}x | {name} | {len(runs)} | {val_cell} | {mean:.2f} ± {spread:.2f} "
            f"| {statistics.median(tests):.2f} |"
        )
    return "\n".join(lines)


def _with_holm(family: list[dict]) -> list[dict]:
    """``family`` with each item's ``holm``: its ``p`` adjusted by :func:`holm` over the whole family."""
    for item, adjusted in zip(family, holm([item["p"] for item in family]), strict=True):
        item["holm"] = adjusted
    return family


def _paired_cells(item: dict) -> str:
    """A paired comparison's table cells: seeds, mean and median difference, 95 % interval, p, Holm p,
    the difference per seed."""
    seeds = ", ".join(f"{s}: {d:+.2f}" for s, d in zip(item["seeds"], item["diffs"], strict=True))
    return (
        f"{len(item['diffs'])} | {item['mean']:+.2f} | {item['median']:+.2f} "
        f"| ({item['low']:+.2f}, {item['high']:+.2f}) | {_p_cell(item['p'])} | {_p_cell(item['holm'])} "
        f"| {seeds} |"
    )


def frontier_comparisons(frontier: dict[str, dict[str, list[dict]]]) -> list[dict]:
    """The family of comparisons of the frontier: at each budget, the method best on validation minus
    each other method, paired by seed on test top-1 (:func:`paired_test`), with ``holm`` the p-value
    adjusted by :func:`holm` over the whole family (every budget, every rival). Each item: ``budget``,
    ``anchor``, ``rival`` and :func:`paired_test`'s keys."""
    family = []
    for label in _sorted_budgets(frontier):
        chosen = frontier_best(frontier[label])
        if chosen is None:
            continue
        anchor = chosen[0]
        for rival, runs in frontier[label].items():
            if rival == anchor or not runs:
                continue
            test = paired_test(frontier[label][anchor], runs)
            if test is not None:
                family.append({"budget": label, "anchor": anchor, "rival": rival, **test})
    return _with_holm(family)


def _p_cell(p: float) -> str:
    """Four decimals; small p-values in scientific notation (an exact 0, from no spread, as 0)."""
    return "0" if p == 0 else f"{p:.4f}" if p >= 1e-4 else f"{p:.1e}"


def frontier_paired_tables(frontier: dict[str, dict[str, list[dict]]]) -> str:
    """One table per budget of :func:`frontier_comparisons`: the best-on-validation method minus each
    other method, paired by seed: mean and median difference of test top-1, the 95 % t interval, the
    paired t-test's p-value and the Holm-adjusted p-value over the family of all the budgets'
    comparisons. Empty when no comparison has two shared seeds."""
    family = frontier_comparisons(frontier)
    if not family:
        return ""
    parts = [
        f"Family for Holm's correction: the {len(family)} comparisons below (at every budget, the method "
        "best on validation minus each other method with at least two shared seeds); test top-1 points; "
        "interval: mean ± t(0.975, n-1) · sd / √n; p: two-sided paired t-test."
    ]
    for label in _sorted_budgets(frontier):
        rows = [item for item in family if item["budget"] == label]
        if not rows:
            continue
        lines = [
            f"| {label}x: {rows[0]['anchor']} minus | seeds | mean diff | median diff | 95 % interval "
            "| p (paired t) | Holm p | per seed |",
            "|---|---:|---:|---:|---:|---:|---:|---|",
        ]
        for item in rows:
            lines.append(f"| {item['rival']} | " + _paired_cells(item))
        parts.append("\n".join(lines))
    return "\n\n".join(parts)


def parse_contrasts(values: list[str] | None) -> list[tuple[str, str]]:
    """``--contrast`` items ``"A:B"`` (A minus B) -> ``[(A, B), ...]``, in order, repeats dropped."""
    pairs: list[tuple[str, str]] = []
    for value in values or []:
        parts = value.split(":") if isinstance(value, str) else []
        if len(parts) != 2 or not all(part.strip() for part in parts):
            raise ValueError(f"--contrast takes METHOD:METHOD (the first minus the second), got {value!r}")
        first, second = (part.strip() for part in parts)
        if first == second:
            raise ValueError(f"--contrast {value!r} compares a method with itself")
        if (first, second) not in pairs:
            pairs.append((first, second))
    return pairs


def frontier_contrasts(
    frontier: dict[str, dict[str, list[dict]]], contrasts: list[tuple[str, str]]
) -> list[dict]:
    """The contrasts a study names before it runs (``--contrast A:B``, e.g. a method minus its ablation):
    at every budget where A and B share two finished seeds, A minus B paired by seed on test top-1
    (:func:`paired_test`), with ``holm`` adjusted by :func:`holm` over this family alone (a family of its
    own, apart from the best-on-validation family of :func:`frontier_comparisons`). Each
    item: ``budget``, ``anchor`` (A), ``rival`` (B) and :func:`paired_test`'s keys; budget-major order."""
    family = []
    for label in _sorted_budgets(frontier):
        for anchor, rival in contrasts:
            first, second = frontier[label].get(anchor, []), frontier[label].get(rival, [])
            test = paired_test(first, second) if first and second else None
            if test is not None:
                family.append({"budget": label, "anchor": anchor, "rival": rival, **test})
    return _with_holm(family)


def frontier_contrast_table(
    frontier: dict[str, dict[str, list[dict]]], contrasts: list[tuple[str, str]]
) -> str:
    """:func:`frontier_contrasts` as one table, a row per contrast and budget: seeds, mean and median
    difference of test top-1, the 95 % t interval, the paired t-test's p and its Holm-adjusted p over
    the named contrasts. Empty when no contrast has two shared seeds at any budget."""
    family = frontier_contrasts(frontier, contrasts)
    if not family:
        return ""
    lines = [
        f"Family for Holm's correction: the {len(family)} contrasts below (named with "
        "`--contrast`), apart from the family above; test top-1 points, paired by seed.",
        "",
        "| contrast | budget | seeds | mean diff | median diff | 95 % interval | p (paired t) | Holm p "
        "| per seed |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for item in sorted(
        family, key=lambda i: (contrasts.index((i["anchor"], i["rival"])), float(i["budget"]))
    ):
        lines.append(f"| {item['anchor']} minus {item['rival']} | {item['budget']}x | " + _paired_cells(item))
    return "\n".join(lines)


def frontier_section(
    frontier: dict[str, dict[str, list[dict]]],
    plan: dict,
    reference_method: str,
    contrasts: tuple[tuple[str, str], ...] | list[tuple[str, str]] = (),
) -> str:
    """The report's frontier part: the plan's budgets in seconds, :func:`frontier_table`,
    :func:`frontier_best_table`, :func:`frontier_paired_tables`, the named ``contrasts``
    (:func:`frontier_contrast_table`, when given) and a :func:`stall_table` with a row per method and
    budget."""
    reference_total = plan["reference_epochs"] * plan["seconds"][plan["reference"]]
    budgets = ", ".join(
        f"{label}x = {float(label) * reference_total:.0f} s" for label in _sorted_budgets(frontier)
    )
    clock = "measured with the configs taken in turn" if plan.get("timed") else "from the study's own runs"
    text = (
        f"**Accuracy against training compute** (budgets: multiples of {reference_method}'s whole schedule, "
        f"{plan['reference_epochs']} epochs; {budgets}; seconds per epoch {clock}). Each method trains its "
        "own schedule over max(1, round(budget / its seconds per epoch)) epochs, to completion; where that "
        "is its own schedule, the equal-epoch run is the point. Test top-1 of the final weights; training "
        "seconds per run (evaluation excluded).\n\n" + frontier_table(frontier)
    )
    text += "\n\n**Best on validation at each budget**\n\n" + frontier_best_table(frontier)
    paired = frontier_paired_tables(frontier)
    text += "\n\n**Paired by seed at each budget**\n\n" + (
        paired or "No comparison: no two methods share two finished seeds at a budget."
    )
    if contrasts:
        named = frontier_contrast_table(frontier, list(contrasts))
        text += "\n\n**Named contrasts at each budget**\n\n" + (
            named or "No contrast: no named pair shares two finished seeds at a budget."
        )
    # One stall table for the whole frontier: a row per method and budget.
    rows = {
        f"{method} at {label}x": runs
        for label in _sorted_budgets(frontier)
        for method, runs in frontier[label].items()
        if runs
    }
    if rows:
        text += (
            f"\n\n**Stalls at each budget** (runs still at chance after epoch {STALL_EPOCH}; diverged runs)"
            "\n\n" + stall_table(rows)
        )
    return text


def plot_curves(
    results: dict[str, list[dict]], path: Path, title: str = "Fashion-MNIST", metric: str = "test"
) -> None:
    """Two panels: mean ``metric`` top-1 ("test" or "val"; band: min to max over seeds) against the
    epoch, and against the cumulative training seconds of the full schedules (read mid-schedule). Up to
    ten methods take the default colours; more get a colour map and alternate line styles, so that no
    two share a look."""
    from timm_sage.tools.plots import _pyplot, save_figure_atomic

    plt = _pyplot()
    label = "validation top-1 (%)" if metric == "val" else "test top-1 (%)"
    figure, (by_epoch, by_time) = plt.subplots(1, 2, figsize=(12, 4.6))
    many = len(results) > 10
    colours = plt.get_cmap("tab20").colors if many else [None] * len(results)
    for index, (method, runs) in enumerate(results.items()):
        length = min(len(r["points"]) for r in runs)
        columns = [[r["points"][i] for r in runs] for i in range(length)]
        epochs = [c[0][0] for c in columns]
        seconds = [statistics.mean(p[1] for p in c) for c in columns]
        mean = [statistics.mean(p[2] for p in c) for c in columns]
        low = [min(p[2] for p in c) for c in columns]
        high = [max(p[2] for p in c) for c in columns]
        style = {"color": colours[index % len(colours)], "linestyle": "--" if many and index % 2 else "-"}
        (line,) = by_epoch.plot(epochs, mean, label=f"{method} (n={len(runs)})", **style)
        band = 0.08 if many else 0.15
        by_epoch.fill_between(epochs, low, high, alpha=band, color=line.get_color())
        by_time.plot(seconds, mean, label=method, color=line.get_color(), linestyle=line.get_linestyle())
        by_time.fill_between(seconds, low, high, alpha=band, color=line.get_color())
    by_epoch.set(xlabel="epoch", ylabel=label, title=f"{title}\nequal epochs")
    by_time.set(xlabel="cumulative training seconds of the full schedule (mean over seeds)", ylabel=label,
                title=f"{title}\nequal wall-clock, read mid-schedule")  # fmt: skip
    for axes in (by_epoch, by_time):
        axes.grid(alpha=0.3)
    by_epoch.legend(fontsize=7, ncol=2 if many else 1)
    figure.tight_layout()
    save_figure_atomic(figure, path)
    plt.close(figure)


def plot_cost_accuracy(
    schedules: dict[str, list[list[dict]]], path: Path, title: str = "Fashion-MNIST"
) -> dict[str, list[tuple[float, ...]]]:
    """Accuracy against cost: for each method, one point per schedule it trained (``schedules[method]``:
    lists of runs, e.g. the equal-epoch runs, the shortened and the lengthened ones), at the mean training
    seconds of a run, with the mean final validation top-1 (left, where the runs have it) and test top-1
    (right) and a bar of one sample std over seeds; a method's points are joined in order of cost and
    labelled with their epochs. A user with a budget reads the methods on one vertical line.

    Returns what was drawn: {method: [(seconds, epochs, mean of each panel's top-1...)]} in order of cost."""
    from timm_sage.tools.plots import _pyplot, save_figure_atomic

    plt = _pyplot()
    keys = [("final_val_top1", "validation top-1 (%)"), ("final_top1", "test top-1 (%)")]
    if not all(
        r.get("final_val_top1") is not None for sets in schedules.values() for runs in sets for r in runs
    ):
        keys = keys[1:]
    figure, panels = plt.subplots(1, len(keys), figsize=(6.2 * len(keys), 4.8), squeeze=False)
    markers = "osD^v<>pP*X"
    drawn: dict[str, list[tuple[float, ...]]] = {}
    for index, (method, sets) in enumerate(schedules.items()):
        sets = sorted(
            (runs for runs in sets if runs), key=lambda runs: statistics.mean(r["train_s"] for r in runs)
        )
        seconds = [statistics.mean(r["train_s"] for r in runs) for runs in sets]
        epochs = [round(statistics.mean(r["epochs"] for r in runs)) for runs in sets]
        means = [[statistics.mean(r[key] for r in runs) for key, _ in keys] for runs in sets]
        drawn[method] = [(x, e, *m) for x, e, m in zip(seconds, epochs, means, strict=True)]
        for axes, (key, _) in zip(panels[0], keys, strict=True):
            stats = [_mean_std([r[key] for r in runs]) for runs in sets]
            axes.errorbar(
                seconds, [m for m, _ in stats], yerr=[sd for _, sd in stats], label=method,
                marker=markers[index % len(markers)], color=f"C{index % 10}", capsize=3, markersize=5,
                linestyle="-" if index < 10 else "--",
            )  # fmt: skip
            for x, (mean, _), count in zip(seconds, stats, epochs, strict=True):
                axes.annotate(f"{count}", (x, mean), fontsize=6,
                              xytext=(4, 3), textcoords="offset points", color=f"C{index % 10}")  # fmt: skip
    for axes, (_, label) in zip(panels[0], keys, strict=True):
        axes.set(xlabel="training seconds per run (measured seconds per epoch x epochs)", ylabel=label,
                 title=f"{title}\nfinal accuracy against training cost (numbers: epochs)")  # fmt: skip
        axes.grid(alpha=0.3)
    panels[0][0].legend(fontsize=7)
    figure.tight_layout()
    save_figure_atomic(figure, path)
    plt.close(figure)
    return drawn


def plot_frontier(
    frontier: dict[str, dict[str, list[dict]]], path: Path, title: str = "Fashion-MNIST"
) -> dict[str, list[tuple[float, float, float]]]:
    """The frontier ({budget label: {method: runs}}): each method's test top-1 (mean over seeds, bar: one
    sample std; each seed a faint point at its own training seconds) against its mean training seconds
    per run, one line per method through its budgets in order of cost, each point labelled with its
    budget; the x axis in powers of two.

    Returns what was drawn: {method: [(mean seconds, mean test top-1, std)]} in order of cost."""
    from timm_sage.tools.plots import _pyplot, save_figure_atomic

    plt = _pyplot()
    from matplotlib.ticker import FuncFormatter

    figure, axes = plt.subplots(figsize=(7.6, 5.0))
    markers = "osD^v<>pP*X"
    methods = list(dict.fromkeys(m for label in _sorted_budgets(frontier) for m in frontier[label]))
    drawn: dict[str, list[tuple[float, float, float]]] = {}
    for index, method in enumerate(methods):
        colour = f"C{index % 10}"
        points = []
        for label in _sorted_budgets(frontier):
            runs = frontier[label].get(method, [])
            if not runs:
                continue
            mean, spread = _mean_std([r["final_top1"] for r in runs])
            points.append((statistics.mean(r["train_s"] for r in runs), mean, spread, label, runs))
        points.sort(key=lambda point: point[0])
        if not points:
            continue
        drawn[method] = [(x, mean, spread) for x, mean, spread, _, _ in points]
        axes.errorbar(
            [p[0] for p in points], [p[1] for p in points], yerr=[p[2] for p in points], label=method,
            marker=markers[index % len(markers)], color=colour, capsize=3, markersize=5,
            linestyle="-" if index < 10 else "--",
        )  # fmt: skip
        for *_, runs in points:
            axes.scatter(
                [r["train_s"] for r in runs], [r["final_top1"] for r in runs], s=12, color=colour,
                alpha=0.35, linewidths=0,
            )  # fmt: skip
        for x, mean, _, label, _ in points:
            axes.annotate(f"{label}x", (x, mean), fontsize=6, xytext=(4, 3), textcoords="offset points",
                          color=colour)  # fmt: skip
    axes.set_xscale("log", base=2)
    # Seconds written out (128, 256, ...), not as powers of two.
    axes.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    axes.set(
        xlabel="training seconds per run (log2; mean over seeds)", ylabel="test top-1 (%)",
        title=f"{title}\ntest top-1 against training compute (labels: budget; faint: each seed)",
    )  # fmt: skip
    axes.grid(alpha=0.3, which="both")
    axes.legend(fontsize=7)
    figure.tight_layout()
    save_figure_atomic(figure, path)
    plt.close(figure)
    return drawn


def _endless_batches(loader):
    """The loader's training batches, epoch after epoch."""
    for epoch in itertools.count():
        yield from loader.batches(epoch)


def time_epochs(configs: list[Path], rounds: int, output: Path, extra: list[str]) -> dict[str, float]:
    """Seconds per training epoch of each config, measured in one process with the configs taken in
    turn, step by step: every config is built once and trains two warm-up steps, then ``rounds`` rounds
    in which each config trains one step on its next batch, the order reversed every other round. A
    config's figure is the median of its step times times its steps per epoch (evaluation excluded).
    Taking the configs in turn at the grain of one step makes a machine that speeds up or slows down
    (other work on a shared box) shift them alike, which separate runs do not (measured on this
    project's 2-core box: one vanilla scenes run 1.6 s per epoch, another 4.4 s).
    Returns ``{config stem: seconds}``; the trainers write nothing but their folders under
    ``output/_timing``, replaced each time."""
    import time

    from timm_sage.train.config import load_config
    from timm_sage.train.session import Trainer

    if rounds < 3:
        raise ValueError(f"--time-steps must be >= 3, got {rounds}")
    trainers, batches = {}, {}
    for config in configs:
        folder = output / "_timing" / config.stem
        if folder.exists():
            shutil.rmtree(folder)
        cfg = load_config(config, [*extra, "--output", str(folder.parent), "--experiment", config.stem])
        trainer = Trainer(cfg, progress=False)
        trainer.model.train()
        trainers[config.stem] = trainer
        batches[config.stem] = _endless_batches(trainer.train_loader)
    times: dict[str, list[float]] = {stem: [] for stem in trainers}
    order = list(trainers)
    for step in range(rounds + 2):
        for stem in order if step % 2 == 0 else order[::-1]:
            x, y = next(batches[stem])
            start = time.perf_counter()
            trainers[stem].train_one_step(x, y)
            if step >= 2:  # two warm-up steps
                times[stem].append(time.perf_counter() - start)
    return {
        stem: statistics.median(values) * len(trainers[stem].train_loader) for stem, values in times.items()
    }


def override_flags(assignments: list[str]) -> list[str]:
    """`["data_dir=/x", "epochs=5"]` -> `["--data_dir", "/x", "--epochs", "5"]`, flags for timm-sage train."""
    flags = []
    for item in assignments:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--set expects KEY=VALUE, got {item!r}")
        flags += [f"--{key.strip()}", value]
    return flags


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "configs", nargs="+", type=Path,
        help="training configs (YAML files or names, as timm-sage configs lists them), one per method",
    )  # fmt: skip
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--output", type=Path, default=Path("runs/study"))
    parser.add_argument("--report", type=Path, default=None, help="Markdown file to write the table into")
    parser.add_argument(
        "--figure", type=Path, default=None, help="PNG of test accuracy per epoch and per training second"
    )
    parser.add_argument(
        "--cost-figure", type=Path, default=None, metavar="PNG",
        help="PNG of each method's final validation and test top-1 against its training seconds, one point "
        "per schedule it trained (equal epochs, --equal-time, --extend-to)",
    )  # fmt: skip
    parser.add_argument(
        "--section", default=SECTION, help="name of the generated section in --report (default: study)"
    )
    parser.add_argument("--title", default="Fashion-MNIST", help="title of the figure's panels")
    parser.add_argument(
        "--time-steps",
        type=int,
        default=None,
        metavar="N",
        help="measure each config's seconds per epoch in one process, the configs taken in turn step by step "
        "for N rounds, and use them for the wall-clock view and the --equal-time plan (instead of the "
        "study runs' own epoch times)",
    )
    parser.add_argument(
        "--budget-reference",
        default="vanilla",
        help="method whose whole-schedule training time is the equal wall-clock budget (default vanilla)",
    )
    parser.add_argument("--report-only", action="store_true", help="do not train, only report finished runs")
    parser.add_argument(
        "--skip-equal-epochs", action="store_true",
        help="train only the planned schedules (--frontier, --equal-time, --extend-to), not every "
        "config's own schedule first; a --frontier point that is a config's own schedule is trained all the "
        "same, and the equal-epoch runs that exist are reported",
    )  # fmt: skip
    parser.add_argument(
        "--select-on", choices=("test", "val"), default="test",
        help="val: curves, the figure and the choice among SAGE settings read the validation split (configs "
        "with val_size); the test top-1 of the final weights is reported beside it (default test)",
    )  # fmt: skip
    parser.add_argument(
        "--equal-time", action="store_true",
        help="equal wall-clock with trained schedules: each config that costs more per epoch than the "
        "reference trains its own schedule over the epochs that fit in the reference's time (runs under "
        "OUTPUT/budget; the plan is kept in OUTPUT/budget/plan.json)",
    )  # fmt: skip
    parser.add_argument(
        "--replan", action="store_true",
        help="with --equal-time, --extend-to or --frontier: recompute their plan.json",
    )  # fmt: skip
    parser.add_argument(
        "--record", type=Path, default=None, metavar="DIR",
        help="keep each finished run's summary, metrics and args, and the plans, under DIR (small files, to "
        "commit); a study started elsewhere restores them first, so it resumes where the record stops",
    )  # fmt: skip
    parser.add_argument(
        "--extend-to", default=None, metavar="METHOD",
        help="equal cost the other way: the --extend methods train their own schedules over the epochs "
        "that fit in METHOD's whole-schedule time (runs and plan.json under OUTPUT/extended)",
    )  # fmt: skip
    parser.add_argument(
        "--extend", nargs="+", default=None, metavar="METHOD",
        help="with --extend-to: the cheaper methods to give its time (default: every method that costs less)",
    )  # fmt: skip
    parser.add_argument(
        "--frontier", nargs="+", type=float, default=None, metavar="B",
        help="accuracy against training compute: every method trains its own schedule over the epochs that "
        "take B times the --budget-reference method's whole-schedule time, for each B (e.g. 0.5 1 2 4), "
        "smallest first; runs under OUTPUT/frontier/bB, the plan in OUTPUT/frontier/plan.json; a method "
        "whose epochs are its own schedule reuses its equal-epoch run. The report gains the frontier "
        "table, the best method on validation per budget, paired t-tests with Holm's correction and stalls",
    )  # fmt: skip
    parser.add_argument(
        "--frontier-figure", type=Path, default=None, metavar="PNG",
        help="with --frontier: PNG of test top-1 against training seconds, one line per method through "
        "its budgets",
    )  # fmt: skip
    parser.add_argument(
        "--contrast", nargs="+", default=None, metavar="A:B",
        help="with --frontier: the paired contrasts A minus B (method names, e.g. sage_ce:sage_ce_random) "
        "reported at every budget with 95 %% t intervals and Holm's correction over these contrasts",
    )  # fmt: skip
    parser.add_argument(
        "--paired", default=None, metavar="METHOD",
        help="add tables of METHOD minus each other method, paired by seed, with 95 %% t intervals",
    )  # fmt: skip
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key in every run, e.g. --set data_dir=/data/cifar (repeatable)",
    )


def _stem_epoch_seconds(folders: list[Path]) -> dict[str, float]:
    """{config stem: mean over its finished runs of the run's median epoch time}."""
    per_stem: dict[str, list[float]] = {}
    for folder in folders:
        if not (folder / "summary.json").is_file():
            continue
        rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines() if line]
        per_stem.setdefault(_stem_and_seed(folder)[0], []).append(
            statistics.median(float(row["epoch_time"]) for row in rows)
        )
    return {stem: statistics.mean(values) for stem, values in per_stem.items()}


def _budget_plan(
    args: argparse.Namespace, folders: list[Path], epoch_seconds: dict[str, float] | None
) -> dict:
    """The shortened schedules, written once to ``output/budget/plan.json`` and reused after (so that a
    resumed study trains the same epochs): {"seconds": {stem: s/epoch}, "epochs": {stem: epochs}}."""
    from timm_sage._atomic import atomic_write_text
    from timm_sage.train.config import load_config

    path = args.output / "budget" / "plan.json"
    seconds = epoch_seconds or _stem_epoch_seconds(folders)
    if path.is_file() and not args.replan:
        plan = json.loads(path.read_text())
        added = {stem: sec for stem, sec in seconds.items() if stem not in plan["seconds"]}
        if added and (epoch_seconds is not None) == plan.get("timed", False):  # never mix the two clocks
            # A config added to a planned study: planned on the same budget; the configs already
            # planned keep their epochs, so that their finished shortened runs stay valid.
            reference = plan["reference"]
            plan["seconds"] |= added
            plan["epochs"] |= budget_epochs(
                {reference: plan["seconds"][reference], **added}, reference, plan["reference_epochs"]
            )
            atomic_write_text(path, json.dumps(plan, indent=2) + "\n")
        return plan
    reference = _reference_stem(args)
    if reference is None or reference not in seconds:
        raise ValueError(f"--budget-reference {args.budget_reference!r} has no finished runs to time")
    epochs = load_config(next(c for c in args.configs if c.stem == reference)).epochs
    plan = {
        "timed": epoch_seconds is not None,
        "reference": reference,
        "reference_epochs": epochs,
        "seconds": seconds,
        "epochs": budget_epochs(seconds, reference, epochs),
    }
    atomic_write_text(path, json.dumps(plan, indent=2) + "\n")
    return plan


def _epoch_seconds(args: argparse.Namespace, extra: list[str]) -> dict[str, float] | None:
    """--time-steps: the configs' seconds per epoch, measured once and kept in
    ``output/_timing/epoch_seconds.json`` (measured again with --replan or when a config is missing)."""
    if args.time_steps is None:
        return None
    from timm_sage._atomic import atomic_write_text

    path = args.output / "_timing" / "epoch_seconds.json"
    stored = json.loads(path.read_text()) if path.is_file() else {}
    missing = [c for c in args.configs if c.stem not in stored]
    reference = _reference_stem(args)
    if args.replan or (missing and (reference is None or reference not in stored)):
        stored |= time_epochs(args.configs, args.time_steps, args.output, extra)
    elif missing:
        # Configs added to a timed study: timed beside the reference and put on the stored scale (the
        # reference's stored seconds over its seconds now), so that the configs timed before keep theirs.
        reference_config = next(c for c in args.configs if c.stem == reference)
        measured = time_epochs([reference_config, *missing], args.time_steps, args.output, extra)
        scale = stored[reference] / measured[reference]
        stored |= {c.stem: measured[c.stem] * scale for c in missing}
    if args.replan or missing:
        atomic_write_text(path, json.dumps(stored, indent=2) + "\n")
    seconds = {c.stem: stored[c.stem] for c in args.configs}
    print("seconds per epoch: " + ", ".join(f"{k} {v:.2f}" for k, v in seconds.items()))
    return seconds


def _reference_stem(args: argparse.Namespace) -> str | None:
    """The stem of the config named ``--budget-reference`` (None when no config is that method)."""
    names = method_names([c.stem for c in args.configs])
    return next((stem for stem, name in names.items() if name == args.budget_reference), None)


def _paired_section(results: dict[str, list[dict]], anchor: str | None, where: str) -> str:
    """The --paired table for one comparison, with its heading; empty without --paired or runs."""
    text = paired_table(results, anchor) if anchor else ""
    if not text:
        return ""
    return (
        f"\n\n**Paired by seed, {where}**: {anchor} minus each method, test top-1 points; the interval is "
        "the mean difference ± t(0.975, n-1) · sd / √n over the seeds both have\n\n" + text
    )


def report_target(args: argparse.Namespace) -> tuple[Path | None, str]:
    """The Markdown file and the section that ``args`` (with ``--report``) write."""
    return args.report, args.section


def _planned_runs(
    args: argparse.Namespace,
    extra: list[str],
    folder: str,
    epochs: dict[str, int],
    names: dict[str, str],
    epoch_seconds: dict[str, float] | None = None,
) -> dict[str, list[dict]]:
    """Train (unless --report-only) the configs of a plan, ``epochs`` {stem: epochs}, under
    ``OUTPUT/folder`` (and ``RECORD/folder``); their finished runs by method, their training seconds on
    the clock of ``epoch_seconds`` where given (as the equal-epoch runs')."""
    configs = [c for c in args.configs if c.stem in epochs]
    if not args.report_only:
        sync_record(args.output, args.record, "save")
        run_study(
            configs, args.seeds, args.output / folder, extra, epochs=epochs,
            record=args.record / folder if args.record else None,
        )  # fmt: skip
    folders = [args.output / folder / run_name(c, s) for c in configs for s in args.seeds]
    return collect(folders, epoch_seconds, names=names, metric=args.select_on)


def _stem_of(args: argparse.Namespace, method: str, option: str) -> str:
    names = method_names([c.stem for c in args.configs])
    stem = next((stem for stem, name in names.items() if name == method), None)
    if stem is None:
        raise ValueError(f"{option} {method!r} is none of the configs' methods ({', '.join(names.values())})")
    return stem


def _extension_plan(
    args: argparse.Namespace, folders: list[Path], epoch_seconds: dict[str, float] | None
) -> dict:
    """The lengthened schedules of --extend-to, written once to ``output/extended/plan.json`` and reused
    after: {"target", "target_epochs", "seconds", "epochs": {stem: epochs}}."""
    from timm_sage._atomic import atomic_write_text
    from timm_sage.train.config import load_config

    path = args.output / "extended" / "plan.json"
    if path.is_file() and not args.replan:
        return json.loads(path.read_text())
    target = _stem_of(args, args.extend_to, "--extend-to")
    names = method_names([c.stem for c in args.configs])
    if args.extend is None:
        stems = [stem for stem in names if stem != target]
    else:
        stems = [_stem_of(args, method, "--extend") for method in args.extend]
    seconds = epoch_seconds or _stem_epoch_seconds(folders)
    missing = [stem for stem in [target, *stems] if stem not in seconds]
    if missing:
        raise ValueError(f"--extend-to: no epoch time yet for {', '.join(missing)} (use --time-steps)")
    epochs = load_config(next(c for c in args.configs if c.stem == target)).epochs
    plan = {
        "timed": epoch_seconds is not None,
        "target": target,
        "target_epochs": epochs,
        "seconds": {stem: seconds[stem] for stem in [target, *stems]},
        "epochs": extended_epochs(seconds, target, epochs, stems),
    }
    atomic_write_text(path, json.dumps(plan, indent=2) + "\n")
    return plan


def _frontier_plan(
    args: argparse.Namespace, folders: list[Path], epoch_seconds: dict[str, float] | None, extra: list[str]
) -> dict:
    """The --frontier schedules, written once to ``output/frontier/plan.json`` and reused after (so that a
    resumed study trains the same epochs): {"timed", "reference", "reference_epochs", "seconds": {stem:
    s/epoch}, "schedules": {stem: its own epochs}, "epochs": {budget label: {stem: epochs}}}. Configs and
    budgets added to a planned study are planned on the stored scale; the planned ones keep theirs."""
    from timm_sage._atomic import atomic_write_text
    from timm_sage.train.config import load_config

    path = args.output / "frontier" / "plan.json"
    seconds = epoch_seconds or _stem_epoch_seconds(folders)
    by_stem = {c.stem: c for c in args.configs}
    labels = [budget_label(b) for b in args.frontier]
    if path.is_file() and not args.replan:
        plan = json.loads(path.read_text())
        asked = _reference_stem(args)
        if asked is not None and asked != plan["reference"]:
            raise ValueError(
                f"--budget-reference {args.budget_reference!r}: {path} was planned on {plan['reference']}'s "
                "schedule; name that method, or --replan"
            )
        changed = False
        added = {stem: sec for stem, sec in seconds.items() if stem not in plan["seconds"]}
        if added and (epoch_seconds is not None) != plan.get("timed", False):
            clock = "--time-steps" if plan.get("timed") else "the runs' own epoch times (no --time-steps)"
            raise ValueError(
                f"--frontier: {', '.join(sorted(added))} not in {path}, which was planned with {clock}; "
                "plan them on the same clock (or --replan)"
            )  # never mix the two clocks
        if added:
            reference = plan["reference"]
            plan["seconds"] |= added
            plan["schedules"] |= {stem: load_config(by_stem[stem], extra).epochs for stem in added}
            planned = frontier_epochs(
                {reference: plan["seconds"][reference], **added}, reference, plan["reference_epochs"],
                [float(label) for label in plan["epochs"]],
            )  # fmt: skip
            for label, epochs in planned.items():
                plan["epochs"][label] |= {stem: epochs[stem] for stem in added}
            changed = True
        new = [label for label in labels if label not in plan["epochs"]]
        if new:
            plan["epochs"] |= frontier_epochs(
                plan["seconds"], plan["reference"], plan["reference_epochs"], [float(x) for x in new]
            )
            changed = True
        if changed:
            atomic_write_text(path, json.dumps(plan, indent=2) + "\n")
        return plan
    reference = _reference_stem(args)
    if reference is None or reference not in seconds:
        raise ValueError(f"--budget-reference {args.budget_reference!r} has no finished runs to time")
    reference_epochs = load_config(by_stem[reference], extra).epochs
    plan = {
        "timed": epoch_seconds is not None,
        "reference": reference,
        "reference_epochs": reference_epochs,
        "seconds": seconds,
        "schedules": {stem: load_config(by_stem[stem], extra).epochs for stem in seconds},
        "epochs": frontier_epochs(seconds, reference, reference_epochs, args.frontier),
    }
    atomic_write_text(path, json.dumps(plan, indent=2) + "\n")
    return plan


def _frontier_runs(
    args: argparse.Namespace,
    extra: list[str],
    plan: dict,
    names: dict[str, str],
) -> dict[str, dict[str, list[dict]]]:
    """Train (unless --report-only) the --frontier budgets, smallest first (a study stopped early has its
    low budgets complete), each under ``OUTPUT/frontier/b<label>`` (``RECORD/frontier/b<label>``); a
    (budget, config) whose epochs are the config's own schedule is the equal-epoch run, not trained
    again. Returns {budget label: {method: finished runs}}, their training seconds on the plan's clock
    (its measured seconds per epoch when it was timed, else each run's own median epoch time)."""
    clock = plan["seconds"] if plan.get("timed") else None  # the budgets' clock, whatever this call's flags
    frontier = {}
    for budget in sorted(set(args.frontier)):
        label = budget_label(budget)
        epochs = plan["epochs"][label]
        configs = [c for c in args.configs if c.stem in epochs]
        own = {c.stem for c in configs if epochs[c.stem] == plan["schedules"][c.stem]}
        folder = args.output / "frontier" / f"b{label}"
        trained = [c for c in configs if c.stem not in own]
        if not args.report_only:
            sync_record(args.output, args.record, "save")
            if trained:
                run_study(
                    trained, args.seeds, folder, extra, epochs={c.stem: epochs[c.stem] for c in trained},
                    record=args.record / "frontier" / f"b{label}" if args.record else None,
                )  # fmt: skip
            # the equal-epoch runs that are this budget's points: trained here when --skip-equal-epochs
            # left them out (finished ones are skipped)
            own_configs = [c for c in configs if c.stem in own]
            if own_configs and args.skip_equal_epochs:
                run_study(own_configs, args.seeds, args.output, extra, record=args.record)
        folders = [
            (args.output if c.stem in own else folder) / run_name(c, seed)
            for c in configs
            for seed in args.seeds
        ]
        frontier[label] = collect(folders, clock, names=names, metric=args.select_on)
    return frontier


def run(args: argparse.Namespace) -> int:
    from timm_sage.train.configs import find_config

    args.configs = [find_config(config) for config in args.configs]  # a path, or a config's name
    folders = [args.output / run_name(c, s) for c in args.configs for s in args.seeds]
    extra = override_flags(args.set)
    if args.extend is not None and args.extend_to is None:
        raise ValueError("--extend needs --extend-to")
    if args.frontier_figure is not None and not args.frontier:
        raise ValueError("--frontier-figure needs --frontier")
    contrasts = parse_contrasts(args.contrast)
    if contrasts and not args.frontier:
        raise ValueError("--contrast needs --frontier")
    known = set(method_names([c.stem for c in args.configs]).values())
    unknown = sorted({m for pair in contrasts for m in pair} - known)
    if unknown:
        raise ValueError(
            f"--contrast: {', '.join(map(repr, unknown))} not among the study's methods "
            f"({', '.join(sorted(known))})"
        )
    for budget in args.frontier or []:
        if not (math.isfinite(budget) and budget > 0):
            raise ValueError(f"--frontier budgets must be positive numbers, got {budget!r}")
    restored = sync_record(args.output, args.record, "restore")
    if restored:
        print(f"[study] {restored} files restored from the record {args.record}", flush=True)
    # Timed first, before any training, so that the clock is read on the machine the study will have
    # and not beside a running study (kept in OUTPUT/_timing: a resumed study reuses it).
    epoch_seconds = _epoch_seconds(args, extra)
    sync_record(args.output, args.record, "save")
    if not args.report_only and not args.skip_equal_epochs:
        run_study(args.configs, args.seeds, args.output, extra, record=args.record)
    names = method_names([c.stem for c in args.configs])
    shortened: dict[str, list[dict]] = {}
    plan = None
    if args.equal_time:
        plan = _budget_plan(args, folders, epoch_seconds)
        shortened = _planned_runs(args, extra, "budget", plan["epochs"], names, epoch_seconds)
    extension = None
    extended: dict[str, list[dict]] = {}
    if args.extend_to is not None:
        extension = _extension_plan(args, folders, epoch_seconds)
        extended = _planned_runs(args, extra, "extended", extension["epochs"], names, epoch_seconds)
    frontier_plan = None
    frontier: dict[str, dict[str, list[dict]]] = {}
    if args.frontier:
        frontier_plan = _frontier_plan(args, folders, epoch_seconds, extra)
        sync_record(args.output, args.record, "save")  # the plan, even when no budget trains anything
        frontier = _frontier_runs(args, extra, frontier_plan, names)
    results = collect(folders, epoch_seconds, metric=args.select_on, names=names)
    if not results and not any(frontier.values()):
        raise ValueError(f"no finished runs under {args.output}")
    body = ""
    if results:
        body = "**Equal epochs** (final epoch of the schedule)\n\n" + table(results)
        stalls = stall_table(results)
        body += "\n\n**Stalls** (runs still at chance after epoch 3; diverged runs)\n\n" + stalls
        chosen = selection(results) if args.select_on == "val" else ""
        if chosen:
            body += "\n\n" + chosen
        body += _paired_section(results, args.paired, "at equal epochs")
    if plan is not None and args.budget_reference in results:
        reference_seconds = plan["seconds"][plan["reference"]]
        costs = {
            names[stem]: sec / reference_seconds for stem, sec in plan["seconds"].items() if stem in names
        }
        body += (
            f"\n\n**Equal wall-clock, schedules trained to completion** (budget: {plan['reference_epochs']} "
            f"epochs of {args.budget_reference}; seconds per epoch "
            + (
                "measured with the configs taken in turn"
                if plan.get("timed")
                else "from the study's own runs"
            )
            + ")\n\n"
            + trained_budget_table(results, shortened, costs, args.budget_reference)
        )
        chosen = selection(trained_results(results, shortened)) if args.select_on == "val" else ""
        if chosen:
            body += "\n\nAt equal wall-clock: " + chosen
        body += _paired_section(trained_results(results, shortened), args.paired, "at equal wall-clock")
    elif args.budget_reference in results:
        body += "\n\n**Equal wall-clock**\n\n" + budget_table(results, args.budget_reference)
    if extension is not None:
        target = names[extension["target"]]
        if target in results:
            # Only the methods with lengthened runs: their full-schedule runs are not "given the time".
            given = {target: results[target]} | {
                names[stem]: results[names[stem]]
                for stem in extension["epochs"]
                if names[stem] in results and names[stem] in extended
            }
            target_seconds = extension["seconds"][extension["target"]]
            costs = {names[stem]: sec / target_seconds for stem, sec in extension["seconds"].items()}
            body += (
                f"\n\n**Equal cost the other way: the cheaper methods given {target}'s time** (budget: "
                f"{extension['target_epochs']} epochs of {target}; each trains its own schedule over the "
                "epochs that fit, to completion)\n\n" + trained_budget_table(given, extended, costs, target)
            )
            body += _paired_section(trained_results(given, extended), args.paired, f"at {target}'s time")
    if frontier_plan is not None:
        reference = frontier_plan["reference"]
        section = frontier_section(frontier, frontier_plan, names.get(reference, reference), contrasts)
        body += ("\n\n" if body else "") + section
    print(body)
    if args.figure is not None:
        plot_curves(results, args.figure, args.title, metric=args.select_on)
        figure_link = os.path.relpath(args.figure, args.report.parent) if args.report else str(args.figure)
        body += f"\n\n![{args.select_on} top-1 per epoch and per training second]({figure_link})"
    if args.cost_figure is not None:
        schedules = {
            method: [runs, shortened.get(method, []), extended.get(method, [])]
            for method, runs in results.items()
        }
        plot_cost_accuracy(schedules, args.cost_figure, args.title)
        cost_link = (
            os.path.relpath(args.cost_figure, args.report.parent) if args.report else str(args.cost_figure)
        )
        body += f"\n\n![final top-1 against training seconds, every schedule]({cost_link})"
    if args.frontier_figure is not None:
        plot_frontier(frontier, args.frontier_figure, args.title)
        frontier_link = str(args.frontier_figure)
        if args.report:
            frontier_link = os.path.relpath(args.frontier_figure, args.report.parent)
        body += f"\n\n![test top-1 against training seconds at each budget]({frontier_link})"
    if args.report is not None:
        write_between_markers(args.report, body, args.section)
        print(f"wrote {args.report}")
    return 0
