"""Looking rather than reading: a training run's history as a picture, or as a table.

:func:`plot_history` draws the loss and the metric, each for training and for validation when
the run had a validation set, with the best epoch marked where the run kept an earlier epoch's
weights (early stopping); the learning rate, when it changed (a constant one is in the title);
and the gradient norm of every layer's parameters over the epochs as a heatmap (log scale), the
picture of vanishing (or exploding) gradients: the rows of the first layers fade when gradients
vanish on their way back. Given the model's spec, the layers are named by kind.
:func:`plot_runs` draws several runs of a model together, their losses and metrics.
matplotlib is the optional extra ``gradwire[plot]``; it is imported when a plot is drawn, and
drawn on a figure of its own (no pyplot, no global state: safe in servers and threads).

:func:`history_table` writes it as aligned text, one epoch a line; :func:`history_frame` turns
the history into a pandas DataFrame, one row per epoch, when pandas is installed (it is never
required).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from .records import History

RUN_ID_SHOWN = 12
"""Leading characters of a run id that name it in a legend (ids are 32 hex digits)."""
FIGURE_INCHES = (12.0, 8.0)
DPI = 100
"""A plot is 1200 × 800 pixels."""


def _needs(package: str, install: str) -> ImportError:
    return ImportError(f"this needs {package}: pip install {install}")


def _series(values: Sequence[float | None]) -> np.ndarray:
    return np.array([math.nan if v is None else v for v in values], dtype=float)


def _epoch_axis(axes: Axes) -> None:
    """Epochs are whole numbers: so are the ticks."""
    from matplotlib.ticker import MaxNLocator

    axes.set_xlabel("epoch")
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))


def _lines(
    axes: Axes,
    epochs: np.ndarray,
    series: Mapping[str, Sequence[float | None]],
    title: str,
    log: bool = True,
    style: dict[str, Any] | None = None,
) -> int:
    """One line per series that has a value; with ``log``, a log scale when every value is
    positive. Returns how many lines it drew."""
    drawn = []
    for label, values in series.items():
        y = _series(values)
        if np.isfinite(y).any():
            axes.plot(epochs, y, label=label, marker="." if len(epochs) < 30 else None, **(style or {}))
            drawn.append(y[np.isfinite(y)])
    if log and drawn and all((y > 0).all() for y in drawn):
        axes.set_yscale("log")
    axes.set_title(title)
    _epoch_axis(axes)
    axes.grid(True, alpha=0.3)
    return len(drawn)


def _mark_best(axes: Axes, history: History) -> None:
    """A dashed line at the epoch whose weights the run kept, where that is not its last."""
    last = history.epochs[-1]["epoch"]
    if history.best_epoch and history.best_epoch != last:
        axes.axvline(
            history.best_epoch, color="0.4", linestyle="--", label=f"best epoch {history.best_epoch}"
        )


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


def layer_names(spec: Mapping[str, Any]) -> dict[str, str]:
    """Each layer's path (``"0"``, ``"3.1"``, as :func:`gradient_norms` names them) with its kind,
    and a dense layer's width and activation: ``"0 dense 16 tanh"``, ``"3.1 batchnorm"``."""
    names: dict[str, str] = {}

    def walk(layers: Sequence[Mapping[str, Any]], prefix: str) -> None:
        for i, layer in enumerate(layers):
            path = f"{prefix}{i}"
            words = [layer["kind"], str(layer.get("units", "")), layer.get("activation", "")]
            names[path] = " ".join([path, *(w for w in words if w)])
            walk(layer.get("layers", ()), f"{path}.")

    walk(spec["layers"], "")
    return names


def _heatmap(
    figure: Figure, axes: Axes, history: History, epochs: np.ndarray, spec: Mapping[str, Any] | None
) -> None:
    names, norms = gradient_norms(history)
    axes.set_title("gradient norm per layer (log10)")
    _epoch_axis(axes)
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
    labels = layer_names(spec) if spec is not None else {}
    axes.set_yticks(range(len(names)), [labels.get(name, name) for name in names])
    axes.set_ylabel("layer")
    figure.colorbar(image, ax=axes)


PANELS: dict[bool, Any] = {
    True: [["loss", "metric"], ["rate", "norms"]],  # the learning rate changed: it has a panel
    False: [["loss", "metric"], ["norms", "norms"]],  # constant: the title says it
}
"""Where each panel goes, by whether the learning rate changed during the run."""


def _figure() -> Figure:
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise _needs("matplotlib", "'gradwire[plot]'") from None
    return Figure(figsize=FIGURE_INCHES, dpi=DPI, layout="constrained")


def _save(figure: Figure, path: str | Path | None) -> Figure:
    if path is not None:
        figure.savefig(path)
    return figure


def plot_history(
    history: History, path: str | Path | None = None, spec: Mapping[str, Any] | None = None
) -> Figure:
    """Draw the run (see the module's docstring), its layers named by ``spec`` (the model's)
    when given; saved as ``path`` (PNG, or any format matplotlib knows by the suffix) when one is
    given. Returns the figure."""
    if not history.epochs:
        raise ValueError("the run recorded no epochs: there is nothing to plot")
    figure = _figure()
    series = history.history
    rates = _series(series["lr"])
    varies = bool(np.nanmax(rates) > np.nanmin(rates)) if np.isfinite(rates).any() else False
    panels = figure.subplot_mosaic(PANELS[varies])
    epochs = np.array([e["epoch"] for e in history.epochs], dtype=float)
    name = history.epochs[0]["metric_name"] or "metric"
    _lines(panels["loss"], epochs, {"train": series["loss"], "validation": series["val_loss"]}, "loss")
    _lines(
        panels["metric"],
        epochs,
        {"train": series[name], "validation": series[f"val_{name}"]},
        name,
        log=False,
    )
    for axes in (panels["loss"], panels["metric"]):
        _mark_best(axes, history)
        if len(axes.get_lines()) > 1:
            axes.legend()
    if varies:
        _lines(panels["rate"], epochs, {"learning rate": series["lr"]}, "learning rate")
    _heatmap(figure, panels["norms"], history, epochs, spec)
    constant = "" if varies or not np.isfinite(rates).any() else f", learning rate {rates[0]:g}"
    figure.suptitle(
        f"run {history.run_id or '(unsaved)'}: {history.status or 'running'} {history.stop_reason}{constant}"
    )
    return _save(figure, path)


def plot_runs(histories: Sequence[History], path: str | Path | None = None) -> Figure:
    """Several runs of a model together: each run's loss and metric, a colour a run (training
    dashed, validation solid). Saved as ``path`` when one is given. Returns the figure."""
    shown = [h for h in histories if h.epochs]
    if not shown:
        raise ValueError("no run recorded an epoch: there is nothing to plot")
    figure = _figure()
    loss, metric = figure.subplots(1, 2)
    name = shown[0].epochs[0]["metric_name"] or "metric"
    for index, history in enumerate(shown):
        epochs = np.array([e["epoch"] for e in history.epochs], dtype=float)
        series, run = history.history, (history.run_id or f"run {index + 1}")[:RUN_ID_SHOWN]
        for axes, key, title, log in ((loss, "loss", "loss", True), (metric, name, name, False)):
            train = {f"{run} train": series[key]}
            _lines(axes, epochs, train, title, log, {"color": f"C{index}", "linestyle": "--"})
            _lines(
                axes, epochs, {f"{run} validation": series[f"val_{key}"]}, title, log, {"color": f"C{index}"}
            )
    for axes in (loss, metric):
        axes.legend(fontsize="small")
    figure.suptitle(f"{len(shown)} runs")
    return _save(figure, path)


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


def history_table(epochs: Sequence[Mapping[str, Any]]) -> str:
    """A run's epochs (as :attr:`History.epochs` holds them) as an aligned text table."""
    lines = [f"{'epoch':>5} {'train_loss':>11} {'val_loss':>11} {'metric':>8} {'lr':>9} {'seconds':>8}"]
    for r in epochs:
        val = f"{r['val_loss']:11.5f}" if r["val_loss"] is not None else f"{'-':>11}"
        metric = r["val_metric"] if r["val_metric"] is not None else r["train_metric"]
        lines.append(
            f"{r['epoch']:5d} {r['train_loss']:11.5f} {val} {metric:8.4f} "
            f"{r['learning_rate']:9.2e} {r['elapsed']:8.2f}"
        )
    return "\n".join(lines)
