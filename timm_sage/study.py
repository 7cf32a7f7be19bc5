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
import statistics
import subprocess
import sys
from pathlib import Path

from timm_sage._report import write_between_markers

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
                "timm_sage.cli",
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


def _method(folder: Path) -> str:
    stem = folder.name.rsplit("-seed", 1)[0]
    return stem.rsplit("_", 1)[-1]


def collect(folders: list[Path]) -> dict[str, list[dict]]:
    """Finished runs by method: ``{method: [{"seed", "final_top1", "best_top1", "curve", "wall_s"}]}``."""
    results: dict[str, list[dict]] = {}
    for folder in folders:
        summary_path = folder / "summary.json"
        if not summary_path.is_file():
            continue
        summary = json.loads(summary_path.read_text())
        curve = [
            json.loads(line)["test_top1"]
            for line in (folder / "metrics.jsonl").read_text().splitlines()
            if line
        ]
        results.setdefault(_method(folder), []).append(
            {
                "seed": int(folder.name.rsplit("-seed", 1)[1]),
                "final_top1": summary["final_top1"],
                "best_top1": summary["best_top1"],
                "curve": curve,
                "wall_s": summary.get("wall_time_s"),
            }
        )
    return results


def table(results: dict[str, list[dict]]) -> str:
    lines = [
        "| method | runs | final top-1 mean | std | best top-1 mean | seeds (final top-1) |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for method, runs in results.items():
        finals = [r["final_top1"] for r in runs]
        bests = [r["best_top1"] for r in runs]
        spread = statistics.stdev(finals) if len(finals) > 1 else 0.0
        seeds = ", ".join(
            f"{r['seed']}: {r['final_top1']:.2f}" for r in sorted(runs, key=lambda r: r["seed"])
        )
        lines.append(
            f"| {method} | {len(runs)} | {statistics.mean(finals):.2f} | {spread:.2f} | "
            f"{statistics.mean(bests):.2f} | {seeds} |"
        )
    return "\n".join(lines)


def plot_curves(results: dict[str, list[dict]], path: Path) -> None:
    from timm_sage._plots import _pyplot, save_figure_atomic

    plt = _pyplot()
    figure, axes = plt.subplots(figsize=(6.5, 4))
    for method, runs in results.items():
        length = min(len(r["curve"]) for r in runs)
        epochs = list(range(1, length + 1))
        columns = [[r["curve"][e] for r in runs] for e in range(length)]
        mean = [statistics.mean(c) for c in columns]
        low = [min(c) for c in columns]
        high = [max(c) for c in columns]
        axes.plot(epochs, mean, label=f"{method} (n={len(runs)})")
        axes.fill_between(epochs, low, high, alpha=0.2)
    axes.set(xlabel="epoch", ylabel="test top-1 (%)", title="Fashion-MNIST, 10k-image training subset")
    axes.grid(alpha=0.3)
    axes.legend()
    save_figure_atomic(figure, path)
    plt.close(figure)


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
    parser.add_argument("--figure", type=Path, default=None, help="PNG of test accuracy per epoch")
    parser.add_argument("--report-only", action="store_true", help="do not train, only report finished runs")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key in every run, e.g. --set data_dir=/data/cifar (repeatable)",
    )


def run(args: argparse.Namespace) -> int:
    folders = [args.output / run_name(c, s) for c in args.configs for s in args.seeds]
    if not args.report_only:
        run_study(args.configs, args.seeds, args.output, override_flags(args.set))
    results = collect(folders)
    if not results:
        raise ValueError(f"no finished runs under {args.output}")
    body = table(results)
    print(body)
    if args.figure is not None:
        plot_curves(results, args.figure)
        figure_link = os.path.relpath(args.figure, args.report.parent) if args.report else str(args.figure)
        body += f"\n\n![test accuracy per epoch]({figure_link})"
    if args.report is not None:
        write_between_markers(args.report, body, SECTION)
        print(f"wrote {args.report}")
    return 0
