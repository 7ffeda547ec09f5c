"""Training checkpoints: atomic writes, exact resume, and the non-finite guard.

A checkpoint is one file, ``<dir>/checkpoint.pt``, holding everything a trainer needs to continue
as if it had never stopped: model and optimiser state, the RNG states (torch, numpy, Python and
any ``torch.Generator`` / ``numpy.random.Generator`` the trainer owns) and its position (stage,
epoch, step, batch). It is written by rank 0 only, to a temp file in the same directory that is
then ``os.replace``-d over the previous one, so a crash (even ``kill -9``) mid-write leaves the
previous checkpoint intact. A state with a NaN/inf anywhere is refused, never written.

Trainers call :func:`check_finite` after ``backward`` (after DDP has averaged the gradients, so
every rank takes the same decision) and before ``optimizer.step``: a non-finite loss or gradient
norm raises :class:`NonFiniteError` naming the step and the batch.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import tempfile
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from blendrank import distributed as dist
from blendrank.errors import BlendrankError, ConfigError, DataError

CHECKPOINT_FILE = "checkpoint.pt"
FORMAT, VERSION = "blendrank.checkpoint", 1


class NonFiniteError(BlendrankError):
    """A loss or gradient became NaN/inf; nothing from that step was applied or saved."""


# ------------------------------------------------------------------------------ non-finite guard


def grad_norm(params: Iterable[torch.nn.Parameter]) -> torch.Tensor:
    """Total L2 norm of the gradients of ``params`` (0 when none has a gradient)."""
    grads = [p.grad.detach().reshape(-1) for p in params if p.grad is not None]
    if not grads:
        return torch.zeros(())
    return torch.linalg.vector_norm(torch.cat(grads).float())


def check_finite(loss: torch.Tensor | float, params: Iterable[torch.nn.Parameter], where: str,
                 norm: torch.Tensor | None = None) -> None:
    """Raise :class:`NonFiniteError` when ``loss`` or the gradient norm of ``params`` (or the
    precomputed ``norm``) is NaN/inf. ``where`` names the trainer, step and batch."""
    loss_v = float(loss.detach()) if isinstance(loss, torch.Tensor) else float(loss)
    norm_v = float(grad_norm(params) if norm is None else norm)
    if not (np.isfinite(loss_v) and np.isfinite(norm_v)):
        what = "loss" if not np.isfinite(loss_v) else "gradient"
        raise NonFiniteError(
            f"{where}: non-finite {what} (loss={loss_v}, gradient norm={norm_v}); the step was not "
            "applied and no checkpoint was written from it. Lower the learning rate, check the batch "
            "for NaN/inf inputs, or resume from the last checkpoint with a changed config")


def _non_finite_path(obj: Any, path: str = "") -> str | None:
    """Dotted path of the first floating tensor / array holding a NaN or inf, else None (plain
    floats may legitimately be inf, e.g. "best loss so far" before the first epoch)."""
    if isinstance(obj, torch.Tensor):
        return path if obj.is_floating_point() and not bool(torch.isfinite(obj).all()) else None
    if isinstance(obj, np.ndarray):
        return path if obj.dtype.kind == "f" and not np.isfinite(obj).all() else None
    if isinstance(obj, Mapping):
        items: Iterable[tuple[Any, Any]] = obj.items()
    elif isinstance(obj, (list, tuple)):
        items = enumerate(obj)
    else:
        return None
    for k, v in items:
        found = _non_finite_path(v, f"{path}.{k}" if path else str(k))
        if found is not None:
            return found
    return None


# ------------------------------------------------------------------------------------ RNG state


def _np_state_to_tensor(state: tuple) -> dict[str, Any]:
    name, keys, pos, has_gauss, gauss = state
    return {"name": name, "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)), "pos": int(pos),
            "has_gauss": int(has_gauss), "gauss": float(gauss)}


def rng_state() -> dict[str, Any]:
    """The global RNG states (torch CPU and CUDA, numpy legacy, Python ``random``)."""
    out: dict[str, Any] = {"torch": torch.get_rng_state(), "numpy": _np_state_to_tensor(np.random.get_state()),
                           "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["cuda"] = torch.cuda.get_rng_state_all()
    return out


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore what :func:`rng_state` captured."""
    torch.set_rng_state(state["torch"])
    s = state["numpy"]
    np.random.set_state((s["name"], s["keys"].numpy().astype(np.uint32), s["pos"], s["has_gauss"], s["gauss"]))
    random.setstate(_as_tuple(state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_tuple(x: Any) -> Any:
    return tuple(_as_tuple(v) for v in x) if isinstance(x, (list, tuple)) else x


def generator_state(gen: np.random.Generator) -> dict[str, Any]:
    """A numpy ``Generator``'s bit-generator state (ints kept as strings: they exceed 64 bits)."""
    return json.loads(json.dumps(gen.bit_generator.state, default=int), parse_int=str)


def set_generator_state(gen: np.random.Generator, state: Mapping[str, Any]) -> None:
    def back(x: Any) -> Any:
        if isinstance(x, dict):
            return {k: back(v) for k, v in x.items()}
        return int(x) if isinstance(x, str) and x.lstrip("-").isdigit() else x

    gen.bit_generator.state = back(dict(state))


def fingerprint(config: Any) -> str:
    """Short hash of a config (a pydantic model or JSON-able value): a checkpoint resumes only
    the run it was written by."""
    text = config.model_dump_json() if hasattr(config, "model_dump_json") else json.dumps(config, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class RunInput:
    """Something a run was fed besides its config (its data, its objective), as the checkpoint
    records it: a checkpoint resumes only a run fed the same ``digest``. ``description`` says in
    words what it was (shown when they differ)."""

    what: str  # "data", "objective"
    digest: str
    description: str

    def record(self) -> dict[str, str]:
        return {"digest": self.digest, "description": self.description}


def objective_input(objective: Any) -> RunInput:
    """The objective (a pydantic model or JSON-able value) a run optimises, as a RunInput."""
    text = (objective.model_dump_json(exclude_none=True) if hasattr(objective, "model_dump_json")
            else json.dumps(objective, sort_keys=True, default=str))
    brief = text if len(text) <= 120 else text[:117] + "..."
    return RunInput("objective", fingerprint(objective), brief)


# -------------------------------------------------------------------------------- checkpointer


class Checkpointer:
    """Save / load the single checkpoint of one training run in ``directory``.

    ``every``: save every N optimiser steps (trainers also save at natural boundaries: epoch and
    stage ends). ``directory=None`` disables checkpointing (``save`` is a no-op, ``load`` gives
    None). ``trainer``, ``config_hash`` and the ``inputs`` (data, objective) are stored and
    checked on load: a checkpoint resumes only the run that wrote it."""

    def __init__(self, directory: str | Path | None, trainer: str, config_hash: str, every: int = 100,
                 resume: bool = True, inputs: Sequence[RunInput] = ()):
        if every < 1:
            raise ConfigError(f"checkpoint_every must be >= 1 (got {every})")
        self.directory = None if directory is None else Path(directory)
        self.trainer, self.config_hash, self.every, self.resume = trainer, config_hash, every, resume
        self.inputs = tuple(inputs)
        self.saves = 0

    @property
    def path(self) -> Path | None:
        return None if self.directory is None else self.directory / CHECKPOINT_FILE

    def due(self, step: int) -> bool:
        """True when the optimiser step count ``step`` (1-based) is a multiple of ``every``."""
        return self.directory is not None and step > 0 and step % self.every == 0

    def save(self, state: Mapping[str, Any]) -> None:
        """Write ``state`` atomically (rank 0 only; other ranks wait at a barrier). Raises
        :class:`NonFiniteError` (writing nothing) when any tensor in it is NaN/inf."""
        if self.directory is None:
            return
        bad = _non_finite_path({k: v for k, v in state.items() if k != "rng"})
        if bad is not None:
            raise NonFiniteError(f"{self.trainer}: refusing to write a checkpoint with a non-finite value at {bad}; "
                                 f"the previous checkpoint ({self.path}) is kept")
        rngs = dist.gather_objects(state.get("rng"))  # RNG streams differ per rank (data, dropout)
        if dist.is_main():
            blob = {"format": FORMAT, "version": VERSION, "trainer": self.trainer, "config_hash": self.config_hash,
                    "inputs": {i.what: i.record() for i in self.inputs},
                    "world_size": dist.world_size(), "state": {**state, "rng": rngs}}
            atomic_torch_save(blob, self.path)
        self.saves += 1
        dist.barrier()

    def load(self) -> dict[str, Any] | None:
        """The saved state when resuming and a checkpoint exists, else None. A checkpoint of
        another trainer or config is a :class:`ConfigError` naming the file and the fix."""
        path = self.path
        if path is None or not self.resume:
            return None
        # Rank 0 reads (the directory need not be shared between machines) and broadcasts the
        # state, or the error, so that every rank takes the same path.
        try:
            found = self._read(path) if dist.is_main() else None
        except BlendrankError as exc:
            found = exc
        found = dist.broadcast_object(found)
        if isinstance(found, BlendrankError):
            raise found
        if found is None:
            return None
        state, world = found
        if world != dist.world_size():
            raise ConfigError(f"{path}: written by a run with {world} process(es), this one has "
                              f"{dist.world_size()}; resume with --nproc_per_node x --nnodes = {world}, "
                              "or pass --no-resume to start over")
        return {**state, "rng": state["rng"][dist.rank()]}

    def _read(self, path: Path) -> tuple[dict[str, Any], int] | None:
        if not path.is_file():
            return None
        try:
            blob = torch.load(path, map_location="cpu", weights_only=True)
        except (RuntimeError, OSError, EOFError, ValueError) as exc:
            raise DataError(f"{path}: unreadable checkpoint ({exc}); delete it to start over") from None
        if not isinstance(blob, dict) or blob.get("format") != FORMAT or blob.get("version") != VERSION:
            raise DataError(f"{path}: not a blendrank checkpoint (format {FORMAT} v{VERSION}); delete it to start over")
        saved_inputs = blob.get("inputs") or {}
        if blob["trainer"] == self.trainer:  # other data or objective first: the likelier mix-up
            for run_input in self.inputs:
                saved = saved_inputs.get(run_input.what)
                if saved is not None and saved.get("digest") != run_input.digest:
                    what = run_input.what
                    raise ConfigError(
                        f"{path}: the checkpoint's {what} differs from this run's (it was written "
                        f"for {saved.get('description')}; this run has {run_input.description}); "
                        f"resume with the {what} it was written for, or pass --no-resume (or "
                        "another --out) to start over")
        if blob["trainer"] != self.trainer or blob["config_hash"] != self.config_hash:
            raise ConfigError(
                f"{path}: checkpoint of another run ({blob['trainer']}, config {blob['config_hash']}; this run is "
                f"{self.trainer}, config {self.config_hash}); use the original config to resume, or pass "
                "--no-resume (or another --out) to start over")
        missing = [i.what for i in self.inputs if i.what not in saved_inputs]
        if missing:
            raise ConfigError(
                f"{path}: the checkpoint does not record the {' and '.join(missing)} it was "
                "written for (an older blendrank wrote it), so it cannot be checked against this "
                "run; pass --no-resume (or another --out) to start over")
        return blob["state"], int(blob["world_size"])

    def clear(self) -> None:
        """Remove the checkpoint (rank 0) once the run has finished and written its result."""
        if self.path is not None and dist.is_main():
            self.path.unlink(missing_ok=True)
        dist.barrier()


#: Position keys a trainer's checkpoint may hold, in the order they are named.
POSITION_KEYS = ("stage", "round", "epoch", "batch", "step")


def checkpoint_position(directory: str | Path) -> str | None:
    """Where the checkpoint in ``directory`` stands, in words (``"stage 2, step 3"``), or None
    when there is no readable checkpoint there."""
    try:
        blob = torch.load(Path(directory) / CHECKPOINT_FILE, map_location="cpu", weights_only=True)
        state = blob["state"]
    except (RuntimeError, OSError, EOFError, ValueError, KeyError, TypeError):
        return None
    where = [f"{k} {state[k]}" for k in POSITION_KEYS if isinstance(state.get(k), int)]
    return ", ".join(where) or "saved"


@contextmanager
def sigint_deferred() -> Iterator[None]:
    """Hold Ctrl-C (SIGINT) until the block has ended, then deliver it to the handler that was
    there before. A ``torch.save`` interrupted mid-write fails with a RuntimeError of its zip
    writer that hides the KeyboardInterrupt; held, the write completes and the interrupt follows.
    Only the main thread receives signals in Python: elsewhere the block runs as it is."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: caught.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if caught:
            signal.raise_signal(signal.SIGINT)


def atomic_torch_save(obj: Any, path: str | Path) -> Path:
    """``torch.save`` to a temp file in ``path``'s directory, fsync, then ``os.replace``; a
    Ctrl-C meanwhile is held until the file is in place (:func:`sigint_deferred`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with sigint_deferred():
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                torch.save(obj, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    return path
