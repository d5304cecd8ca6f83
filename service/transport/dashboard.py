"""The dashboard: a few web pages on the HTTP port for watching training, as TensorBoard or the
MLflow UI do, with no internet needed (its one script and its style ship in the package).

    /                       the tenant's models (their versions and specs)
    /models/{id}            a model and its runs (state, stop reason, receipt); two to compare
    /runs/{id}              a run: loss, metric, learning rate, and per-layer gradient-norm and
                            update-ratio heatmaps, live while it trains; cancel and resume
    /runs/{id}/events       the run's epochs as Server-Sent Events: the committed epochs WatchRun
                            streams, then each commit as it lands, then the run as it ends
    /compare?a=RUN&b=RUN    two runs' curves together
    /signin, /signout       an API key in, as an HttpOnly, SameSite=Strict cookie; and out

A page is the tenant's whose key the cookie holds (with authentication off, the tenant
``default``'s, as for every call); without a valid key a page answers the sign-in form and
nothing else, and the event stream 401. Another tenant's model or run is, here too, one that
does not exist (404). The pages are HTML written here, every value escaped; the script draws
the charts on canvases. Event streams take slots of their own, at most ``max_streams``.
"""

from __future__ import annotations

import html
import json
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from http import HTTPStatus
from importlib import resources
from typing import Any
from urllib.parse import parse_qs, quote

import anyio
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from gradwire.engine import NetworkSpec
from gradwire.storage import RunRecord, Unavailable

from ..core.errors import LimitExceeded, ShuttingDown, Unauthenticated
from ..usecases.app import Gradwire
from ..usecases.runs import WATCH_PAGE, Stalled
from .auth import Caller, Identify
from .open_inference import natural
from .status import http_status

COOKIE = "gradwire_key"
"""The cookie that holds the signed-in key."""
RUNS_SHOWN = 100
"""Runs listed on a model's page, oldest first."""
MODELS_SHOWN = 200
MAX_FORM_BYTES = 4096
"""The sign-in form's body at most: a key is some 60 characters."""

Page = Callable[[Request, Caller], Awaitable[Response]]
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; frame-ancestors 'none'",
    "X-Frame-Options": "DENY",
}
"""Pages load nothing but this server's script and style, and are framed by no other site."""


def escape(value: object) -> str:
    return html.escape(str(value), quote=True)


def page(title: str, body: str, signed_in: bool = True, status: int = 200) -> HTMLResponse:
    signout = (
        '<form method="post" action="/signout" class="signout"><button>Sign out</button></form>'
        if signed_in
        else ""
    )
    return HTMLResponse(
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        f"<title>{escape(title)} · gradwire</title>"
        '<link rel="stylesheet" href="/static/dashboard.css">'
        '<script src="/static/dashboard.js" defer></script></head><body>'
        f'<header><a href="/" class="brand">gradwire</a>{signout}</header>'
        f"<main>{body}</main></body></html>",
        status_code=status,
        headers=PAGE_HEADERS,
    )


def table(headers: list[str], rows: list[list[str]]) -> str:
    """A table of cells already escaped (or built of escaped parts)."""
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def link(href: str, text: object) -> str:
    return f'<a href="{escape(href)}">{escape(text)}</a>'


def spec_summary(spec: dict[str, Any]) -> str:
    network = NetworkSpec.from_dict(spec)
    layers = " → ".join(str(layer.get("units", layer.get("kind", "?"))) for layer in spec.get("layers", []))
    return f"{network.input_dim} → {layers} · {network.loss} · {network.dtype}"


def run_summary(run: RunRecord) -> dict[str, Any]:
    """What the run page shows of a run, as its script takes it."""
    return {
        "id": run.id,
        "status": run.status,
        "stop_reason": run.stop_reason,
        "error": run.error,
        "epochs_done": run.epochs_done,
        "epochs_planned": int(run.options.get("epochs") or 0),
        "best_epoch": run.best_epoch,
        "version": run.version,
    }


def sse(event: str, data: Any, event_id: int | None = None) -> str:
    """One Server-Sent Event: its id (the last epoch, for a reconnect), name and JSON data."""
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {event}\ndata: {json.dumps(data, allow_nan=False)}\n\n"


def script_json(data: Any) -> str:
    """JSON inside a ``<script type=application/json>``: no ``</script>`` can end it early."""
    return json.dumps(data).replace("<", "\\u003c")


class Dashboard:
    """The pages over ``app``, for callers ``identify`` names from the cookie's key."""

    def __init__(self, app: Gradwire, identify: Identify, max_streams: int) -> None:
        self.app, self.identify = app, identify
        self._streams = threading.BoundedSemaphore(max_streams)
        self.max_streams = max_streams
        # An event stream waits for commits on a thread of its own pool, never on the pool the
        # pages and the REST endpoints share; a stream its browser left is let go at once.
        self._threads: dict[str, Any] = {
            "limiter": anyio.CapacityLimiter(max_streams),
            "abandon_on_cancel": True,
        }

    def routes(self) -> list[Any]:
        static = resources.files("gradwire.service.transport") / "static"
        return [
            Route("/", self.signed_in(self.models)),
            Route("/models/{model_id}", self.signed_in(self.model)),
            Route("/runs/{run_id}", self.signed_in(self.run)),
            Route("/runs/{run_id}/cancel", self.signed_in(self.cancel), methods=["POST"]),
            Route("/runs/{run_id}/resume", self.signed_in(self.resume), methods=["POST"]),
            Route("/runs/{run_id}/events", self.events),
            Route("/compare", self.signed_in(self.compare)),
            Route("/signin", self.signin_form),
            Route("/signin", self.signin, methods=["POST"]),
            Route("/signout", self.signout, methods=["POST"]),
            Mount("/static", StaticFiles(directory=str(static)), name="static"),
        ]

    # ------------------------------------------------------------------ who is calling

    def caller(self, request: Request) -> Caller:
        """The caller the cookie's key names; Unauthenticated without a valid one."""
        key = request.cookies.get(COOKIE, "")
        return self.identify([("authorization", f"Bearer {key}" if key else None)])

    def signed_in(self, handler: Page) -> Callable[[Request], Awaitable[Response]]:
        """``handler`` for the signed-in caller; the sign-in form for anyone else; a model or run
        that is not the caller's: 404; a POST from another site's page: 403."""

        async def answer(request: Request) -> Response:
            if request.method == "POST" and not _same_origin(request):
                return HTMLResponse("refused: a form of another site", status_code=403)
            try:
                caller = await run_in_threadpool(self.caller, request)
            except Unauthenticated:
                return _signin_page(status=401)
            except Exception as exc:  # the database away, ...
                return error_page(exc)
            try:
                return await handler(request, caller)
            except Exception as exc:  # a model or run not the caller's, a run in no state for it, ...
                return error_page(exc)

        return answer

    async def signin_form(self, request: Request) -> Response:
        return _signin_page()

    async def signin(self, request: Request) -> Response:
        if not _same_origin(request):
            return HTMLResponse("refused: a form of another site", status_code=403)
        declared = natural(request.headers.get("content-length", "0"))
        if declared is None or declared > MAX_FORM_BYTES:  # refused before a byte of it is read
            return _signin_page(error="that is no API key", status=400)
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_FORM_BYTES:  # read no further than a sign-in form can be
                return _signin_page(error="that is no API key", status=400)
        key = parse_qs(body.decode("utf-8", "replace")).get("key", [""])[0].strip()
        try:
            await run_in_threadpool(self.identify, [("authorization", f"Bearer {key}")])
        except Unauthenticated as exc:
            return _signin_page(error=str(exc), status=401)
        except Exception as exc:
            return error_page(exc)
        response = RedirectResponse("/", status_code=303)
        secure = request.url.scheme == "https"
        response.set_cookie(COOKIE, key, httponly=True, samesite="strict", secure=secure, path="/")
        return response

    async def signout(self, request: Request) -> Response:
        response = RedirectResponse("/signin", status_code=303)
        response.delete_cookie(COOKIE, path="/")
        return response

    # ------------------------------------------------------------------ pages

    async def models(self, request: Request, caller: Caller) -> Response:
        models, _ = await run_in_threadpool(self.app.models.page, caller.tenant, MODELS_SHOWN, "")
        rows = [
            [
                link(f"/models/{m.id}", m.name or m.id),
                f"<code>{escape(m.id)}</code>",
                escape(m.version),
                escape(spec_summary(m.spec)),
                link(f"/runs/{m.active_run_id}", "running") if m.active_run_id else "",
            ]
            for m in models
        ]
        body = "<h1>Models</h1>" + (
            table(["name", "id", "version", "spec", "active run"], rows) if rows else "<p>No models yet.</p>"
        )
        return page("Models", body)

    async def model(self, request: Request, caller: Caller) -> Response:
        model_id = request.path_params["model_id"]
        model = await run_in_threadpool(self.app.models.get, caller.tenant, model_id)
        runs, _ = await run_in_threadpool(self.app.runs.page, caller.tenant, model_id, [], RUNS_SHOWN, "")
        rows = [
            [
                f'<input type="checkbox" name="pick" value="{escape(r.id)}" aria-label="compare">',
                link(f"/runs/{r.id}", r.id[:12]),
                f'<span class="status {escape(r.status)}">{escape(r.status)}</span>',
                escape(r.stop_reason),
                f"{escape(r.epochs_done)} / {escape(r.options.get('epochs', ''))}",
                escape(r.version or ""),
                f"<code>{escape((r.receipt or {}).get('weights_sha256', '')[:16])}</code>",
            ]
            for r in runs
        ]
        listing = (
            '<form action="/compare" class="compare" data-compare>'
            + table(["", "run", "state", "stop reason", "epochs", "version", "receipt (weights)"], rows)
            + '<button type="submit">Compare two</button></form>'
            if rows
            else "<p>No runs yet.</p>"
        )
        body = (
            f"<h1>{escape(model.name or model.id)}</h1>"
            f"<p><code>{escape(model.id)}</code> · version {escape(model.version)} · "
            f"{escape(spec_summary(model.spec))}</p><h2>Runs</h2>{listing}"
        )
        return page(model.name or model.id, body)

    async def run(self, request: Request, caller: Caller) -> Response:
        run = await run_in_threadpool(self.app.runs.get, caller.tenant, request.path_params["run_id"])
        summary = run_summary(run)
        receipt = "".join(
            f"<dt>{escape(k)}</dt><dd><code>{escape(v)}</code></dd>" for k, v in (run.receipt or {}).items()
        )
        actions = "".join(
            f'<form method="post" action="/runs/{escape(run.id)}/{act}">'
            f'<button id="{act}">{act.title()}</button></form>'
            for act in ("cancel", "resume")
        )
        charts = "".join(
            f'<figure><figcaption>{escape(title)}</figcaption><canvas id="{name}" width="640" height="240" '
            f'data-points="0"></canvas></figure>'
            for name, title in CHARTS
        )
        body = (
            f"<h1>Run <code>{escape(run.id)}</code></h1>"
            f"<p>model {link(f'/models/{run.model_id}', run.model_id)} · state "
            f'<span id="status" class="status {escape(run.status)}">{escape(run.status)}</span> · '
            f'stop reason <span id="stop_reason">{escape(run.stop_reason or "—")}</span> · '
            f'epoch <span id="epoch">{escape(run.epochs_done)}</span></p>'
            f'<div class="actions">{actions}</div>'
            f'<section class="charts" data-run="{escape(run.id)}">{charts}</section>'
            f'<script type="application/json" id="run">{script_json(summary)}</script>'
            f"<h2>Receipt</h2><dl>{receipt or '<dd>none yet</dd>'}</dl>"
        )
        return page(f"Run {run.id[:12]}", body)

    async def compare(self, request: Request, caller: Caller) -> Response:
        picked = [str(v) for v in request.query_params.getlist("pick")] or [
            request.query_params.get("a", ""),
            request.query_params.get("b", ""),
        ]
        if len(picked) != 2 or not all(picked):
            return page("Compare", "<p>Pick two runs to compare.</p>", status=400)
        runs = [await run_in_threadpool(self.app.runs.get, caller.tenant, run_id) for run_id in picked]
        names = ", ".join(link(f"/runs/{r.id}", r.id[:12]) for r in runs)
        body = (
            f"<h1>Two runs</h1><p>{names}</p>"
            '<section class="charts" data-compare-runs="'
            + escape(" ".join(r.id for r in runs))
            + '"><figure><figcaption>train and validation loss</figcaption>'
            '<canvas id="compare" width="800" height="320" data-points="0"></canvas></figure></section>'
        )
        return page("Compare", body)

    async def cancel(self, request: Request, caller: Caller) -> Response:
        run_id = request.path_params["run_id"]
        await run_in_threadpool(self.app.runs.cancel, caller.tenant, run_id)
        return RedirectResponse(f"/runs/{quote(run_id)}", status_code=303)

    async def resume(self, request: Request, caller: Caller) -> Response:
        run_id = request.path_params["run_id"]
        await run_in_threadpool(self.app.runs.resume, caller.tenant, run_id)
        return RedirectResponse(f"/runs/{quote(run_id)}", status_code=303)

    # ------------------------------------------------------------------ the event stream

    async def events(self, request: Request) -> Response:
        """The run's epochs, then each commit, then its end; from the epoch after the last one
        the browser saw (``Last-Event-ID``) when it reconnects."""
        run_id = request.path_params["run_id"]
        after_epoch = natural(request.headers.get("last-event-id", "0")) or 0
        try:
            caller = await run_in_threadpool(self.caller, request)
            run = await run_in_threadpool(self.app.runs.get, caller.tenant, run_id)
        except Exception as exc:  # no key (401), not the caller's run (404), the database away (503)
            status, message = http_status(exc)
            return JSONResponse({"error": message}, status_code=status)
        if not self._streams.acquire(blocking=False):
            limit = LimitExceeded("", f"at most {self.max_streams} event streams at once; try again later")
            return JSONResponse({"error": str(limit)}, status_code=429)
        left = threading.Event()
        events = self._events(caller.tenant, run_id, after_epoch, left)

        async def stream() -> AsyncIterator[str]:
            yield sse("run", run_summary(run))
            while (chunk := await anyio.to_thread.run_sync(next, events, None, **self._threads)) is not None:
                yield chunk

        def over() -> None:
            left.set()  # the watch returns at its next look, and its thread with it
            self._streams.release()

        headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        return Held(stream(), over, media_type="text/event-stream", headers=headers)

    def _events(self, tenant: str, run_id: str, after_epoch: int, left: threading.Event) -> Iterator[str]:
        """The watch's events as SSE; a server that stops ends the stream, and the browser comes
        back (to this server restarted, or to another replica) from the last epoch it saw."""
        watch = self.app.runs.watch(tenant, run_id, after_epoch, left.is_set, WATCH_PAGE)
        try:
            yield from self._translated(watch)
        except (ShuttingDown, Unavailable) as exc:
            yield sse("interrupted", {"error": str(exc)})

    @staticmethod
    def _translated(watch: Iterator[Any]) -> Iterator[str]:
        for event in watch:
            if isinstance(event, tuple):
                yield sse("epochs", [entry.record for entry in event], event[-1].epoch)
            elif isinstance(event, Stalled):
                yield sse("run", run_summary(event.run) | {"stalled": True})
            else:
                yield sse("run", run_summary(event))
                yield sse("end", {})


class Held(StreamingResponse):
    """A streaming response that calls ``over`` once it ends, however: a browser that left even
    before the stream began (its generator then never runs) gives its slot back too."""

    def __init__(self, content: AsyncIterator[str], over: Callable[[], None], **kwargs: Any) -> None:
        super().__init__(content, **kwargs)
        self.over = over

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.over()


CHARTS = (
    ("loss", "loss: train and validation"),
    ("metric", "metric: train and validation"),
    ("learning_rate", "learning rate"),
    ("grad_norms", "gradient norm per layer (log scale)"),
    ("update_ratios", "update ratio per layer (log scale)"),
)
"""The run page's charts: canvas id, and caption."""


def error_page(exc: Exception) -> HTMLResponse:
    """The page for an error: its HTTP status (that of its gRPC status) and what it says."""
    status, message = http_status(exc)
    try:
        title = HTTPStatus(status).phrase
    except ValueError:  # 499, which nginx named and the standard did not
        title = "Refused"
    return page(title, f"<p>{escape(message)}</p>", status=status)


def _signin_page(error: str = "", status: int = 200) -> HTMLResponse:
    said = f'<p class="error" role="alert">{escape(error)}</p>' if error else ""
    body = (
        "<h1>Sign in</h1>"
        "<p>With an API key of your tenant (<code>gradwire keys create</code> makes one).</p>"
        f"{said}"
        '<form method="post" action="/signin" class="signin">'
        '<label>API key <input type="password" name="key" autocomplete="off" required></label>'
        '<button type="submit">Sign in</button></form>'
    )
    return page("Sign in", body, signed_in=False, status=status)


def _same_origin(request: Request) -> bool:
    """Whether a form came from this dashboard: an ``Origin`` header, where the browser sends one,
    naming this very host (the cookie is SameSite=Strict besides)."""
    origin = request.headers.get("origin")
    if origin is None or origin == "null":
        return origin is None
    host = request.headers.get("host", "")
    return origin.split("://", 1)[-1] == host
