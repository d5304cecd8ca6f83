"""Looking rather than reading: a training run's history as a picture, or as a table.

:func:`plot_history` draws four panels: the loss and the metric, each for training and for
validation when the run had a validation set; the learning rate; and the gradient norm of every
layer's parameters over the epochs as a heatmap (log scale), the picture of vanishing (or
exploding) gradients: the rows of the first layers fade when gradients vanish on their way back.
matplotlib is the optional extra ``gradwire[plot]``; it is imported when a plot is drawn, and
drawn on a figure of its own (no pyplot, no global state: safe in servers and threads).

:func:`history_frame` turns the history into a pandas DataFrame, one row per epoch, when pandas is
installed (it is never required).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from .records import History

FIGURE_INCHES = (12.0, 8.0)
DPI = 100
"""A plot is 1200 × 800 pixels."""


def _needs(package: str, install: str) -> ImportError:
    return ImportError(f"this needs {package}: pip install {install}")


def _series(values: Sequence[float | None]) -> np.ndarray:
    return np.array([math.nan if v is None else v for v in values], dtype=float)


def _lines(
    axes: Axes, epochs: np.ndarray, series: dict[str, Sequence[float | None]], title: str, log: bool = True
) -> None:
    """One line per series that has a value; with ``log``, a log scale when every value is positive."""
    drawn = []
    for label, values in series.items():
        y = _series(values)
        if np.isfinite(y).any():
            axes.plot(epochs, y, label=label, marker="." if len(epochs) < 30 else None)
            drawn.append(y[np.isfinite(y)])
    if log and drawn and all((y > 0).all() for y in drawn):
        axes.set_yscale("log")
    axes.set_title(title)
    axes.set_xlabel("epoch")
    axes.grid(True, alpha=0.3)
    if len(drawn) > 1:
        axes.legend()


def gradient_norms(history: History) -> tuple[list[str], np.ndarray]:
    """The layers (by path, ``"0"``, ``"3.1"``, in the network's order) and the norms of their
    parameters' gradients, ``(layers, epochs)``; NaN where an epoch did not record one."""
    recorded = {name for epoch in history.epochs for name in epoch.get("grad_norms", {})}
    names = sorted(recorded, key=_layer_order)
    norms = np.full((len(names), len(history.epochs)), math.nan)
    for column, epoch in enumerate(history.epochs):
        for row, name in enumerate(names):
            norms[row, column] = epoch.get("grad_norms", {}).get(name, math.nan)
    return names, norms


def _layer_order(name: str) -> list[Any]:
    """``"3.1"`` sorts after ``"3.0"`` and before ``"10"``: by each number along the path."""
    return [int(part) if part.isdigit() else part for part in name.split(".")]


def _heatmap(figure: Figure, axes: Axes, history: History, epochs: np.ndarray) -> None:
    names, norms = gradient_norms(history)
    axes.set_title("gradient norm per layer (log10)")
    axes.set_xlabel("epoch")
    if not names:
        axes.text(0.5, 0.5, "no gradient norms recorded", ha="center", va="center", transform=axes.transAxes)
        return
    with np.errstate(divide="ignore", invalid="ignore"):
        shown = np.log10(np.where(norms > 0, norms, np.nan))
    image = axes.imshow(
        shown,
        aspect="auto",
        interpolation="nearest",
        cmap="viridis",
        extent=(epochs[0] - 0.5, epochs[-1] + 0.5, len(names) - 0.5, -0.5),
    )
    axes.set_yticks(range(len(names)), names)
    axes.set_ylabel("layer")
    figure.colorbar(image, ax=axes)


def plot_history(history: History, path: str | Path | None = None) -> Figure:
    """Draw the run (see the module's docstring); saved as ``path`` (PNG, or any format
    matplotlib knows by the suffix) when one is given. Returns the figure."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise _needs("matplotlib", "'gradwire[plot]'") from None
    if not history.epochs:
        raise ValueError("the run recorded no epochs: there is nothing to plot")
    figure = Figure(figsize=FIGURE_INCHES, dpi=DPI, layout="constrained")
    (loss, metric), (rate, norms) = figure.subplots(2, 2)
    series = history.history
    epochs = np.array([e["epoch"] for e in history.epochs], dtype=float)
    name = history.epochs[0]["metric_name"] or "metric"
    _lines(loss, epochs, {"train": series["loss"], "validation": series["val_loss"]}, "loss")
    _lines(metric, epochs, {"train": series[name], "validation": series[f"val_{name}"]}, name, log=False)
    _lines(rate, epochs, {"learning rate": series["lr"]}, "learning rate")
    _heatmap(figure, norms, history, epochs)
    figure.suptitle(
        f"run {history.run_id or '(unsaved)'}: {history.status or 'running'} {history.stop_reason}"
    )
    if path is not None:
        figure.savefig(path)
    return figure


def history_frame(history: History) -> Any:
    """The run's epochs as a pandas DataFrame indexed by epoch: the losses, the metric, the
    learning rate, timings, and a ``grad_norm:<layer>`` and ``update_ratio:<layer>`` column per
    layer with parameters."""
    try:
        import pandas as pd  # type: ignore[import-untyped]  # optional; no stubs installed
    except ImportError:
        raise _needs("pandas", "pandas") from None
    rows = []
    for epoch in history.epochs:
        row = {k: v for k, v in epoch.items() if k not in ("grad_norms", "update_ratios")}
        row |= {f"grad_norm:{k}": v for k, v in epoch.get("grad_norms", {}).items()}
        row |= {f"update_ratio:{k}": v for k, v in epoch.get("update_ratios", {}).items()}
        rows.append(row)
    return pd.DataFrame(rows).set_index("epoch") if rows else pd.DataFrame()
