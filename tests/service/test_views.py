"""A real run's history drawn and tabulated: the picture has its size and four panels with
something in each; the table has a row per epoch with the numbers the run recorded."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from matplotlib.image import imread

from gradwire.client import Client
from gradwire.client.views import DPI, FIGURE_INCHES, gradient_norms, history_frame, plot_history

SPEC: dict[str, Any] = {
    "input_dim": 3,
    "layers": [
        {"kind": "dense", "units": 16, "activation": "tanh"},
        {"kind": "batchnorm"},
        {"kind": "dense", "units": 8, "activation": "relu"},
        {"kind": "dense", "units": 2, "activation": "softmax"},
    ],
    "loss": "softmax_crossentropy",
    "seed": 3,
}
RNG = np.random.default_rng(5)
X = RNG.normal(size=(240, 3))
Y = np.eye(2)[(X[:, 0] * X[:, 1] > 0).astype(int)]
EPOCHS = 12
WHITE = 0.98
"""A pixel lighter than this in every channel is the figure's background."""


@pytest.fixture
def history(client: Client) -> Any:
    model = client.create_model(SPEC)
    fitted = model.fit(
        X,
        Y,
        epochs=EPOCHS,
        batch_size=16,
        validation_split=0.25,
        optimizer="adam",
        schedule={"name": "cosine"},
    )
    (stored,) = model.history()  # as `gradwire history` reads it: from the server
    assert len(stored.epochs) == len(fitted.history["loss"]) == EPOCHS
    return stored


def test_the_plot_has_its_size_and_four_panels_each_with_something_drawn(
    history: Any, tmp_path: Path
) -> None:
    path = tmp_path / "run.png"
    figure = plot_history(history, path)
    pixels = imread(str(path))
    assert pixels.shape[:2] == (FIGURE_INCHES[1] * DPI, FIGURE_INCHES[0] * DPI)
    panels = figure.axes[:4]  # loss, metric, learning rate, the heatmap (then its colour bar)
    assert [axes.get_title() for axes in panels] == [
        "loss",
        "accuracy",
        "learning rate",
        "gradient norm per layer (log10)",
    ]
    height = pixels.shape[0]
    for axes in panels:
        box = axes.get_window_extent()
        inside = pixels[
            int(height - box.y1) + 2 : int(height - box.y0) - 2, int(box.x0) + 2 : int(box.x1) - 2
        ]
        drawn = (inside[..., :3] < WHITE).any(axis=-1).mean()
        assert drawn > 0.002, f"panel {axes.get_title()!r} is empty ({drawn:.4f} of it drawn)"
    assert len(panels[0].get_lines()) == 2  # training and validation
    for axes in panels:  # epochs are whole numbers, and so are their ticks
        ticks = [t for t in axes.get_xticks() if axes.get_xlim()[0] <= t <= axes.get_xlim()[1]]
        assert ticks, axes.get_title()
        assert all(float(t).is_integer() for t in ticks), axes.get_title()


def test_the_best_epoch_is_marked_and_the_layers_are_named_by_kind(client: Client) -> None:
    """Early stopping keeps an earlier epoch's weights: the plot marks that epoch; a constant
    learning rate gets no panel of its own (the title says it)."""
    model = client.create_model(SPEC)
    noise = RNG.normal(size=(240, 3))  # labels that cannot be learnt: validation stops improving
    labels = np.eye(2)[RNG.integers(0, 2, 240)]
    model.fit(noise, labels, epochs=60, batch_size=16, validation_split=0.5, optimizer="adam", patience=3)
    (run,) = model.history()
    assert run.stop_reason == "early_stopping"
    assert run.best_epoch < run.epochs[-1]["epoch"]
    figure = plot_history(run, spec=SPEC)
    loss, metric, norms = figure.axes[:3]
    assert [axes.get_title() for axes in (loss, metric, norms)] == [
        "loss",
        "accuracy",
        "gradient norm per layer (log10)",
    ]
    for axes in (loss, metric):
        marks = [line for line in axes.get_lines() if line.get_label() == f"best epoch {run.best_epoch}"]
        assert len(marks) == 1
        assert list(marks[0].get_xdata()) == [run.best_epoch, run.best_epoch]
    title = figure.get_suptitle()
    assert title.endswith(f"early_stopping, learning rate {run.history['lr'][0]:g}"), title
    assert [label.get_text() for label in norms.get_yticklabels()] == [
        "0 dense 16 tanh",
        "1 batchnorm",
        "2 dense 8 relu",
        "3 dense 2 softmax",
    ]


def test_the_heatmap_holds_every_layers_gradient_norm_of_every_epoch(history: Any) -> None:
    layers, norms = gradient_norms(history)
    assert layers == ["0", "1", "2", "3"]  # in the network's order
    assert norms.shape == (4, EPOCHS)
    expected = [[epoch["grad_norms"][name] for epoch in history.epochs] for name in layers]
    np.testing.assert_array_equal(norms, expected)
    assert (norms > 0).all()


def test_the_history_is_a_dataframe_row_per_epoch(history: Any) -> None:
    pytest.importorskip("pandas")
    frame = history_frame(history)
    assert list(frame.index) == list(range(1, EPOCHS + 1))
    np.testing.assert_array_equal(frame["train_loss"], history.history["loss"])
    np.testing.assert_array_equal(frame["val_loss"], history.history["val_loss"])
    assert frame["grad_norm:0"].iloc[-1] == history.epochs[-1]["grad_norms"]["0"]


def test_a_run_without_epochs_is_not_plotted() -> None:
    from gradwire.client.sdk import History

    with pytest.raises(ValueError, match="no epochs"):
        plot_history(History())
