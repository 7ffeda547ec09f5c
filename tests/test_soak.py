"""The service soak (benchmarks/serve_soak.py): real uvicorn server on loopback, concurrent
clients, RSS sampled. ``make test`` skips it (``-m "not soak"``); run it with
``pytest -m soak tests/test_soak.py``. Figures: docs/reliability.md, docs/benchmarks.md."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("uvicorn")
pytest.importorskip("httpx")

ROOT = Path(__file__).resolve().parents[1]


def run_soak(tmp_path: Path, *args: str, timeout: float) -> dict:
    out = tmp_path / "soak.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "serve_soak.py"), "--json-out", str(out), *args],
                          check=False, capture_output=True, text=True, timeout=timeout, env=env)
    assert out.exists(), proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads(out.read_text())
    assert proc.returncode == (0 if summary["ok"] else 1)
    return summary


def check(summary: dict) -> None:
    assert summary["ok"], summary["problems"]
    assert summary["status_5xx"] == 0 and not summary["transport_errors"] and summary["server_alive"]
    assert summary["requests"] > 0 and summary["by_kind"].get("rank 200", 0) > 0
    assert any(k.startswith("bad:") and k.endswith("422") for k in summary["by_kind"])
    assert summary["by_kind"].get("reload_good 200") and summary["by_kind"].get("reload_corrupt 422")
    assert summary["growth_after_warmup_mb"] <= summary["max_growth_mb"]
    # the slow-client attack ran alongside: the server closed and the attack replaced connections,
    # and the server's open files stayed bounded
    assert summary["slow_client_connections"].get("opened", 0) > summary["slow_clients"]
    assert summary["server_fds_max"] <= summary["server_fds_bound"]


@pytest.mark.soak
@pytest.mark.serve
def test_soak_one_minute(tmp_path: Path) -> None:
    summary = run_soak(tmp_path, "--minutes", "1", "--warmup-s", "20", "--sample-s", "2", "--reload-every-s", "10",
                       timeout=600)
    check(summary)
    assert summary["rss_samples"] >= 20
