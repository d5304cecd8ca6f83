"""The scikit-learn estimators against a live server: scikit-learn's own estimator checks, then
Pipeline, GridSearchCV, clone, pickle and partial_fit, each training on the server for real."""

from __future__ import annotations

import copy
import gc
import pickle
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("sklearn")

from helpers import Running
from sklearn.base import clone
from sklearn.datasets import load_iris, make_regression
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import parametrize_with_checks

from gradwire.client import Client, UnauthenticatedError
from gradwire.client.sdk import TOKEN_VARIABLE
from gradwire.client.sklearn import EXPECTED_FAILED_CHECKS, GradwireClassifier, GradwireRegressor
from gradwire.service.core.settings import Settings
from gradwire.service.transport.server import create_server, stop_server

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
"""Most fits here stop at a small max_iter on purpose; the warning is tested on its own."""

SMALL = {"hidden_layer_sizes": (16,), "learning_rate_init": 0.05, "max_iter": 30, "random_state": 0}
"""Settings that learn the checks' small problems in a few dozen epochs (tens of ms a fit)."""


@pytest.fixture(scope="module")
def address(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One server for the module (the estimators do not depend on the database's kind), on SQLite."""
    database = tmp_path_factory.mktemp("sklearn") / "gradwire.db"
    settings = Settings(
        address="127.0.0.1:0",
        database_url=f"sqlite:///{database}",
        auth=False,
        checkpoint_interval=0.05,
        poll_seconds=0.1,
    )
    server, port, app = create_server(settings)
    yield f"127.0.0.1:{port}"
    stop_server(server, app, grace=30)


@pytest.fixture(autouse=True)
def no_token(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test says what its estimators send: no token comes from the environment."""
    monkeypatch.delenv(TOKEN_VARIABLE, raising=False)


@pytest.fixture
def client(address: str) -> Iterator[Client]:
    with Client(address) as c:
        yield c


@pytest.fixture(scope="module")
def iris() -> tuple[np.ndarray, np.ndarray]:
    X, y = load_iris(return_X_y=True)
    return X, np.take(np.array(["setosa", "versicolor", "virginica"]), y)


@parametrize_with_checks(
    [GradwireClassifier(**SMALL), GradwireRegressor(**SMALL)],
    expected_failed_checks=lambda estimator: EXPECTED_FAILED_CHECKS,
)
def test_sklearn_checks(
    estimator: GradwireClassifier | GradwireRegressor, check: Callable, address: str
) -> None:
    check(estimator.set_params(address=address))


def test_the_sdk_does_not_import_sklearn() -> None:
    """scikit-learn is an extra: importing the SDK must not need it."""
    code = (
        "import sys, gradwire.client; assert 'sklearn' not in sys.modules, 'gradwire.client imported sklearn'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_a_classifier_trains_on_the_server_and_predicts_its_labels(
    address: str, client: Client, iris: tuple[np.ndarray, np.ndarray]
) -> None:
    X, y = iris
    clf = GradwireClassifier(**SMALL | {"max_iter": 100}, address=address).fit(
        StandardScaler().fit_transform(X), y
    )
    assert list(clf.classes_) == ["setosa", "versicolor", "virginica"]
    assert clf.n_features_in_ == 4
    remote = client.model(clf.model_id_)  # the model lives on the server, trained once
    assert remote.info.spec["loss"] == "softmax_crossentropy"
    assert remote.info.version == clf.model_version_ == 2
    assert [h.run_id for h in remote.history()] != []
    assert len(clf.loss_curve_) == clf.n_iter_ == len(remote.history()[0].epochs)
    Xs = StandardScaler().fit_transform(X)
    proba = clf.predict_proba(Xs)
    np.testing.assert_array_equal(proba, remote.predict(Xs))
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)
    assert clf.score(Xs, y) > 0.9
    assert set(clf.predict(Xs)) <= set(clf.classes_)


def test_two_classes_train_two_softmax_outputs(address: str) -> None:
    rng = np.random.default_rng(3)
    X = rng.normal(size=(80, 2))
    y = np.where(X[:, 0] + X[:, 1] > 0, "yes", "no")
    clf = GradwireClassifier(**SMALL, address=address).fit(X, y)
    assert clf.predict_proba(X).shape == (80, 2)
    assert clf.remote_model().info.spec["layers"][-1] == {
        "kind": "dense",
        "units": 2,
        "activation": "softmax",
        "init": "xavier_uniform",
    }
    assert clf.score(X, y) > 0.9


def test_a_regressor_keeps_the_shape_of_y(address: str) -> None:
    X, y = make_regression(n_samples=120, n_features=3, n_targets=2, noise=0.1, random_state=0)
    y = y / y.std(axis=0)
    one = GradwireRegressor(**SMALL, address=address).fit(X, y[:, 0])
    two = GradwireRegressor(**SMALL, address=address).fit(X, y)
    column = GradwireRegressor(**SMALL, address=address).fit(X, y[:, :1])
    assert one.predict(X).shape == (120,)
    assert two.predict(X).shape == (120, 2)
    assert column.predict(X).shape == (120, 1)
    assert (one.n_outputs_, two.n_outputs_, column.n_outputs_) == (1, 2, 1)
    np.testing.assert_array_equal(one.predict(X), column.predict(X).ravel())  # same seed, same targets
    assert one.score(X, y[:, 0]) > 0.9
    assert two.score(X, y) > 0.9


def test_in_a_pipeline_with_a_scaler(address: str, iris: tuple[np.ndarray, np.ndarray]) -> None:
    X, y = iris
    pipeline = make_pipeline(StandardScaler(), GradwireClassifier(**SMALL, address=address))
    assert pipeline.fit(X, y).score(X, y) > 0.9
    assert pipeline.predict_proba(X[:5]).shape == (5, 3)


def _model_ids(client: Client) -> set[str]:
    return {model.id for model in client.list_models()}


@pytest.mark.parametrize(("keep_model", "left"), [(False, 1), (True, 4 * 2 + 1)])
def test_grid_search_leaves_the_best_estimators_model_unless_told_to_keep_them(
    address: str, client: Client, iris: tuple[np.ndarray, np.ndarray], keep_model: bool, left: int
) -> None:
    """A model a fit (4 candidates, 2 folds, then the refit); the folds' estimators are discarded
    and delete theirs, unless kept. A search of 36 fits left 36 models."""
    X, y = iris
    before = _model_ids(client)
    search = GridSearchCV(
        make_pipeline(StandardScaler(), GradwireClassifier(**SMALL, address=address, keep_model=keep_model)),
        {
            "gradwireclassifier__hidden_layer_sizes": [(4,), (16,)],
            "gradwireclassifier__learning_rate_init": [0.01, 0.05],
        },
        cv=2,
    ).fit(X, y)
    assert len(search.cv_results_["params"]) == 4
    assert np.isfinite(search.cv_results_["mean_test_score"]).all()
    assert search.best_score_ > 0.8
    assert search.predict(X).shape == (150,)
    made = _model_ids(client) - before
    assert len(made) == left
    assert search.best_estimator_[-1].model_id_ in made
    del search
    gc.collect()
    assert len(_model_ids(client) - before) == left - (0 if keep_model else 1)


def test_a_second_fit_deletes_the_first_model_and_a_pickle_takes_the_model_over(
    address: str, client: Client, iris: tuple[np.ndarray, np.ndarray]
) -> None:
    X, y = iris
    estimator = GradwireClassifier(**SMALL, address=address).fit(X, y)
    first = estimator.model_id_
    estimator.fit(X, y)
    assert first not in _model_ids(client)
    assert estimator.model_id_ in _model_ids(client)
    loaded = pickle.loads(pickle.dumps(estimator))
    del estimator
    gc.collect()
    assert loaded.model_id_ in _model_ids(client)  # the pickle's now: the original left it
    assert loaded.predict(X).shape == (150,)


def test_clone_keeps_the_parameters_and_none_of_the_fit(
    address: str, iris: tuple[np.ndarray, np.ndarray]
) -> None:
    X, y = iris
    fitted = GradwireClassifier(**SMALL, address=address).fit(X, y)
    copy = clone(fitted)
    assert copy.get_params() == fitted.get_params()
    assert not hasattr(copy, "model_id_")
    assert not hasattr(copy, "classes_")
    copy.fit(X, y)
    assert copy.model_id_ != fitted.model_id_  # a model of its own on the server
    np.testing.assert_array_equal(copy.predict_proba(X), fitted.predict_proba(X))  # same seed, same data


def test_a_pickled_estimator_predicts_after_loads(address: str, iris: tuple[np.ndarray, np.ndarray]) -> None:
    X, y = iris
    fitted = GradwireClassifier(**SMALL, address=address).fit(X, y)
    expected = fitted.predict_proba(X)  # the connection is open: pickling must leave it out
    loaded = pickle.loads(pickle.dumps(fitted))
    assert "_grpc_client" not in loaded.__dict__
    assert loaded.model_id_ == fitted.model_id_
    np.testing.assert_array_equal(loaded.predict_proba(X), expected)
    np.testing.assert_array_equal(loaded.predict(X), fitted.predict(X))
    np.testing.assert_array_equal(copy.deepcopy(fitted).predict_proba(X), expected)


def test_a_pickle_made_again_sends_its_token(
    start_server: Callable[..., Running], iris: tuple[np.ndarray, np.ndarray]
) -> None:
    """The client made after unpickling uses the estimator's token (a server with keys)."""
    from gradwire.service.transport.auth import new_key

    server = start_server(auth=True, checkpoint_interval=1.0)
    key = new_key()
    server.app.store.tenants.add_key("default", key.id, key.hash, name="sklearn")
    X, y = iris
    fitted = GradwireClassifier(**SMALL, address=server.address, token=key.token).fit(X, y)
    loaded = pickle.loads(pickle.dumps(fitted))
    np.testing.assert_array_equal(loaded.predict(X), fitted.predict(X))
    with pytest.raises(UnauthenticatedError):
        loaded.set_params(token="").predict(X)


def test_partial_fit_trains_the_same_model_an_epoch_per_call(
    address: str, iris: tuple[np.ndarray, np.ndarray]
) -> None:
    X, y = iris
    Xs = StandardScaler().fit_transform(X)
    clf = GradwireClassifier(**SMALL, address=address)
    with pytest.raises(ValueError, match="classes must be passed"):
        clf.partial_fit(Xs, y)
    first = y != "virginica"  # the first call sees two of the three classes
    clf.partial_fit(Xs[first], y[first], classes=np.unique(y))
    model_id, versions = clf.model_id_, [clf.model_version_]
    for _ in range(20):
        clf.partial_fit(Xs, y)
        versions.append(clf.model_version_)
    assert clf.model_id_ == model_id
    assert versions == list(range(2, 23))
    assert clf.n_iter_ == len(clf.loss_curve_) == 21
    assert clf.loss_curve_[-1] < clf.loss_curve_[1]
    assert clf.score(Xs, y) > 0.8
    with pytest.raises(ValueError, match="differs from classes_"):
        clf.partial_fit(Xs, y, classes=["setosa", "versicolor"])
    with pytest.raises(ValueError, match="not in classes_"):
        clf.partial_fit(Xs[:2], ["setosa", "daisy"])


def test_partial_fit_continues_a_fit(address: str) -> None:
    X, y = make_regression(n_samples=60, n_features=2, noise=0.1, random_state=1)
    reg = GradwireRegressor(**SMALL, address=address).fit(X, y / y.std())
    fitted_epochs = reg.n_iter_
    reg.partial_fit(X, y / y.std())
    assert reg.n_iter_ == fitted_epochs + 1
    assert len(reg.loss_curve_) == fitted_epochs + 1
    with pytest.raises(ValueError, match="outputs"):
        reg.partial_fit(X, np.c_[y, y])


def test_early_stopping_holds_out_validation_rows(address: str, iris: tuple[np.ndarray, np.ndarray]) -> None:
    X, y = iris
    clf = GradwireClassifier(
        **SMALL | {"max_iter": 200}, early_stopping=True, n_iter_no_change=3, address=address
    ).fit(StandardScaler().fit_transform(X), y)
    assert clf.stop_reason_ == "early_stopping"
    assert clf.n_iter_ < 200
    assert clf.validation_scores_ is not None
    assert len(clf.validation_scores_) == clf.n_iter_
    assert clf.best_validation_score_ == max(clf.validation_scores_)


@pytest.mark.parametrize(
    ("parameters", "named"),
    [
        ({"activation": "softplus"}, "activation"),
        ({"solver": "lbfgs"}, "solver"),
        ({"learning_rate": "invscaling"}, "learning_rate"),
        ({"learning_rate_init": 0.0}, "learning_rate_init"),
        ({"hidden_layer_sizes": (8, 0)}, "hidden_layer_sizes"),
        ({"batch_size": 0}, "batch_size"),
        ({"dtype": "float16"}, "dtype"),
    ],
)
def test_bad_parameters_are_refused_before_anything_reaches_the_server(
    address: str, client: Client, parameters: dict[str, object], named: str
) -> None:
    before = len(list(client.list_models()))
    with pytest.raises(ValueError, match=f"{named} must be"):
        GradwireRegressor(**parameters, address=address).fit(np.zeros((4, 2)), np.zeros(4))
    assert len(list(client.list_models())) == before


def test_float32_models(address: str, iris: tuple[np.ndarray, np.ndarray]) -> None:
    X, y = iris
    clf = GradwireClassifier(**SMALL, dtype="float32", address=address).fit(X.astype(np.float32), y)
    assert clf.remote_model().dtype == "float32"
    assert clf.predict_proba(X).dtype == np.float32


def test_an_unreachable_server_is_a_connection_error(tmp_path: Path) -> None:
    clf = GradwireClassifier(**SMALL, address=f"unix:{tmp_path / 'nobody'}")
    with pytest.raises(ConnectionError):
        clf.fit(np.zeros((4, 2)), [0, 1, 0, 1])


def test_warnings_say_how_training_ended(address: str, iris: tuple[np.ndarray, np.ndarray]) -> None:
    X, y = iris
    with pytest.warns(ConvergenceWarning, match=r"max_iter \(2\) reached"):
        GradwireClassifier(**SMALL | {"max_iter": 2}, address=address).fit(X, y)
    rng = np.random.default_rng(0)
    X = rng.normal(size=(50, 3)) * 1e3
    diverging = GradwireRegressor(**SMALL | {"solver": "sgd", "learning_rate_init": 10.0}, address=address)
    with pytest.warns(ConvergenceWarning, match="NaN or infinite"):
        diverging.fit(X, X.sum(axis=1) * 1e3)
    assert diverging.stop_reason_ == "non_finite"
    assert np.isfinite(diverging.predict(X)).all()  # the best epoch's weights
