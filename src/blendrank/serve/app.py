"""The HTTP service (docs/serving.md): FastAPI over a :class:`~blendrank.serve.ranker.Ranker`.

Endpoints: ``POST /v1/rank``, ``POST /v1/weights``, ``GET /healthz``, the probes ``GET /livez``
(the process answers) and ``GET /readyz`` (503 unless the model serves: not on the fallback
weights, not reloading), ``GET /metrics`` (Prometheus text format, written by hand) and ``POST
/admin/reload`` (bearer token; the new directory is loaded with a sha256 and parity check before
it is swapped in atomically). ``/docs`` and ``/redoc`` only with ``docs=True``; ``/openapi.json``
always.

Every request gets a request id (the client's ``X-Request-ID`` when it sends a usable one, else a
new one), returned in the ``X-Request-ID`` header and, with ``access_log=True``, written in one
access event (:mod:`blendrank.serve.logs`).

Bad input gets a 4xx with a message, never a 5xx: the body size is bounded (413); the candidate
count, page size and string lengths are bounded, and malformed JSON, unknown or missing features,
wrong types and out-of-range values give 422 with a message naming the field.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr

from blendrank.errors import BlendrankError, DataError
from blendrank.serve.logs import ACCESS_LOGGER
from blendrank.serve.model_root import confined_export_dir
from blendrank.serve.payload import Limits, ParsedRequest
from blendrank.serve.ranker import ExportError, Ranker

FeatureValue = StrictInt | StrictFloat | StrictStr | StrictBool | None
ItemId = StrictInt | StrictStr
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
KNOWN_PATHS = ("/v1/rank", "/v1/weights", "/healthz", "/livez", "/readyz", "/metrics", "/admin/reload")
# Recorded in /metrics when the client went away before a response was sent (nginx's code for
# "client closed request"); no such response is ever sent.
CLIENT_CLOSED = 499
# /healthz fields that name server paths or quote exceptions: shown only with the reload token.
PRIVATE_STATUS_FIELDS = ("path", "fallback_reason")
# A client's X-Request-ID is kept when it is at most this long and printable ASCII without
# spaces (it goes into logs and a response header), else replaced by a fresh one.
MAX_REQUEST_ID_CHARS = 128
log = logging.getLogger("blendrank.serve")
access_log = logging.getLogger(ACCESS_LOGGER)


# The request/response models document the API (OpenAPI schema); the hot path does not build
# them: the body is decoded with one json.loads and checked column by column in numpy
# (blendrank.serve.payload), and the response is written as bytes.
class ColumnarCandidates(BaseModel):
    """Candidates as columns (the fast path): ``item_id`` and one list per fusion input, all of
    the same length: ``pred_<objective>`` in [0, 1] for every fused objective, and ``price`` (≥ 0)
    when the policy fuses price."""

    model_config = ConfigDict(extra="allow", json_schema_extra={
        "example": {"item_id": ["a", "b"], "pred_click": [0.3, 0.1], "pred_order": [0.02, 0.05]}})
    item_id: list[ItemId] = Field(description="Candidate ids (integers or strings).")


class Candidate(BaseModel):
    """A candidate as an object: ``item_id`` plus ``pred_<objective>`` for every fused objective
    (and ``price`` when the policy fuses price). Other fields are rejected."""

    model_config = ConfigDict(extra="allow")
    item_id: ItemId


class RankRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    user: dict[str, FeatureValue] = Field(description="Every user/context feature of the model (null = missing).")
    candidates: ColumnarCandidates | list[Candidate] = Field(
        description="Candidates with their MTL predictions: columns (fast) or a list of objects.")
    k: StrictInt = Field(10, ge=1, description="Page size (at most the service's --max-k).")


class RankResponse(BaseModel):
    item_ids: list[ItemId] = Field(description="The page, best first.")
    scores: list[float] = Field(description="Fused scores of the page.")
    weights: dict[str, float] = Field(description="Fusion weights used, per fusion input.")
    fallback: bool = Field(description="True when the static fallback weights were served.")


class WeightsResponse(BaseModel):
    weights: dict[str, float]
    fallback: bool


class ReloadRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    path: StrictStr = Field(description="Export directory to load (written by `blendrank export`): "
                            "relative to the service's model root, or absolute inside it.")


class Metrics:
    """Counters, a latency histogram and running weight means, rendered as Prometheus text."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.requests: dict[tuple[str, int], int] = defaultdict(int)
        self.buckets: dict[str, list[int]] = defaultdict(lambda: [0] * (len(LATENCY_BUCKETS) + 1))
        self.lat_sum: dict[str, float] = defaultdict(float)
        self.weight_sum: dict[str, float] = defaultdict(float)
        self.weight_n = 0
        self.fallback_n = 0
        self.reloads: dict[str, int] = defaultdict(int)
        self.batches = 0
        self.batched_requests = 0

    def observe(self, endpoint: str, status: int, seconds: float) -> None:
        with self.lock:
            self.requests[(endpoint, status)] += 1
            b = self.buckets[endpoint]
            for i, le in enumerate(LATENCY_BUCKETS):
                if seconds <= le:
                    b[i] += 1
                    break
            else:
                b[-1] += 1
            self.lat_sum[endpoint] += seconds

    def batch(self, size: int) -> None:
        with self.lock:
            self.batches += 1
            self.batched_requests += size

    def weights(self, w: dict[str, float], fallback: bool) -> None:
        with self.lock:
            for name, v in w.items():
                self.weight_sum[name] += v
            self.weight_n += 1
            self.fallback_n += int(fallback)

    def render(self, ranker: Ranker) -> str:
        lines = ["# HELP blendrank_requests_total HTTP requests by endpoint and status.",
                 "# TYPE blendrank_requests_total counter"]
        with self.lock:
            for (ep, st), n in sorted(self.requests.items()):
                lines.append(f'blendrank_requests_total{{endpoint="{ep}",status="{st}"}} {n}')
            lines += ["# HELP blendrank_request_seconds Request latency.", "# TYPE blendrank_request_seconds histogram"]
            for ep, b in sorted(self.buckets.items()):
                cum = 0
                for le, n in zip(LATENCY_BUCKETS, b):
                    cum += n
                    lines.append(f'blendrank_request_seconds_bucket{{endpoint="{ep}",le="{le}"}} {cum}')
                cum += b[-1]
                lines.append(f'blendrank_request_seconds_bucket{{endpoint="{ep}",le="+Inf"}} {cum}')
                lines.append(f'blendrank_request_seconds_sum{{endpoint="{ep}"}} {self.lat_sum[ep]:.6f}')
                lines.append(f'blendrank_request_seconds_count{{endpoint="{ep}"}} {cum}')
            lines += ["# HELP blendrank_weight_mean Mean fusion weight per input over served requests.",
                      "# TYPE blendrank_weight_mean gauge"]
            for name in ranker.inputs:
                mean = self.weight_sum.get(name, 0.0) / self.weight_n if self.weight_n else 0.0
                lines.append(f'blendrank_weight_mean{{input="{name}"}} {mean:.6f}')
            lines += ["# HELP blendrank_weighted_requests_total Requests whose weights were computed.",
                      "# TYPE blendrank_weighted_requests_total counter",
                      f"blendrank_weighted_requests_total {self.weight_n}",
                      "# HELP blendrank_fallback_requests_total Requests served with the static fallback weights.",
                      "# TYPE blendrank_fallback_requests_total counter",
                      f"blendrank_fallback_requests_total {self.fallback_n}",
                      "# HELP blendrank_rank_batches_total Policy calls of /v1/rank (concurrent requests share one).",
                      "# TYPE blendrank_rank_batches_total counter",
                      f"blendrank_rank_batches_total {self.batches}",
                      "# HELP blendrank_rank_batched_requests_total Requests ranked by those calls.",
                      "# TYPE blendrank_rank_batched_requests_total counter",
                      f"blendrank_rank_batched_requests_total {self.batched_requests}",
                      "# HELP blendrank_reloads_total Model reload attempts by result.",
                      "# TYPE blendrank_reloads_total counter"]
            for res, n in sorted(self.reloads.items()):
                lines.append(f'blendrank_reloads_total{{result="{res}"}} {n}')
        lines += ["# HELP blendrank_model_ok 1 when the policy model is loaded, 0 when serving the fallback.",
                  "# TYPE blendrank_model_ok gauge", f"blendrank_model_ok {int(ranker.model_ok)}"]
        return "\n".join(lines) + "\n"


FastHandler = Callable[[bytes], Awaitable[bytes]]


class _Batcher:
    """Ranks the requests that become ready in the same event-loop turn with one policy call.

    Under concurrent load several connections' requests are parsed in one turn of the loop; each
    is validated on its own, then queued here, and a callback scheduled for the next turn ranks
    the queue as one batch (user encoding, list statistics, the policy and top-K vectorised over
    it). A request alone waits one loop turn, no timer. A user feature value that the Feature
    Center rejects fails only its own request: the batch is then ranked request by request.
    """

    def __init__(self, metrics: Metrics | None = None) -> None:
        # Per event loop: uvicorn runs one, but a test client may run the app on several threads.
        self.pending: dict[asyncio.AbstractEventLoop, list[tuple[Ranker, ParsedRequest, asyncio.Future]]] = {}
        self.metrics = metrics

    def rank(self, ranker: Ranker, parsed: ParsedRequest) -> asyncio.Future:
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        pending = self.pending.setdefault(loop, [])
        if not pending:
            loop.call_soon(self._flush, loop)
        pending.append((ranker, parsed, fut))
        return fut

    def _flush(self, loop: asyncio.AbstractEventLoop) -> None:
        pending = self.pending.pop(loop, [])
        groups: dict[int, list[tuple[Ranker, ParsedRequest, asyncio.Future]]] = {}
        for item in pending:  # one group unless a reload happened in between
            groups.setdefault(id(item[0]), []).append(item)
        for items in groups.values():
            if self.metrics is not None:
                self.metrics.batch(len(items))
            self._run(items)

    def _run(self, items: list[tuple[Ranker, ParsedRequest, asyncio.Future]]) -> None:
        results: list[Any]
        try:
            results = items[0][0].rank_parsed([p for _, p, _ in items])
        except BlendrankError as exc:
            if len(items) > 1:  # a user feature value was rejected: one by one, so only its request fails
                for item in items:
                    self._run([item])
                return
            results = [exc]
        except Exception as exc:  # noqa: BLE001 - a bug: every request of the batch gets it (a 500)
            results = [exc] * len(items)
        for (_, _, fut), res in zip(items, results):
            if fut.done():  # the client has gone
                continue
            if isinstance(res, BaseException):
                fut.set_exception(res)
            else:
                fut.set_result(res)


class _Guard:
    """ASGI middleware: bounds the request body (413), records per-endpoint status and latency,
    gives each request its id (and, with ``log_access``, writes its access event), and serves
    the hot endpoints (``POST /v1/rank``, ``POST /v1/weights``) itself.

    The hot endpoints are plain ``body bytes -> response bytes`` functions called right here:
    routing, dependency solving and response-model handling in FastAPI cost about as much as
    ranking a request, and these endpoints need none of them (they are still in the OpenAPI
    schema, see ``_document``). A :class:`BlendrankError` from a handler is a 422 with its message.
    """

    def __init__(self, app: Any, metrics: Metrics, max_body_bytes: int, fast: dict[str, FastHandler],
                 log_access: bool = False):
        self.app, self.metrics, self.max, self.fast = app, metrics, max_body_bytes, fast
        self.log_access = log_access

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        path = scope.get("path", "")
        endpoint = path if path in KNOWN_PATHS else "other"
        status = 500
        request_id = _request_id(scope.get("headers") or ())

        async def send_wrapped(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message = {**message, "headers": [*message.get("headers", ()), (b"x-request-id", request_id)]}
            await send(message)

        try:
            handler = self.fast.get(path)
            if handler is not None and scope.get("method") != "POST":
                await _send_bytes(send_wrapped, 405, b'{"detail":"Method Not Allowed"}', [(b"allow", b"POST")])
                return
            for name, value in scope.get("headers") or ():
                if name == b"content-length" and (not value.isdigit() or int(value) > self.max):
                    await _send_json(send_wrapped, 413, {"detail": f"request body larger than {self.max} bytes"})
                    return
            # Buffer the (bounded) body.
            chunks, size, more = [], 0, True
            while more:
                message = await receive()
                if message["type"] == "http.disconnect":
                    status = CLIENT_CLOSED
                    return
                chunk = message.get("body", b"")
                size += len(chunk)
                if size > self.max:
                    await _send_json(send_wrapped, 413, {"detail": f"request body larger than {self.max} bytes"})
                    return
                chunks.append(chunk)
                more = message.get("more_body", False)
            body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
            if handler is not None:
                try:
                    out, code = await handler(body), 200
                except BlendrankError as exc:
                    out, code = json.dumps({"detail": str(exc)}).encode(), 422
                await _send_bytes(send_wrapped, code, out)
                return
            replay = {"type": "http.request", "body": body, "more_body": False}
            sent = False

            async def receive_replay() -> dict:
                nonlocal sent
                if not sent:
                    sent = True
                    return replay
                return await receive()

            await self.app(scope, receive_replay, send_wrapped)
        finally:
            seconds = time.perf_counter() - t0
            self.metrics.observe(endpoint, status, seconds)
            if self.log_access:
                # (the path as sent, cut: a client chooses it, a log line must stay bounded)
                access_log.info("request", extra={
                    "method": scope.get("method", ""), "path": path[:200], "status": status,
                    "latency_ms": round(seconds * 1000.0, 3), "request_id": request_id.decode()})


def _request_id(headers: Any) -> bytes:
    """The client's ``X-Request-ID`` when usable (see :data:`MAX_REQUEST_ID_CHARS`), else a new
    random one (32 hex digits)."""
    for name, value in headers:
        if name == b"x-request-id":
            if 0 < len(value) <= MAX_REQUEST_ID_CHARS and all(33 <= c <= 126 for c in value):
                return value
            break
    return uuid.uuid4().hex.encode()


async def _send_bytes(send: Any, status: int, body: bytes, headers: list[tuple[bytes, bytes]] | None = None) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *(headers or [])]})
    await send({"type": "http.response.body", "body": body})


async def _send_json(send: Any, status: int, payload: dict) -> None:
    await _send_bytes(send, status, json.dumps(payload).encode())


def _decode(body: bytes) -> Any:
    """One ``json.loads`` of the (size-bounded) body; malformed or too deeply nested → DataError."""
    try:
        return json.loads(body)
    except RecursionError:
        raise DataError("request body is nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError
        raise DataError(f"request body is not valid JSON ({exc})"[:300]) from None


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def _document(app: FastAPI) -> None:
    """Add the hot endpoints, which :class:`_Guard` serves outside FastAPI's router, to the
    OpenAPI schema with their request and response models."""
    default_openapi = app.openapi

    def ref(model: type[BaseModel]) -> dict[str, str]:
        return {"$ref": f"#/components/schemas/{model.__name__}"}

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = default_openapi()
        comps = schema.setdefault("components", {}).setdefault("schemas", {})
        for model in (RankRequest, RankResponse, WeightsResponse):
            js = model.model_json_schema(ref_template="#/components/schemas/{model}")
            comps.update(js.pop("$defs", {}))
            comps[model.__name__] = js
        comps["Error"] = {"type": "object", "properties": {"detail": {"type": "string"}}, "required": ["detail"]}
        error = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
        for path, summary, response in (
                ("/v1/rank", "Rank candidates: the page (best first), fused scores and the weights used.", RankResponse),
                ("/v1/weights", "The fusion weights for a request (the state reads list statistics of the candidates).",
                 WeightsResponse)):
            schema["paths"][path] = {"post": {
                "summary": summary, "operationId": path.strip("/").replace("/", "_"),
                "requestBody": {"required": True, "content": {"application/json": {"schema": ref(RankRequest)}}},
                "responses": {"200": {"description": "OK", "content": {"application/json": {"schema": ref(response)}}},
                              "413": {"description": "Body larger than --max-body-bytes", **error},
                              "422": {"description": "Invalid request; the message names the field", **error}}}}
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def create_app(export_dir: str | Path | Ranker, reload_token: str | None = None, *, backend: str = "onnx",
               max_body_bytes: int = 2_000_000, max_candidates: int = 1000, max_k: int | None = None,
               max_string_chars: int = 256, threads: int = 1,
               model_root: str | Path | None = None, docs: bool = False, access_log: bool = False) -> Any:
    """Build the service for an export directory (or an already loaded :class:`Ranker`).

    ``reload_token``: bearer token for ``POST /admin/reload`` (and for the server paths in
    ``/healthz``); reload is disabled (403) without one. ``model_root``: the directory reloads
    may load from (default: the one holding the served export). ``max_body_bytes`` bounds the
    request body (413); ``max_candidates`` a request's candidates, ``max_k`` its page size
    (default: ``max_candidates``) and ``max_string_chars`` the length of item ids and string
    feature values (422 naming the field). ``docs``: serve the Swagger UI (``/docs``) and ReDoc
    (``/redoc``) pages, which load their scripts from a CDN (``/openapi.json`` is always served).
    ``access_log``: one access event per request on the ``blendrank.access`` logger.
    """
    limits = Limits(max_candidates=max_candidates, max_k=max_k or max_candidates, max_string_chars=max_string_chars)
    ranker = export_dir if isinstance(export_dir, Ranker) else Ranker.load(export_dir, backend=backend, threads=threads)
    root = Path(model_root) if model_root is not None else Path(ranker.path).resolve().parent
    metrics = Metrics()
    state: dict[str, Any] = {"ranker": ranker, "reloading": False}
    reload_lock = threading.Lock()
    app = FastAPI(title="blendrank", version=str(ranker.manifest.get("blendrank_version", "")),
                  description="Personalized multi-task fusion: per-request fusion weights and blended ranking.",
                  docs_url="/docs" if docs else None, redoc_url="/redoc" if docs else None)
    app.state.blendrank = state
    app.state.metrics = metrics
    app.state.limits = limits

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        errs = [{"loc": list(e.get("loc", ())), "msg": str(e.get("msg", "")), "type": str(e.get("type", ""))}
                for e in exc.errors()[:20]]
        return JSONResponse(status_code=422, content={"detail": errs})

    @app.exception_handler(BlendrankError)
    async def _user_error(_: Request, exc: BlendrankError) -> JSONResponse:
        return JSONResponse(status_code=422, content={"detail": str(exc)})

    # The hot endpoints, served by _Guard on the event loop: ranking takes a fraction of a
    # millisecond, less than a hop to the thread pool. Reload swaps state["ranker"] in one
    # assignment, so a request uses one ranker from start to end.
    batcher = _Batcher(metrics)

    async def rank(body: bytes) -> bytes:
        ranker = state["ranker"]
        res = await batcher.rank(ranker, ranker.parse(_decode(body), limits))
        metrics.weights(res.weights, res.fallback)
        return _dumps({"item_ids": res.item_ids, "scores": res.scores, "weights": res.weights, "fallback": res.fallback})

    async def weights(body: bytes) -> bytes:
        r = state["ranker"]
        w, fb = r.weights([_decode(body)], limits)
        out = dict(zip(r.inputs, w[0].tolist()))
        metrics.weights(out, fb)
        return _dumps({"weights": out, "fallback": fb})

    def token_error(request: Request) -> JSONResponse | None:
        """None when the request carries the reload token, else the 401/403 to send."""
        auth = request.headers.get("authorization", "")
        if reload_token is None:
            return JSONResponse(status_code=403,
                                content={"detail": "reload is disabled (no reload token configured)"})
        if not auth.lower().startswith("bearer "):
            return JSONResponse(status_code=401, content={"detail": "missing bearer token"},
                                headers={"WWW-Authenticate": "Bearer"})
        if not hmac.compare_digest(auth[7:].strip().encode(), reload_token.encode()):
            return JSONResponse(status_code=403, content={"detail": "invalid reload token"})
        return None

    @app.get("/healthz")
    def healthz(request: Request) -> dict[str, Any]:
        """200 while the process serves; ``status`` is ``ok``, or ``degraded`` when the static
        fallback weights are served (``model_ok: false``). The served path and the fallback
        reason are shown only with the reload token (they name server paths)."""
        r = state["ranker"]
        status = {"status": "ok" if r.model_ok else "degraded", **r.status()}
        if token_error(request) is not None:
            for name in PRIVATE_STATUS_FIELDS:
                status.pop(name, None)
        return status

    @app.get("/livez")
    def livez() -> dict[str, str]:
        """200 while the process answers (a liveness probe: restart the process when it fails)."""
        return {"status": "alive"}

    @app.get("/readyz", responses={503: {"description": "Not ready: fallback weights or reloading"}})
    def readyz() -> JSONResponse:
        """200 when the policy model serves; 503 while the static fallback weights are served
        (``/healthz`` says ``degraded`` then, and stays 200) or a reload is in progress (a
        readiness probe: route traffic elsewhere meanwhile)."""
        r = state["ranker"]
        if not r.model_ok:
            return JSONResponse(status_code=503, content={"ready": False, "reason": "fallback"})
        if state["reloading"]:
            return JSONResponse(status_code=503, content={"ready": False, "reason": "reloading"})
        return JSONResponse(content={"ready": True})

    @app.get("/metrics", response_class=PlainTextResponse)
    def prometheus() -> PlainTextResponse:
        return PlainTextResponse(metrics.render(state["ranker"]), media_type="text/plain; version=0.0.4")

    @app.post("/admin/reload")
    def reload(body: ReloadRequest, request: Request) -> JSONResponse:
        """Load, validate (sha256, and ONNX/PyTorch parity where PyTorch is installed) and
        atomically swap in a new export. Runs in the thread pool: requests keep being served by
        the old model meanwhile (``/readyz`` answers 503 until it is done)."""
        denied = token_error(request)
        if denied is not None:
            return denied
        with reload_lock:
            state["reloading"] = True
            try:
                return _reload(body)
            finally:
                state["reloading"] = False

    def _reload(body: ReloadRequest) -> JSONResponse:
        """The reload itself, under ``reload_lock``."""
        old = state["ranker"]
        # The client sees why in words free of server paths and file content (the path as it
        # sent it at most); the server log has the full reason.
        try:
            new = Ranker.load(confined_export_dir(root, body.path), backend=old.backend,
                              strict=True, threads=threads)
        except Exception as exc:  # noqa: BLE001 - a broken directory never takes the service down
            metrics.reloads["rejected"] += 1
            if isinstance(exc, ExportError):
                reason = f"{body.path[:200]!r}: {exc.public}"
            elif isinstance(exc, BlendrankError):  # confined_export_dir: already path-free
                reason = str(exc)
            else:
                reason = f"{type(exc).__name__} while loading the export"
            log.warning("reload of %r rejected: %s", body.path, exc)
            return JSONResponse(status_code=422, content={
                "detail": f"reload rejected, still serving the previous model: {reason}"})
        state["ranker"] = new  # one reference swap: in-flight requests finish on the old ranker
        metrics.reloads["ok"] += 1
        log.info("reloaded %r (model_ok=%s)", body.path, new.model_ok)
        return JSONResponse(content={"status": "reloaded", **new.status()})

    _document(app)
    app.add_middleware(_Guard, metrics=metrics, max_body_bytes=max_body_bytes,
                       fast={"/v1/rank": rank, "/v1/weights": weights}, log_access=access_log)
    return app
