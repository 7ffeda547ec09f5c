"""Run scripts/train_job.py in a subprocess (plain or under torchrun) for the scale-out and
kill-and-resume tests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
JOB = ROOT / "scripts" / "train_job.py"


def job_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env["OMP_NUM_THREADS"] = "1"
    env["PYTHONPATH"] = str(ROOT / "src") + os.pathsep + env.get("PYTHONPATH", "")
    return env


def job_cmd(args: list[str], nproc: int = 1) -> list[str]:
    if nproc == 1:
        return [sys.executable, str(JOB), *args]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", str(JOB), *args]


def run_inline(args: list[str]) -> dict[str, Any]:
    """The 1-process job in this process (saves a Python start-up); same numbers as a subprocess
    (one intra-op thread in both)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("train_job", JOB)
    assert spec is not None and spec.loader is not None
    job = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(job)
    return {**job.run(job.parse(args)), "world_size": 1}


def run_job(args: list[str], nproc: int = 1, timeout: float = 120) -> dict[str, Any]:
    """Run to completion and return ``<out>/result.json``."""
    r = subprocess.run(job_cmd(args, nproc), env=job_env(), cwd=ROOT, capture_output=True, text=True,
                       timeout=timeout, check=False)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    out = Path(args[args.index("--out") + 1])
    return json.loads((out / "result.json").read_text())
