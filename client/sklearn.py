"""scikit-learn estimators that train and predict on a gradwire server.

>>> from gradwire.client.sklearn import GradwireClassifier              # doctest: +SKIP
>>> clf = GradwireClassifier(hidden_layer_sizes=(32,), max_iter=100, random_state=0)
>>> clf.fit(X_train, y_train).score(X_test, y_test)                     # doctest: +SKIP

:class:`GradwireClassifier` and :class:`GradwireRegressor` are multilayer perceptrons named and
parametrised like scikit-learn's ``MLPClassifier`` and ``MLPRegressor``, but whose weights live on
a gradwire server: ``fit`` creates a model there (its id is ``model_id_``) and trains it with one
run, ``partial_fit`` trains that same model one epoch more per call, and ``predict`` asks the
server. They work in ``Pipeline``, ``GridSearchCV``, ``clone`` and ``pickle``: a pickle holds the
parameters and the fitted attributes, never the connection, which is made again from ``address``
and ``token`` on first use. :meth:`remote_model` gives the SDK's handle on the model (export,
history, delete).

An estimator cleans up the model it made (named after its class): a second ``fit`` deletes the
first's, and an estimator that is garbage-collected (or alive when the interpreter exits) deletes
its own, so a ``GridSearchCV`` leaves one model, its ``best_estimator_``'s, not one a fit. With
``keep_model=True`` every model stays; a pickled (or deep-copied) estimator's model stays too: it
now belongs to the copy, which may outlive the original.

scikit-learn is an optional extra (``pip install 'gradwire[sklearn]'``, scikit-learn 1.6 or newer):
``gradwire.client`` itself never imports it.

scikit-learn's estimator checks (``sklearn.utils.estimator_checks``, all of them, legacy ones
included) pass against a live server: tests/service/test_sklearn.py runs them. None is skipped, so
:data:`EXPECTED_FAILED_CHECKS` (what to give ``parametrize_with_checks(expected_failed_checks=...)``
and ``check_estimator``) is empty. The ``check_sample_weight*`` checks do not run, and nothing
stands in for them: the server's losses take no per-row weights, so ``fit`` has no
``sample_weight``.
"""

from __future__ import annotations

import contextlib
import math
import numbers
import warnings
import weakref
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin  # type: ignore[import-untyped]
from sklearn.exceptions import ConvergenceWarning  # type: ignore[import-untyped]
from sklearn.utils.multiclass import check_classification_targets, unique_labels  # type: ignore[import-untyped]
from sklearn.utils.validation import (  # type: ignore[import-untyped]
    check_is_fitted,
    check_random_state,
    validate_data,
)

from gradwire.v1 import gradwire_pb2 as pb
from gradwire.v1.vocabulary import OPTIMIZERS, StopReason

from .sdk import Client, History, Model

__all__ = ["EXPECTED_FAILED_CHECKS", "GradwireClassifier", "GradwireRegressor"]

ACTIVATIONS = {
    "identity": "identity",
    "logistic": "sigmoid",
    "sigmoid": "sigmoid",
    "tanh": "tanh",
    "relu": "relu",
    "leaky_relu": "leaky_relu",
}
"""Hidden activations: scikit-learn's names (``logistic``) and gradwire's (``sigmoid``, ``leaky_relu``)."""
SOLVERS = OPTIMIZERS
"""gradwire's optimisers (docs/engine.md); ``sgd`` is plain SGD, ``momentum``/``nesterov`` add momentum."""
SCHEDULES = {
    "constant": "constant",
    "adaptive": "plateau",
    "plateau": "plateau",
    "step": "step",
    "exponential": "exponential",
    "cosine": "cosine",
}
"""Learning-rate schedules: gradwire's, and scikit-learn's ``adaptive`` as gradwire's ``plateau``."""
DTYPES = ("float64", "float32")
FLOAT_DTYPES = (np.float64, np.float32)
"""What ``X`` is converted to (float32 kept as it is, anything else float64)."""
INIT = "xavier_uniform"
"""Glorot's uniform initialisation for every layer, as scikit-learn's MLP draws its weights."""
AUTO_BATCH = 200
"""``batch_size="auto"``: min(200, rows), scikit-learn's rule."""
MAX_SEED = 2**31 - 1
FORGET_SECONDS = 5.0
"""The longest an estimator waits, when it is discarded, for the server to delete its model."""

EXPECTED_FAILED_CHECKS: dict[str, str] = {}
"""scikit-learn estimator checks that fail for a reason intrinsic to a remote trainer, by name, with
the reason (the module's docstring lists them too): none."""

_Rule = tuple[Callable[[Any], bool], str]


def _forget(client: Client, model_id: str) -> None:
    """Delete a model an estimator made and no longer needs; whatever fails (the server gone, the
    client closed, the model deleted already) leaves it, as a discarded estimator cannot raise."""
    with contextlib.suppress(Exception):
        client.call("DeleteModel", pb.DeleteModelRequest(model_id=model_id), timeout=FORGET_SECONDS)


def _number(v: Any) -> float | None:
    """``v`` as a float when it is a finite real number (a bool is not), else None."""
    if isinstance(v, bool | np.bool_) or not isinstance(v, numbers.Real):
        return None
    number = float(v)
    return number if math.isfinite(number) else None


def _real(low: float, high: float = math.inf, *, low_open: bool = False, high_open: bool = True) -> _Rule:
    def ok(v: Any) -> bool:
        x = _number(v)
        if x is None:
            return False
        return (x > low if low_open else x >= low) and (x < high if high_open else x <= high)

    left, right = "(" if low_open else "[", ")" if high_open else "]"
    return ok, f"a real number in {left}{low}, {high}{right}"


def _whole(v: Any, low: int) -> bool:
    return not isinstance(v, bool | np.bool_) and isinstance(v, numbers.Integral) and int(v) >= low


def _integer(low: int) -> _Rule:
    return (lambda v: _whole(v, low)), f"an integer >= {low}"


def _one_of(allowed: Sequence[str]) -> _Rule:
    return (lambda v: isinstance(v, str) and v in allowed), f"one of {', '.join(map(repr, allowed))}"


_FLAG: _Rule = (lambda v: isinstance(v, bool | np.bool_), "True or False")
RULES: dict[str, _Rule] = {
    "activation": _one_of(tuple(ACTIVATIONS)),
    "solver": _one_of(SOLVERS),
    "alpha": _real(0.0),
    "batch_size": (
        lambda v: (isinstance(v, str) and v == "auto") or _whole(v, 1),
        "'auto' or an integer >= 1",
    ),
    "learning_rate": _one_of(tuple(SCHEDULES)),
    "learning_rate_init": _real(0.0, low_open=True),
    "max_iter": _integer(1),
    "shuffle": _FLAG,
    "tol": _real(0.0),
    "momentum": _real(0.0, 1.0),
    "early_stopping": _FLAG,
    "validation_fraction": _real(0.0, 1.0, low_open=True),
    "beta_1": _real(0.0, 1.0),
    "beta_2": _real(0.0, 1.0),
    "epsilon": _real(0.0, low_open=True),
    "n_iter_no_change": _integer(1),
    "dtype": _one_of(DTYPES),
    "timeout": (lambda v: v is None or (_number(v) or 0.0) > 0, "None or a number > 0"),
    "keep_model": _FLAG,
}
"""Each parameter's check and what it expects, applied by ``fit`` and ``partial_fit`` (``__init__``
only stores, as scikit-learn requires), before anything reaches the server."""


class _GradwireMLP(BaseEstimator):
    """What the classifier and the regressor share: parameters, the connection, the remote model
    and the training run. Subclasses give the loss, the output layer and the targets."""

    _loss = ""
    _output_activation = ""
    # Fitted attributes (set by fit and partial_fit, never by __init__), described in the classes' docs.
    model_id_: str
    model_version_: int
    n_features_in_: int
    loss_curve_: list[float]
    best_loss_: float | None
    validation_scores_: list[float] | None
    best_validation_score_: float | None
    n_iter_: int
    stop_reason_: str
    _train_seed: int

    def __init__(
        self,
        hidden_layer_sizes: int | Sequence[int] = (100,),
        activation: str = "relu",
        *,
        solver: str = "adam",
        alpha: float = 0.0,
        batch_size: int | str = "auto",
        learning_rate: str = "constant",
        learning_rate_init: float = 0.001,
        max_iter: int = 200,
        shuffle: bool = True,
        random_state: int | np.random.RandomState | None = None,
        tol: float = 1e-4,
        verbose: bool = False,
        momentum: float = 0.9,
        early_stopping: bool = False,
        validation_fraction: float = 0.1,
        beta_1: float = 0.9,
        beta_2: float = 0.999,
        epsilon: float = 1e-8,
        n_iter_no_change: int = 10,
        dtype: str = "float64",
        address: str | None = None,
        token: str | None = None,
        timeout: float | None = None,
        keep_model: bool = False,
    ) -> None:
        self.hidden_layer_sizes = hidden_layer_sizes
        self.activation = activation
        self.solver = solver
        self.alpha = alpha
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.learning_rate_init = learning_rate_init
        self.max_iter = max_iter
        self.shuffle = shuffle
        self.random_state = random_state
        self.tol = tol
        self.verbose = verbose
        self.momentum = momentum
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.beta_1 = beta_1
        self.beta_2 = beta_2
        self.epsilon = epsilon
        self.n_iter_no_change = n_iter_no_change
        self.dtype = dtype
        self.address = address
        self.token = token
        self.timeout = timeout
        self.keep_model = keep_model

    # ------------------------------------------------------------------ the connection

    def _client(self) -> Client:
        """The client for ``address`` and ``token``, made on first use (and again after
        ``set_params`` changed either, or after unpickling, which drops it)."""
        key = (self.address, self.token)
        made = self.__dict__.get("_grpc_client")
        if made is not None and made[0] == key:
            client: Client = made[1]
            return client
        if made is not None:
            made[1].close()
        client = Client(self.address, token=self.token)
        self._grpc_client = (key, client)
        return client

    def remote_model(self) -> Model:
        """The SDK's handle on the fitted model (``model_id_``) on the server: its weights
        (``export``), runs (``history``), ``delete``."""
        check_is_fitted(self, "model_id_")
        client = self._client()
        model: Model | None = self.__dict__.get("_grpc_model")
        if model is None or model.client is not client or model.id != self.model_id_:
            model = client.model(self.model_id_)
            self._grpc_model = model
        return model

    def __getstate__(self) -> dict[str, Any]:
        """The parameters and fitted attributes. The model now belongs to the copy: this estimator
        no longer deletes it when discarded."""
        self._disown()
        state = dict(super().__getstate__())
        for name in ("_grpc_client", "_grpc_model", "_owned"):
            state.pop(name, None)
        return state

    def _own(self, client: Client, model_id: str) -> None:
        """Delete ``model_id`` when this estimator is discarded or makes another, unless kept."""
        self._disown(delete=True)
        if not self.keep_model:
            self._owned = weakref.finalize(self, _forget, client, model_id)

    def _disown(self, delete: bool = False) -> None:
        """Stop owning the model made last: delete it now (``delete``), or leave it for good."""
        owned: weakref.finalize[Any, Any] | None = self.__dict__.pop("_owned", None)
        if owned is None:
            return
        if delete:
            owned()
        else:
            owned.detach()

    # ------------------------------------------------------------------ training

    def _check_params(self) -> tuple[int, ...]:
        """Every parameter checked (ValueError naming the first that is wrong); the hidden sizes."""
        for name, (ok, expected) in RULES.items():
            value = getattr(self, name)
            if not ok(value):
                raise ValueError(f"{type(self).__name__}: {name} must be {expected}, got {value!r}")
        given: Any = self.hidden_layer_sizes
        sizes = [given] if isinstance(given, numbers.Integral) else list(given)
        if not all(_whole(size, 1) for size in sizes):
            raise ValueError(
                f"{type(self).__name__}: hidden_layer_sizes must be positive integers, "
                f"got {self.hidden_layer_sizes!r}"
            )
        return tuple(int(size) for size in sizes)

    def _spec(self, hidden: tuple[int, ...], n_features: int, n_outputs: int, seed: int) -> dict[str, Any]:
        activation = ACTIVATIONS[self.activation]
        layers = [
            {"kind": "dense", "units": units, "activation": activation, "init": INIT} for units in hidden
        ]
        output = {"kind": "dense", "units": n_outputs, "activation": self._output_activation, "init": INIT}
        return {
            "input_dim": n_features,
            "layers": [*layers, output],
            "loss": self._loss,
            "dtype": self.dtype,
            "seed": seed,
        }

    def _create(self, n_features: int, n_outputs: int) -> None:
        """A new model on the server for this estimator; the fitted attributes start afresh."""
        hidden = self._check_params()
        spec_seed, self._train_seed = (
            int(s) for s in check_random_state(self.random_state).randint(MAX_SEED, size=2)
        )
        client = self._client()
        model = client.create_model(
            self._spec(hidden, n_features, n_outputs, spec_seed), name=type(self).__name__
        )
        self._own(client, model.id)
        self._grpc_model = model
        self.model_id_ = model.id
        self.model_version_ = model.info.version
        self.loss_curve_ = []
        self.validation_scores_ = None
        self.best_validation_score_ = None
        self.best_loss_ = None
        self.n_iter_ = 0
        self.stop_reason_ = ""

    def _train(self, X: np.ndarray, targets: np.ndarray, *, incremental: bool) -> None:
        """One run on the remote model: ``max_iter`` epochs (``fit``) or one (``partial_fit``)."""
        self._check_params()
        early = bool(self.early_stopping) and not incremental
        batch = min(AUTO_BATCH if self.batch_size == "auto" else int(self.batch_size), len(X))
        history = self.remote_model().fit(
            X,
            targets,
            epochs=1 if incremental else int(self.max_iter),
            batch_size=batch,
            optimizer=self.solver,
            learning_rate=float(self.learning_rate_init),
            validation_split=float(self.validation_fraction) if early else 0.0,
            seed=(self._train_seed + self.n_iter_) % MAX_SEED,  # each partial_fit call shuffles anew
            shuffle=bool(self.shuffle),
            patience=None if incremental else int(self.n_iter_no_change),
            min_delta=float(self.tol),
            restore_best=early,
            schedule={"name": SCHEDULES[self.learning_rate]},
            momentum=float(self.momentum),
            beta1=float(self.beta_1),
            beta2=float(self.beta_2),
            epsilon=float(self.epsilon),
            weight_decay=float(self.alpha),
            progress=bool(self.verbose),
            timeout=self.timeout,
        )
        self._record(history, early, incremental)

    def _record(self, history: History, early: bool, incremental: bool) -> None:
        series = history.history
        self.loss_curve_ += [float(loss) for loss in series["loss"] if loss is not None]
        self.best_loss_ = min((loss for loss in self.loss_curve_ if math.isfinite(loss)), default=None)
        if early:
            metric = history.epochs[0]["metric_name"] if history.epochs else "metric"
            self.validation_scores_ = [float(s) for s in series[f"val_{metric}"] if s is not None]
            self.best_validation_score_ = max(self.validation_scores_, default=None)
        self.n_iter_ += len(history.epochs)
        self.model_version_ = history.version
        self.stop_reason_ = history.stop_reason
        name = type(self).__name__
        if history.stop_reason == StopReason.NON_FINITE:
            warnings.warn(
                f"{name}: the loss became NaN or infinite at epoch {self.n_iter_}; the model keeps the "
                f"weights of its best epoch ({history.best_epoch}). Scale the inputs or lower "
                "learning_rate_init.",
                ConvergenceWarning,
                stacklevel=4,
            )
        elif history.stop_reason == StopReason.MAX_EPOCHS and not incremental:
            warnings.warn(
                f"{name}: max_iter ({self.max_iter}) reached and the optimisation has not converged yet.",
                ConvergenceWarning,
                stacklevel=4,
            )

    def _features(self, X: Any) -> Any:
        """``X`` checked against the fit (features, names) for predicting."""
        return validate_data(self, X, reset=False, dtype=FLOAT_DTYPES)

    def _outputs(self, X: Any) -> np.ndarray:
        """The remote model's outputs for ``X``: ``(rows, outputs)``."""
        check_is_fitted(self, "model_id_")
        return self.remote_model().predict(self._features(X))


class GradwireClassifier(ClassifierMixin, _GradwireMLP):
    """A multilayer perceptron classifier trained on a gradwire server.

    Labels may be any sortable hashable values (numbers, strings): they are encoded as
    scikit-learn's ``LabelEncoder`` does (``classes_`` sorted, one output per class) and the
    network ends in a softmax trained with softmax cross-entropy on one-hot targets, two
    classes included (two outputs rather than one sigmoid: ``predict_proba`` is the network's
    output as it is). One class only, multilabel and multioutput targets are refused.
    """

    _loss = "softmax_crossentropy"
    _output_activation = "softmax"

    def fit(self, X: Any, y: Any) -> GradwireClassifier:
        """Create a model on the server and train it for up to ``max_iter`` epochs.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
        y : array-like of shape (n_samples,)
            Class labels.

        Returns
        -------
        self
        """
        X, y = validate_data(self, X, y, dtype=FLOAT_DTYPES)
        classes = self._classes(y)
        self._create(X.shape[1], len(classes))
        self.classes_ = classes
        self._train(X, self._one_hot(y), incremental=False)
        return self

    def partial_fit(self, X: Any, y: Any, classes: Any = None) -> GradwireClassifier:
        """Train the same remote model one epoch more on ``(X, y)``; the first call creates it.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
        y : array-like of shape (n_samples,)
        classes : array-like of shape (n_classes,), default=None
            Every class there will be: required on the first call, where ``y`` may hold only
            some of them; later calls may leave it out or repeat it unchanged.

        Returns
        -------
        self
        """
        first = not hasattr(self, "model_id_")
        X, y = validate_data(self, X, y, reset=first, dtype=FLOAT_DTYPES)
        if first:
            if classes is None:
                raise ValueError(
                    f"{type(self).__name__}: classes must be passed on the first call to partial_fit"
                )
            known = self._classes(np.asarray(classes))
            self._create(X.shape[1], len(known))
            self.classes_ = known
        elif classes is not None and not np.array_equal(unique_labels(np.asarray(classes)), self.classes_):
            raise ValueError(
                f"{type(self).__name__}: classes={classes!r} differs from classes_ {self.classes_!r} "
                "of the first call to partial_fit"
            )
        self._train(X, self._one_hot(y), incremental=True)
        return self

    def _classes(self, y: np.ndarray) -> np.ndarray:
        check_classification_targets(y)
        classes = unique_labels(y)
        if len(classes) < 2:
            raise ValueError(
                f"{type(self).__name__} needs samples of at least 2 classes, got 1 class: {classes[0]!r}"
            )
        return np.asarray(classes)

    def _one_hot(self, y: np.ndarray) -> np.ndarray:
        check_classification_targets(y)
        unknown = ~np.isin(y, self.classes_)
        if unknown.any():
            raise ValueError(
                f"{type(self).__name__}: y holds labels not in classes_ {self.classes_!r}: "
                f"{np.unique(y[unknown])[:5]!r}"
            )
        codes = np.searchsorted(self.classes_, y)
        return np.eye(len(self.classes_), dtype=self.dtype)[codes]

    def predict_proba(self, X: Any) -> np.ndarray:
        """Class probabilities, ``(n_samples, n_classes)``, columns in the order of ``classes_``."""
        return self._outputs(X)

    def predict_log_proba(self, X: Any) -> np.ndarray:
        """The logarithm of :meth:`predict_proba`."""
        with np.errstate(divide="ignore"):
            return np.log(self.predict_proba(X))

    def predict(self, X: Any) -> np.ndarray:
        """The most probable class of each row, ``(n_samples,)``, labels as in ``classes_``."""
        proba = self.predict_proba(X)
        return self.classes_[np.argmax(proba, axis=1)]


class GradwireRegressor(RegressorMixin, _GradwireMLP):
    """A multilayer perceptron regressor trained on a gradwire server.

    Identity outputs trained with squared error (``½ Σₖ (yₖ − aₖ)²``, mean over rows). ``y`` of
    shape ``(n_samples,)`` gives predictions of that shape, ``(n_samples, n_outputs)`` of that
    one. Targets are used as given: scale them when they are large (``TransformedTargetRegressor``).
    """

    _loss = "squared_error"
    _output_activation = "identity"

    def fit(self, X: Any, y: Any) -> GradwireRegressor:
        """Create a model on the server and train it for up to ``max_iter`` epochs.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
        y : array-like of shape (n_samples,) or (n_samples, n_outputs)

        Returns
        -------
        self
        """
        X, y = validate_data(self, X, y, dtype=FLOAT_DTYPES, multi_output=True, y_numeric=True)
        self._create(X.shape[1], 1 if y.ndim == 1 else y.shape[1])
        self.n_outputs_ = 1 if y.ndim == 1 else y.shape[1]
        self._y_ndim = y.ndim
        self._train(X, self._targets(y), incremental=False)
        return self

    def partial_fit(self, X: Any, y: Any) -> GradwireRegressor:
        """Train the same remote model one epoch more on ``(X, y)``; the first call creates it.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
        y : array-like of shape (n_samples,) or (n_samples, n_outputs)

        Returns
        -------
        self
        """
        first = not hasattr(self, "model_id_")
        X, y = validate_data(self, X, y, reset=first, dtype=FLOAT_DTYPES, multi_output=True, y_numeric=True)
        if first:
            self._create(X.shape[1], 1 if y.ndim == 1 else y.shape[1])
            self.n_outputs_ = 1 if y.ndim == 1 else y.shape[1]
            self._y_ndim = y.ndim
        self._train(X, self._targets(y), incremental=True)
        return self

    def _targets(self, y: np.ndarray) -> np.ndarray:
        targets = y.reshape(len(y), -1)
        if targets.shape[1] != self.n_outputs_:
            raise ValueError(
                f"{type(self).__name__}: y has {targets.shape[1]} outputs, the model {self.n_outputs_}"
            )
        return targets

    def predict(self, X: Any) -> np.ndarray:
        """Predictions, ``(n_samples,)`` for a 1-D ``y`` in fit, else ``(n_samples, n_outputs)``."""
        outputs = self._outputs(X)
        return outputs.ravel() if self._y_ndim == 1 else outputs

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        return tags


_PARAMETERS = """
    Parameters
    ----------
    hidden_layer_sizes : int or sequence of int, default=(100,)
        Units of each hidden dense layer; ``()`` for none. Every layer starts Glorot-uniform.
    activation : {"relu", "tanh", "logistic", "identity", "sigmoid", "leaky_relu"}, default="relu"
        The hidden layers' activation (scikit-learn's ``logistic`` is gradwire's ``sigmoid``).
    solver : {"adam", "sgd", "momentum", "nesterov", "adamw", "rmsprop"}, default="adam"
        gradwire's optimiser (docs/engine.md). ``sgd`` is plain SGD: scikit-learn's SGD with
        momentum is ``momentum`` or ``nesterov`` here.
    alpha : float, default=0.0
        Weight decay λ, added to the gradient as ``λw`` (decoupled for ``adamw``), dense weights
        only. scikit-learn divides its ``alpha`` by the minibatch's rows, this one is not: hence the
        default 0.
    batch_size : int or "auto", default="auto"
        Rows per minibatch, at most the rows given; ``auto`` is min(200, rows).
    learning_rate : {"constant", "adaptive", "plateau", "step", "exponential", "cosine"}, default="constant"
        The learning-rate schedule over one run's epochs (``adaptive`` is gradwire's ``plateau``);
        each ``partial_fit`` call is a run of its own, so it starts again.
    learning_rate_init : float, default=0.001
        The initial learning rate.
    max_iter : int, default=200
        Epochs ``fit`` trains at most (``partial_fit`` trains one).
    shuffle : bool, default=True
        Shuffle the rows every epoch.
    random_state : int, RandomState instance or None, default=None
        Draws the seeds of the initial weights and of the shuffling (and hold-out): an int makes a
        fit repeat exactly.
    tol : float, default=1e-4
        An epoch improves on the best when it lowers the monitored loss by more than ``tol``.
    verbose : bool, default=False
        Print a progress line per epoch (to stderr).
    momentum : float, default=0.9
        The momentum of ``momentum`` and ``nesterov``.
    early_stopping : bool, default=False
        Hold out ``validation_fraction`` of the rows (stratified by class for the classifier),
        stop when the validation loss has not improved for ``n_iter_no_change`` epochs, and keep
        the best epoch's weights. Without it, ``fit`` stops on the training loss the same way and
        keeps the last weights. ``partial_fit`` never holds out or stops early.
    validation_fraction : float, default=0.1
        The fraction held out with ``early_stopping``.
    beta_1, beta_2 : float, default=0.9, 0.999
        Adam's decay rates of its moment estimates.
    epsilon : float, default=1e-8
        Adam's and RMSprop's numerical stability term.
    n_iter_no_change : int, default=10
        Epochs without improvement (by ``tol``) after which ``fit`` stops.
    dtype : {"float64", "float32"}, default="float64"
        The remote model's float type.
    address : str or None, default=None
        The server, ``host:port``; None: ``GRADWIRE_SERVER``, else 127.0.0.1:50051. TLS comes from
        ``GRADWIRE_TLS_CA_FILE`` and the other variables of :class:`gradwire.client.TLS`.
    token : str or None, default=None
        The API key; None: ``GRADWIRE_TOKEN``. A token given here is a parameter like any other:
        ``get_params``, the repr and pickles show it. Prefer the variable.
    timeout : float or None, default=None
        Seconds one training run may take; past them it is cancelled and
        :class:`gradwire.client.DeadlineExceededError` raised.
    keep_model : bool, default=False
        Keep the model on the server when this estimator is discarded or fitted again (by
        default it deletes what it made; see the module's docstring).
"""
_ATTRIBUTES = """
    n_features_in_ : int
        Features seen by ``fit``.
    feature_names_in_ : ndarray of shape (n_features_in_,)
        The columns' names, when ``X`` had string column names.
    model_id_ : str
        The model on the server; :meth:`remote_model` is the SDK's handle on it.
    model_version_ : int
        Its weight version after the last run (1 when created, one more per run).
    loss_curve_ : list of float
        The training loss of every epoch, ``fit``'s and those of the ``partial_fit`` calls since.
    best_loss_ : float or None
        The least of ``loss_curve_``.
    validation_scores_ : list of float or None
        With ``early_stopping``, each epoch's score on the held-out rows (the classifier's
        accuracy, the regressor's R²); else None.
    best_validation_score_ : float or None
        The best of ``validation_scores_``.
    n_iter_ : int
        Epochs trained: ``fit``'s and the ``partial_fit`` calls' since.
    stop_reason_ : str
        How the last run ended: ``max_epochs``, ``early_stopping``, ``non_finite`` (the loss
        became NaN or infinite: the model keeps its best epoch's weights, with a
        ConvergenceWarning), ...
"""
GradwireClassifier.__doc__ = f"""{GradwireClassifier.__doc__}{_PARAMETERS}
    Attributes
    ----------
    classes_ : ndarray of shape (n_classes,)
        The labels, sorted; the columns of ``predict_proba``.{_ATTRIBUTES}"""
GradwireRegressor.__doc__ = f"""{GradwireRegressor.__doc__}{_PARAMETERS}
    Attributes
    ----------
    n_outputs_ : int
        Outputs: the columns of a 2-D ``y``, 1 for a 1-D one.{_ATTRIBUTES}"""
