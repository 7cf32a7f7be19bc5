"""``timm-sage study``: run a set of training configs over several seeds, then report mean and spread.

Each run is an ordinary ``timm-sage train`` in a child process with its own output folder; a finished
run (its ``summary.json`` exists) is skipped and an interrupted one resumes from its checkpoint, so the
study itself can be stopped and started again. ``--report`` turns the runs into a Markdown table and a
PNG of test accuracy per epoch, written between markers into a Markdown file.
"""

from __future__ import annotations

import argparse
import json
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


def run_study(configs: list[Path], seeds: list[int], output: Path, extra: list[str]) -> list[Path]:
    """Train every config with every seed, seed by seed (so a stopped study has every method for the
    first seeds), skipping finished runs and resuming interrupted ones; returns the run folders."""
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
            if (folder / "last.pth.tar").is_file():
                command += ["--resume", str(folder / "last.pth.tar")]
            print(f"[study] {name}: {' '.join(command[3:])}", flush=True)
            subprocess.run(command, check=True)
    return folders


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


def collect(folders: list[Path], epoch_seconds: dict[str, float] | None = None) -> dict[str, list[dict]]:
    """Finished runs by method, in the order of ``folders``.

    Each run: ``seed``, ``final_top1``, ``best_top1``, ``final_train_top1`` (None unless the run had
    ``eval_train``), ``train_s`` (training seconds, evaluation excluded: the median epoch time times the
    epochs, or ``epoch_seconds[stem]`` where given), ``epochs`` and ``points``:
    ``[(epoch, training seconds up to it, test top-1)]`` for every
    evaluated epoch.
    """
    names = method_names([_stem_and_seed(f)[0] for f in folders])
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
        points = [
            (int(row["epoch"]), epoch_s * int(row["epoch"]), float(row["test_top1"]))
            for row in rows
            if row.get("test_top1") is not None
        ]
        seed = _stem_and_seed(folder)[1]
        results.setdefault(names[stem], []).append(
            {
                "seed": seed,
                "final_top1": summary["final_top1"],
                "best_top1": summary["best_top1"],
                "final_train_top1": summary.get("final_train_top1"),
                "train_s": seconds,
                "epochs": len(rows),
                "points": points,
                "wall_s": summary.get("wall_time_s"),
            }
        )
    return results


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def table(results: dict[str, list[dict]]) -> str:
    """Equal epochs: final-epoch test top-1 (mean, sample std, per seed), best epoch, final train top-1
    on the un-augmented training images and the train/test gap (when the runs measured it)."""
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
        seeds = ", ".join(
            f"{r['seed']}: {r['final_top1']:.2f}" for r in sorted(runs, key=lambda r: r["seed"])
        )
        lines.append(
            f"| {method} | {len(runs)} | {mean:.2f} | {spread:.2f} | {best:.2f} | {train_cell} | {gap_cell} "
            f"| {seconds:.0f} | {seeds} |"
        )
    return "\n".join(lines)


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


def plot_curves(results: dict[str, list[dict]], path: Path, title: str = "Fashion-MNIST") -> None:
    """Two panels: mean test top-1 (band: min to max over seeds) against the epoch, and against the
    cumulative training seconds (equal wall-clock)."""
    from timm_sage.tools.plots import _pyplot, save_figure_atomic

    plt = _pyplot()
    figure, (by_epoch, by_time) = plt.subplots(1, 2, figsize=(11, 4))
    for method, runs in results.items():
        length = min(len(r["points"]) for r in runs)
        columns = [[r["points"][i] for r in runs] for i in range(length)]
        epochs = [c[0][0] for c in columns]
        seconds = [statistics.mean(p[1] for p in c) for c in columns]
        mean = [statistics.mean(p[2] for p in c) for c in columns]
        low = [min(p[2] for p in c) for c in columns]
        high = [max(p[2] for p in c) for c in columns]
        (line,) = by_epoch.plot(epochs, mean, label=f"{method} (n={len(runs)})")
        by_epoch.fill_between(epochs, low, high, alpha=0.15, color=line.get_color())
        by_time.plot(seconds, mean, label=method, color=line.get_color())
        by_time.fill_between(seconds, low, high, alpha=0.15, color=line.get_color())
    by_epoch.set(xlabel="epoch", ylabel="test top-1 (%)", title=f"{title}: equal epochs")
    by_time.set(xlabel="cumulative training seconds (mean over seeds)", ylabel="test top-1 (%)",
                title=f"{title}: equal wall-clock")  # fmt: skip
    for axes in (by_epoch, by_time):
        axes.grid(alpha=0.3)
    by_epoch.legend(fontsize=8)
    save_figure_atomic(figure, path)
    plt.close(figure)


def time_epochs(configs: list[Path], epochs: int, output: Path, extra: list[str]) -> dict[str, float]:
    """Seconds per training epoch of each config, measured in fresh runs of ``epochs`` epochs: the
    configs run back to back in their order, then again in reverse order, and each config's figure is
    the median of its epoch times after the first epoch of each run. The two orders cancel a machine
    that speeds up or slows down during the pass (measured on this project's box: the first config of a
    single pass came out 20 % slow). Timings of the study's own runs are only comparable when nothing
    else shared the machine while they ran; these are, when this pass runs alone.
    Returns ``{config stem: seconds}``; the runs go to ``output/_timing`` and are replaced each time."""
    if epochs < 2:
        raise ValueError(f"--time-epochs must be >= 2 (the first epoch is warm-up), got {epochs}")
    times: dict[str, list[float]] = {config.stem: [] for config in configs}
    for order in (configs, configs[::-1]):
        for config in order:
            folder = output / "_timing" / config.stem
            if folder.exists():
                shutil.rmtree(folder)
            command = [
                sys.executable, "-m", "timm_sage.tools.cli", "train", "--config", str(config),
                "--epochs", str(epochs), "--output", str(folder.parent), "--experiment", config.stem,
                "--eval_interval", str(epochs),
                "--eval_train", "false", "--no-progress", *extra,
            ]  # fmt: skip
            print(f"[study] timing {config.stem}: {epochs} epochs", flush=True)
            subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
            lines = (folder / "metrics.jsonl").read_text().splitlines()
            rows = [json.loads(line) for line in lines if line]
            times[config.stem] += [float(row["epoch_time"]) for row in rows[1:]]
    return {stem: statistics.median(values) for stem, values in times.items()}


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
    parser.add_argument("configs", nargs="+", type=Path, help="training configs (YAML), one per method")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--output", type=Path, default=Path("runs/study"))
    parser.add_argument("--report", type=Path, default=None, help="Markdown file to write the table into")
    parser.add_argument(
        "--figure", type=Path, default=None, help="PNG of test accuracy per epoch and per training second"
    )
    parser.add_argument(
        "--section", default=SECTION, help="name of the generated section in --report (default: study)"
    )
    parser.add_argument("--title", default="Fashion-MNIST", help="title of the figure's panels")
    parser.add_argument(
        "--time-epochs",
        type=int,
        default=None,
        metavar="N",
        help="measure each config's seconds per epoch in fresh N-epoch runs, back to back, and use them for "
        "the wall-clock view (instead of the study runs' own epoch times)",
    )
    parser.add_argument(
        "--budget-reference",
        default="vanilla",
        help="method whose whole-schedule training time is the equal wall-clock budget (default vanilla)",
    )
    parser.add_argument("--report-only", action="store_true", help="do not train, only report finished runs")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key in every run, e.g. --set data_dir=/data/cifar (repeatable)",
    )


def report_target(args: argparse.Namespace) -> tuple[Path | None, str]:
    """The Markdown file and the section that ``args`` (with ``--report``) write."""
    return args.report, args.section


def run(args: argparse.Namespace) -> int:
    folders = [args.output / run_name(c, s) for c in args.configs for s in args.seeds]
    if not args.report_only:
        run_study(args.configs, args.seeds, args.output, override_flags(args.set))
    epoch_seconds = None
    if args.time_epochs is not None:
        epoch_seconds = time_epochs(args.configs, args.time_epochs, args.output, override_flags(args.set))
        print("seconds per epoch: " + ", ".join(f"{k} {v:.2f}" for k, v in epoch_seconds.items()))
    results = collect(folders, epoch_seconds)
    if not results:
        raise ValueError(f"no finished runs under {args.output}")
    body = "**Equal epochs** (final epoch of the schedule)\n\n" + table(results)
    if args.budget_reference in results:
        body += "\n\n**Equal wall-clock**\n\n" + budget_table(results, args.budget_reference)
    print(body)
    if args.figure is not None:
        plot_curves(results, args.figure, args.title)
        figure_link = os.path.relpath(args.figure, args.report.parent) if args.report else str(args.figure)
        body += f"\n\n![test top-1 per epoch and per training second]({figure_link})"
    if args.report is not None:
        write_between_markers(args.report, body, args.section)
        print(f"wrote {args.report}")
    return 0
