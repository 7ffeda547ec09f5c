"""Run tracking: what produced an output directory (``run.json``), and optional experiment
trackers for training curves (TensorBoard) and parameters/metrics (MLflow).

``run.json`` holds the resolved config, the blendrank version, the git commit of the package's
source tree when it is a git checkout, the seed, a UTC timestamp and the command line, so any
result can be traced to the code and settings that made it.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import subprocess
import sys
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from blendrank import __version__
from blendrank.errors import ConfigError
from blendrank.jsonio import write_json

RUN_FILE = "run.json"
PACKAGE_DIR = Path(__file__).resolve().parent


def git_commit(source: Path = PACKAGE_DIR) -> dict[str, Any] | None:
    """``{"commit", "dirty"}`` of the git checkout holding ``source`` (the package's own files
    tracked there, so an installed copy inside some other repository reports nothing); None
    when there is no git, no checkout, or the files are not tracked in it."""

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(
                ["git", "-C", str(source), *args],
                capture_output=True,
                text=True,
                timeout=10,
                check=False,
            )
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    if git("ls-files", "--error-unmatch", "__init__.py") is None:
        return None
    commit = git("rev-parse", "HEAD")
    if not commit:
        return None
    status = git("status", "--porcelain", "--untracked-files=no", "--", ".")
    return {"commit": commit, "dirty": bool(status)}


def run_record(
    command: str,
    config: Mapping[str, Any],
    seed: int | None,
    argv: list[str] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """The record of one run (see the module docstring); ``extra`` adds fields (method, data…)."""
    record: dict[str, Any] = {
        "command": command,
        "argv": list(sys.argv if argv is None else argv),
        "cwd": os.getcwd(),  # relative paths in argv are relative to it
        "blendrank_version": __version__,
        "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
        "seed": seed,
        **extra,
    }
    git = git_commit()
    if git is not None:
        record["git"] = git
    record["config"] = dict(config)
    return record


def write_run_record(
    out_dir: str | Path,
    command: str,
    config: Mapping[str, Any],
    seed: int | None,
    argv: list[str] | None = None,
    **extra: Any,
) -> Path:
    """Write ``out_dir/run.json`` (atomic) and return its path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / RUN_FILE
    write_json(path, run_record(command, config, seed, argv, **extra))
    return path


def _require(module: str, package: str, flag: str) -> None:
    """ConfigError, before any work, when an optional tracker is not installed."""
    if importlib.util.find_spec(module.split(".")[0]) is None:
        raise ConfigError(
            f"{flag} needs the {package} package, which is not installed; "
            f"`pip install {package}` or drop {flag}"
        )


def scalars(row: Mapping[str, Any]) -> dict[str, float]:
    """The numeric fields of a history row (bools and the row's own counters excluded)."""
    skip = {"stage", "step", "epoch"}
    return {
        k: float(v)
        for k, v in row.items()
        if k not in skip and isinstance(v, (int, float)) and not isinstance(v, bool)
    }


class TensorBoardCurves:
    """Training curves to TensorBoard: each history row's scalars under ``stage<N>/<name>``,
    at its Stage 1 epoch or Stage 2 step. ``writer``: a SummaryWriter-like object (tests)."""

    def __init__(self, log_dir: str | Path, writer: Any = None):
        if writer is None:
            _require("tensorboard", "tensorboard", "--tensorboard")
            writer = importlib.import_module("torch.utils.tensorboard").SummaryWriter(
                log_dir=str(log_dir)
            )
        self.writer = writer

    def __call__(self, row: Mapping[str, Any]) -> None:
        stage = row.get("stage")
        step = row.get("epoch") if stage == 1 else row.get("step")
        if step is None:
            return
        for name, value in scalars(row).items():
            self.writer.add_scalar(f"stage{stage}/{name}", value, int(step))

    def close(self) -> None:
        self.writer.close()


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested config → dotted keys (``stage2.beta``), the form MLflow params take."""
    out: dict[str, Any] = {}
    for k, v in config.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten(v, f"{key}."))
        else:
            out[key] = v
    return out


def check_mlflow() -> None:
    _require("mlflow", "mlflow", "--mlflow")


def log_mlflow(
    run_name: str,
    params: Mapping[str, Any],
    metrics: Mapping[str, float],
    artifacts_dir: str | Path | None = None,
    client: Any = None,
) -> None:
    """One MLflow run (the tracking URI and experiment come from MLflow's own environment,
    ``MLFLOW_TRACKING_URI``, ``MLFLOW_EXPERIMENT_NAME``): ``params`` flattened, final
    ``metrics``, and the output directory as artifacts. ``client``: the mlflow module (tests)."""
    if client is None:
        check_mlflow()
        client = importlib.import_module("mlflow")
    with client.start_run(run_name=run_name):
        # Older MLflow servers reject param values over 500 characters: cut a long one, not fail.
        client.log_params({k: str(v)[:500] for k, v in flatten(params).items()})
        client.log_metrics({k: float(v) for k, v in metrics.items()})
        if artifacts_dir is not None:
            client.log_artifacts(str(artifacts_dir))
