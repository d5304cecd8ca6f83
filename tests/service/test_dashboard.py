"""The dashboard in a real browser: Playwright driving Debian's chromium (``.ci/run`` installs
it where it is missing; Playwright's own browser download is not used) against a real server.
A key signs in; a run's curves gain points while it trains; another tenant's run is not there
by URL; cancel cancels; two runs compare. Screenshots of the run page are kept as artefacts
(``build/test-artifacts/``, or ``GRADWIRE_TEST_ARTIFACTS``)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers import Running

from gradwire.client import Client
from gradwire.service.transport.auth import NewKey, new_key
from gradwire.service.transport.server import operations

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = Path(os.environ.get("GRADWIRE_TEST_ARTIFACTS", ROOT / "build" / "test-artifacts"))
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
SPEC: dict[str, Any] = {
    "input_dim": 2,
    "layers": [
        {"kind": "dense", "units": 8, "activation": "tanh"},
        {"kind": "dense", "units": 1, "activation": "identity"},
    ],
    "loss": "squared_error",
    "seed": 1,
}
X = np.random.default_rng(3).normal(size=(64, 2))
Y = X[:, :1] * X[:, 1:]
WAIT_MS = 30_000

pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="no chromium on PATH (Debian's package; .ci/run installs it)"
)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield launched
        launched.close()


@pytest.fixture
def site(start_server: Callable[..., Running]) -> tuple[Running, str, dict[str, NewKey]]:
    server = start_server(auth=True, http_address="127.0.0.1:0")
    running = operations(server.server)
    assert running is not None
    assert running.http is not None
    keys = {tenant: new_key() for tenant in ("alice", "bob")}
    for tenant, key in keys.items():
        server.app.store.tenants.add_key(tenant, key.id, key.hash, name=tenant)
    return server, f"http://{running.http.address}", keys


def signed_in(browser: Any, base: str, key: NewKey) -> Any:
    """A fresh browser context signed in with ``key``: its page, on the models list."""
    page = browser.new_context(bypass_csp=True).new_page()  # the test's own probes are evaluated scripts
    answer = page.goto(base + "/")
    assert answer.status == 401  # nothing but the sign-in form
    assert page.locator("input[name=key]").count() == 1
    assert page.locator("table").count() == 0
    page.fill("input[name=key]", key.token)
    page.click("button[type=submit]")
    page.wait_for_selector("h1:text('Models')")
    return page


def points(page: Any, canvas: str) -> int:
    return int(page.get_attribute(f"canvas#{canvas}", "data-points") or 0)


def test_a_signed_in_tenant_watches_its_run_learn_live_and_cancels_it(
    browser: Any, site: tuple[Running, str, dict[str, NewKey]]
) -> None:
    server, base, keys = site
    with Client(server.address, timeout=60, token=keys["alice"].token) as alice:
        model = alice.create_model(SPEC, name="live")
        run = model.start_run(X, Y, epochs=100_000, batch_size=1)
        page = signed_in(browser, base, keys["alice"])
        assert page.locator(f"a[href='/models/{model.id}']").count() == 1
        page.goto(f"{base}/runs/{run.id}")
        page.wait_for_function("document.getElementById('loss').dataset.points >= 2", timeout=WAIT_MS)
        seen = points(page, "loss")
        page.wait_for_function(
            f"document.getElementById('loss').dataset.points > {seen}", timeout=WAIT_MS
        )  # the curve gains points while it trains, with no reload
        assert points(page, "grad_norms") >= seen
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "run-page-training.png"), full_page=True)

        page.click("button#cancel")
        page.wait_for_function(
            "document.getElementById('status')?.textContent === 'cancelled'", timeout=WAIT_MS
        )
        assert run.refresh().status == "cancelled"
        page.screenshot(path=str(ARTIFACTS / "run-page-cancelled.png"), full_page=True)


def test_another_tenants_run_and_model_are_not_reachable_by_url(
    browser: Any, site: tuple[Running, str, dict[str, NewKey]]
) -> None:
    server, base, keys = site
    with Client(server.address, timeout=60, token=keys["alice"].token) as alice:
        model = alice.create_model(SPEC, name="hers")
        history = model.fit(X, Y, epochs=2, batch_size=16)
    bob = signed_in(browser, base, keys["bob"])
    for path in (f"/runs/{history.run_id}", f"/models/{model.id}"):
        answer = bob.goto(base + path)
        assert answer.status == 404, path
        assert bob.locator("canvas").count() == 0
    assert bob.locator(f"a[href='/models/{model.id}']").count() == 0
    events = bob.request.get(f"{base}/runs/{history.run_id}/events")
    assert events.status == 404
    anonymous = browser.new_context().request.get(f"{base}/runs/{history.run_id}/events")
    assert anonymous.status == 401


def test_a_finished_run_shows_every_epoch_and_two_runs_compare(
    browser: Any, site: tuple[Running, str, dict[str, NewKey]]
) -> None:
    server, base, keys = site
    with Client(server.address, timeout=60, token=keys["alice"].token) as alice:
        model = alice.create_model(SPEC, name="pair")
        first = model.fit(X, Y, epochs=5, batch_size=16)
        second = model.fit(X, Y, epochs=7, batch_size=16, validation_data=(X, Y))
    page = signed_in(browser, base, keys["alice"])
    page.goto(f"{base}/runs/{second.run_id}")
    page.wait_for_function("document.getElementById('loss').dataset.points == 7", timeout=WAIT_MS)
    assert page.text_content("#status") == "completed"
    page.goto(f"{base}/models/{model.id}")
    for run_id in (first.run_id, second.run_id):
        page.check(f"input[value='{run_id}']")
    page.click("form[data-compare] button[type=submit]")
    page.wait_for_function("document.getElementById('compare')?.dataset.points == 5", timeout=WAIT_MS)
    page.screenshot(path=str(ARTIFACTS / "compare.png"), full_page=True)
