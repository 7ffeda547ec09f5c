"""``blendrank serve``: the HTTP fusion service over an export directory."""

from __future__ import annotations

import gc
import importlib.util
import logging
import os
from pathlib import Path

import typer

from blendrank.cli.common import fail, out, user_errors

ModelRootOption = typer.Option(
    None, "--model-root",
    help="Directory that POST /admin/reload may load exports from (paths outside it, and links "
         "leading out of it, are refused). Default: the directory holding --model.")


@user_errors
def serve(
    model: Path = typer.Option(..., "--model", help="Export directory (`blendrank export`)."),
    host: str = typer.Option("127.0.0.1", "--host", help="Interface to bind."),
    port: int = typer.Option(8000, "--port", help="TCP port."),
    reload_token_env: str = typer.Option(
        "BLENDRANK_RELOAD_TOKEN", "--reload-token-env",
        help="Environment variable holding the bearer token for POST /admin/reload (reload is disabled when unset)."),
    backend: str = typer.Option("onnx", "--backend", help="Policy backend: onnx or torch."),
    max_candidates: int = typer.Option(1000, "--max-candidates", min=1, help="Most candidates in one request (422 above)."),
    max_k: int | None = typer.Option(None, "--max-k", min=1, help="Largest page size k (422 above). Default: --max-candidates."),
    max_string_chars: int = typer.Option(256, "--max-string-chars", min=1,
                                         help="Longest item_id string or string feature value (422 above)."),
    max_body_bytes: int = typer.Option(2_000_000, "--max-body-bytes", min=1024, help="Largest request body in bytes (413 above)."),
    threads: int = typer.Option(1, "--threads", min=1, help="Intra-op threads of onnxruntime per request."),
    model_root: Path | None = ModelRootOption,
    max_connections: int = typer.Option(
        1000, "--max-connections", min=1,
        help="Most open client connections; beyond it the one waiting longest for an incomplete "
             "request is closed (lowered to fit the file-descriptor limit)."),
    read_timeout: float = typer.Option(
        10.0, "--read-timeout", min=0.01,
        help="Seconds a client has to send a whole request (headers and body); 408 and close "
             "after."),
    log_format: str = typer.Option(
        "auto", "--log-format",
        help="Logs on stderr, one line per event: json (one JSON object per line: ts, level, "
             "logger, msg; access events add method, path, status, latency_ms, request_id), text, "
             "or auto: text on a terminal, else json."),
    access_log: bool = typer.Option(True, "--access-log/--no-access-log",
                                    help="Log one access event per request."),
    docs: bool = typer.Option(
        False, "--docs/--no-docs",
        help="Serve the Swagger UI (/docs) and ReDoc (/redoc) pages; they load their scripts from "
             "a CDN, so the browser needs the internet. /openapi.json is always served."),
) -> None:
    """Serve POST /v1/rank, POST /v1/weights, GET /healthz, /livez, /readyz, /metrics and POST
    /admin/reload."""
    if backend == "torch" and importlib.util.find_spec("torch") is None:
        fail("--backend torch needs PyTorch: pip install 'blendrank[train]', or use --backend onnx")
    try:
        import uvicorn

        from blendrank.serve.app import create_app
        from blendrank.serve.logs import configure_logging, resolve_format
        from blendrank.serve.server import (
            bind_socket,
            connection_cap,
            raise_fd_limit,
            server_config,
        )
    except ImportError as exc:
        fail(f"serving needs the serve extra: pip install 'blendrank[serve]' ({exc})")
    try:
        fmt = resolve_format(log_format)
    except ValueError as exc:
        fail(f"--log-format: {exc}")
    if backend == "torch":
        import torch

        torch.set_num_threads(int(os.environ.get("BLENDRANK_THREADS", "1")))
    token = os.environ.get(reload_token_env) or None
    # Bind first: a bad or busy port is a clear error before anything is loaded or announced.
    sock = bind_socket(host, port)
    try:
        app = create_app(model, reload_token=token, backend=backend, max_body_bytes=max_body_bytes,
                         max_candidates=max_candidates, max_k=max_k, max_string_chars=max_string_chars,
                         threads=threads, model_root=model_root, docs=docs, access_log=access_log)
    except BaseException:
        sock.close()  # free the port now, not whenever the failed frame is collected
        raise
    r = app.state.blendrank["ranker"]
    raise_fd_limit()
    cap = connection_cap(max_connections)
    if cap < max_connections:
        out.print(f"note: --max-connections lowered to {cap} to fit the open-file limit "
                  "(ulimit -n)", highlight=False)
    port = sock.getsockname()[1]
    out.print(f"serving {model} ({'model ok' if r.model_ok else 'FALLBACK weights: ' + str(r.fallback_reason)}; "
              f"reload {'enabled' if token else 'disabled, set $' + reload_token_env}) on http://{host}:{port}",
              markup=False, highlight=False)
    # onnxruntime and the model (and torch, with --backend torch) leave ~200k long-lived
    # objects; a full garbage collection that scans them took 0.1-0.4 s on a 2-core box,
    # stalling every in-flight request. Request handling alone rarely triggers one (4
    # young-generation passes in 20k requests, measured), but a reload's allocations can.
    # Freezing them keeps them out of the scans.
    gc.collect()
    gc.freeze()
    configure_logging(fmt)  # once the service starts (a failed start leaves logging as it was)
    logging.getLogger("blendrank.serve").info(
        "serving", extra={"model_ok": r.model_ok, "host": host, "port": port, "backend": backend})
    # One process, one event loop: ranking is CPU-bound and single-threaded, so scale out with
    # more processes (behind a load balancer) rather than threads.
    # log_config=None: the logging set up above, not uvicorn's own handlers.
    config = server_config(app, max_connections=max_connections, read_timeout_s=read_timeout,
                           log_config=None)
    uvicorn.Server(config).run(sockets=[sock])
