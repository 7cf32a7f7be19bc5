"""Small matplotlib helpers shared by bench and training outputs; matplotlib is imported on use only."""

from __future__ import annotations

from pathlib import Path

from timm_sage._atomic import atomic_path


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as error:  # pragma: no cover - depends on the optional extra
        raise ImportError("figures need matplotlib: pip install 'timm-sage[viz]'") from error
    return plt


def save_figure_atomic(figure, path: str | Path, dpi: int = 110) -> Path:
    """Save a matplotlib figure as PNG through a temporary file and a rename."""
    path = Path(path)
    with atomic_path(path) as temporary:
        figure.savefig(temporary, dpi=dpi, format="png", bbox_inches="tight")
    return path


def loglog_plot(
    panels: dict[str, dict[str, tuple[list[float], list[float]]]],
    path: str | Path,
    *,
    title: str,
    ylabel: str,
) -> Path:
    """Log-log panels side by side, sharing the y axis: ``{x label: {series name: (xs, ys)}}``."""
    plt = _pyplot()
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    figure, grid = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 4), sharey=True, squeeze=False)
    for axes, (xlabel, series) in zip(grid[0], panels.items(), strict=True):
        for name, (xs, ys) in series.items():
            axes.loglog(xs, ys, marker="o", label=name)
        axes.xaxis.set_major_formatter(ScalarFormatter())
        axes.xaxis.set_minor_formatter(NullFormatter())
        axes.set_xticks(sorted({x for xs, _ in series.values() for x in xs}))
        axes.set(xlabel=xlabel)
        axes.grid(True, which="both", alpha=0.3)
        axes.legend(fontsize=8)
    grid[0][0].set(ylabel=ylabel)
    figure.suptitle(title)
    save_figure_atomic(figure, path)
    plt.close(figure)
    return Path(path)
