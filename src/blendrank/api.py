"""The Python API: what ``blendrank train``, ``eval`` and the ranker do, in-process.

``train`` goes through the same function as ``blendrank train`` (the method registry, the
objective, the same resolved defaults), so a policy trained here is the one the command line
trains on the same data and config::

    from blendrank import train, load_policy, evaluate, rank

    policy = train("grade", "runs/world/logs")        # or a pyarrow.Table / pandas.DataFrame
    policy.weights(table)                              # per-request fusion weights
    rank(policy, table, k=10)                          # the page each request would show
    policy.save("runs/policy"); policy = load_policy("runs/policy")
    evaluate(policy, world="marketplace", preset="quick")   # the bench's simulated A/B

Tables are contract logs (docs/data_contract.md): one row per candidate, grouped by
``request_id``, with the ``pred_<name>`` columns the policy fuses and the ``f_user_*`` /
``f_ctx_*`` features its state reads.
"""

from __future__ import annotations

import json
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from blendrank.algos.grade.trainer import GradePolicy
from blendrank.algos.integrated_rl.logs import LogPolicy
from blendrank.bench.fit import STATIC_FILE, StaticWeights, Trained, config_type, fit_log
from blendrank.bench.logs import LogBenchConfig, run_log_bench
from blendrank.bench.world import BenchConfig, run_world_bench
from blendrank.config import BaseConfig, load_config
from blendrank.data.slates import to_slates
from blendrank.errors import ConfigError, DataError
from blendrank.fusion.formulas import fuse, fusion_features, top_k
from blendrank.jsonio import write_json
from blendrank.objective import OBJECTIVE_FILE, Objective, load_objective
from blendrank.tracking import RUN_FILE, run_record

__all__ = ["Policy", "evaluate", "load_policy", "rank", "train"]

WORLDS = ("marketplace", "kuairand-sim")


def as_log(data: Any) -> pa.Table | Path:
    """A contract log given as a pyarrow Table, a pandas DataFrame (converted with
    ``pyarrow.Table.from_pandas``) or a path (a file, a directory of shards or of
    train/valid/test); DataError for anything else or a path that does not exist."""
    if isinstance(data, pa.Table):
        return data
    if isinstance(data, (str, Path)):
        path = Path(data)
        if not path.exists():
            raise DataError(
                f"{path}: no such file or directory; give a contract log "
                "(Parquet/CSV file or directory)"
            )
        return path
    # A DataFrame can only come from an imported pandas, so pandas is never imported here.
    pandas = sys.modules.get("pandas")
    if pandas is not None and isinstance(data, pandas.DataFrame):
        return pa.Table.from_pandas(data, preserve_index=False)
    raise DataError(
        f"data: expected a pyarrow.Table, a pandas.DataFrame or a path, got {type(data).__name__}"
    )


def _table(data: Any, what: str = "table") -> pa.Table:
    log = as_log(data)
    if isinstance(log, Path):
        raise DataError(
            f"{what}: give the requests as a pyarrow.Table or pandas.DataFrame, not a path"
        )
    return log


def _resolve_config(cls: type[BaseConfig], config: Any, overrides: list[str] | None) -> BaseConfig:
    """``config`` (None, a dict, a YAML path or an instance of ``cls``) then ``overrides``
    (``["stage2.beta=0"]``, as ``--set``): the same validation, and errors, as the CLI."""
    if isinstance(config, BaseConfig):
        if not isinstance(config, cls):
            raise ConfigError(
                f"config: this method takes a {cls.__name__}, got a {type(config).__name__}"
            )
        config = config.model_dump(mode="json")
    if config is None or isinstance(config, dict):
        return load_config(cls, None, overrides, base=config)
    if isinstance(config, (str, Path)):
        return load_config(cls, config, overrides)
    raise ConfigError(
        f"config: expected a dict, a YAML path or a {cls.__name__}, got {type(config).__name__}"
    )


@dataclass
class Policy:
    """A trained fusion policy: ``model`` is a GRADE-family policy (grade, ltr, grade:<variant>),
    a static weight vector (static_search) or an IntegratedRL-MTF policy (integrated_rl)."""

    method: str
    model: Trained
    objective: Objective | None = None  # the objective it was trained for
    record: dict[str, Any] = field(
        default_factory=dict
    )  # run.json: resolved config, version, commit, seed…

    @property
    def inputs(self) -> list[str]:
        """Fusion inputs the weights apply to, in order (``pred_<name>`` columns, then price)."""
        return list(self.model.spec.inputs)

    @property
    def history(self) -> list[dict[str, Any]]:
        """The training curves (Stage 1 epochs, Stage 2 steps, or IntegratedRL rounds)."""
        return list(getattr(self.model, "history", []))

    def _check(self, table: pa.Table) -> None:
        spec = self.model.spec
        need = [
            "request_id",
            *(f"pred_{o}" for o in spec.objectives),
            *(["price"] if spec.use_price else []),
        ]
        missing = [c for c in need if c not in table.column_names]
        if missing:
            raise DataError(
                f"the table has no {', '.join(missing)} column(s); this policy fuses {self.inputs} "
                "(contract columns, docs/data_contract.md)"
            )
        if table.num_rows == 0:
            raise DataError("the table has no rows; give at least one request's candidates")

    def weights_array(self, table: pa.Table) -> tuple[np.ndarray, np.ndarray]:
        """Request ids ``[B]`` (first-appearance order) and fusion weights ``[B, K]`` over
        :attr:`inputs` (rows on the simplex: the Dirichlet mean for GRADE, the one searched
        vector for static_search, the normalised powers for integrated_rl)."""
        table = _table(table)
        self._check(table)
        m = self.model
        if isinstance(m, GradePolicy):
            batch = m.batch(table)
            return batch.request_id, m.weights(batch).numpy().astype(np.float64)
        if isinstance(m, StaticWeights):
            ids = to_slates(table, []).request_id
            return ids, np.broadcast_to(m.weights, (len(ids), len(m.weights))).copy()
        ids, _, action = m.scores(table)
        powers = action[:, : len(m.setup.objectives)].numpy()
        return ids, powers / np.maximum(powers.sum(1, keepdims=True), 1e-12)

    def weights(self, table: Any) -> pa.Table:
        """One row per request: ``request_id`` and ``weight_<input>`` for each fusion input."""
        ids, w = self.weights_array(table)
        cols = {"request_id": pa.array(ids.tolist())}
        cols.update({f"weight_{name}": pa.array(w[:, i]) for i, name in enumerate(self.inputs)})
        return pa.table(cols)

    def scores(self, table: pa.Table) -> tuple[torch.Tensor, torch.Tensor]:
        """Fused scores ``[B, L]`` and the real-candidate mask ``[B, L]``, requests and candidates
        in :func:`blendrank.data.slates.to_slates` order."""
        table = _table(table)
        self._check(table)
        m = self.model
        if isinstance(m, GradePolicy):
            batch = m.batch(table)
            return fuse(batch.features, m.weights(batch)), batch.mask
        sl = to_slates(
            table,
            [f"pred_{o}" for o in m.spec.objectives] + (["price"] if m.spec.use_price else []),
        )
        if isinstance(m, StaticWeights):
            parts = [sl.columns[f"pred_{o}"] for o in m.spec.objectives]
            if m.spec.use_price:
                parts.append(sl.columns["price"] / m.spec.price_scale)
            feats = fusion_features(torch.stack(parts, -1), m.spec.formula, m.spec.floor)
            return fuse(feats, torch.as_tensor(m.weights, dtype=torch.float32)), sl.mask
        _, scores, _ = m.scores(table)
        return scores.float(), sl.mask

    def save(self, out_dir: str | Path) -> Path:
        """Write the policy directory (what ``blendrank train`` writes: the policy files,
        ``objective.yaml`` and ``run.json``); ``load_policy`` reads it back, and ``blendrank
        export`` / ``eval`` take it."""
        out = self.model.save(out_dir)
        if self.objective is not None:
            (out / OBJECTIVE_FILE).write_text(self.objective.to_yaml())
        if self.record:
            write_json(out / RUN_FILE, self.record)
        return out


def train(
    method: str,
    data: Any,
    objective: Objective | str | Path | None = None,
    config: Any = None,
    *,
    overrides: list[str] | None = None,
    mapping: str | Path | None = None,
    log: Callable[[str], None] | None = None,
    on_row: Callable[[dict[str, Any]], None] | None = None,
    checkpoint_dir: str | Path | None = None,
    checkpoint_every: int = 50,
    resume: bool = True,
) -> Policy:
    """Train ``method`` (``grade``, ``ltr``, ``grade:<variant>``, ``static_search`` or
    ``integrated_rl``) on a contract log, exactly as ``blendrank train`` does.

    Args:
        data: a pyarrow Table or pandas DataFrame (split by time into train/valid/test), or a
            path (a train/valid/test directory, or one log split by time).
        objective: an :class:`~blendrank.objective.Objective`, an objective YAML, or None for
            ``objective.yaml`` beside a path (else the default: equal value over the predicted
            behaviours).
        config: the method's config (GRADEConfig, StaticSearchConfig, IntegratedRLConfig), as
            an instance, a dict or a YAML path; ``overrides`` as ``--set`` (``"stage2.beta=0"``).
        mapping: YAML column mapping for a path (``--mapping``).
        log: called with each progress message (default: silent).
        on_row: called with each training history row as it is logged (GRADE family: Stage 1
            epochs, Stage 2 steps), e.g. to feed an experiment tracker.
        checkpoint_dir: write resumable checkpoints there every ``checkpoint_every`` optimiser
            steps, and (``resume``) continue from one found there, as ``blendrank train`` does
            in ``--out`` (docs/scaling.md).
    """
    cfg = _resolve_config(config_type(method), config, overrides)
    say = log or (lambda s: None)
    fitted = fit_log(
        method,
        as_log(data),
        cfg,
        mapping=Path(mapping) if mapping else None,
        objective=objective,
        log=say,
        on_row=on_row,
        checkpoint_dir=Path(checkpoint_dir) if checkpoint_dir else None,
        checkpoint_every=checkpoint_every,
        resume=resume,
    )
    assert fitted is not None  # one process: rank 0
    resolved = fitted.config.model_dump(mode="json")
    where = (
        str(data)
        if isinstance(data, (str, Path))
        else f"in-memory table ({fitted.n_rows:,} train rows)"
    )
    record = run_record(
        "train",
        resolved,
        resolved.get("seed"),
        method=method,
        data=where,
        objective_source=fitted.goal.source,
    )
    return Policy(method, fitted.policy, fitted.goal.objective, record)


def load_policy(path: str | Path) -> Policy:
    """A policy directory written by ``blendrank train`` or :meth:`Policy.save`."""
    path = Path(path)
    if not path.is_dir():
        raise DataError(
            f"{path}: no such policy directory; train one with `blendrank train` or blendrank.train"
        )
    record: dict[str, Any] = {}
    if (path / RUN_FILE).is_file():
        try:
            record = json.loads((path / RUN_FILE).read_text())
        except ValueError:
            record = {}  # a damaged record does not make the policy unusable
    model: Trained
    if (path / STATIC_FILE).is_file():
        model, method = StaticWeights.load(path), "static_search"
    elif (path / "setup.json").is_file():
        model, method = LogPolicy.load(path), "integrated_rl"
    else:
        model, method = GradePolicy.load(path), "grade"
    objective = load_objective(path / OBJECTIVE_FILE) if (path / OBJECTIVE_FILE).is_file() else None
    return Policy(record.get("method", method), model, objective, record)


def rank(policy: Policy, table: Any, k: int = 10) -> pa.Table:
    """The top ``k`` candidates of every request under ``policy``: ``request_id``, ``item_id``,
    ``rank`` (1 = best) and the fused ``score``, requests in first-appearance order."""
    if k < 1:
        raise ConfigError(f"k must be >= 1 (got {k})")
    table = _table(table)
    if "item_id" not in table.column_names:
        raise DataError("the table has no item_id column (contract columns, docs/data_contract.md)")
    scores, mask = policy.scores(table)
    sl = to_slates(table, [])  # the same request/candidate order as the scores
    idx, valid = top_k(scores, mask, k)
    rows = np.take_along_axis(sl.row, idx.numpy(), axis=1)
    keep = valid.numpy()
    b = np.broadcast_to(np.arange(len(sl))[:, None], rows.shape)[keep]
    return pa.table(
        {
            "request_id": pa.array(sl.request_id[b].tolist()),
            "item_id": table["item_id"].take(pa.array(rows[keep])),
            "rank": pa.array(
                np.broadcast_to(np.arange(1, rows.shape[1] + 1), rows.shape)[keep].astype(np.int32)
            ),
            "score": pa.array(torch.gather(scores, 1, idx).numpy()[keep].astype(np.float64)),
        }
    )


def evaluate(
    policy: Policy,
    *,
    world: str | None = None,
    preset: str = "default",
    data: str | Path | None = None,
    mapping: str | Path | None = None,
    objective: str | Path | None = None,
    methods: Sequence[str] = ("production",),
    config: dict[str, Any] | None = None,
    seed: int | None = None,
    out: str | Path | None = None,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Measure ``policy`` as the arm ``policy`` beside production (and ``methods``), exactly as
    ``blendrank eval`` does: a world's simulated A/B (``world``, ``preset``) or the offline
    metrics of a log's test split (``data``). ``config``: BenchConfig / LogBenchConfig fields.
    Returns the bench result (``bench.json``, also written to ``out`` when given)."""
    if (world is None) == (data is None):
        raise ConfigError(
            "evaluate: give exactly one of world= (simulated A/B) or data= (offline on a log)"
        )
    if not isinstance(policy.model, GradePolicy):
        raise ConfigError(
            f"evaluate: {policy.method} policies are measured by `blendrank bench`; evaluate takes "
            "a GRADE-family policy (grade, ltr, grade:<variant>)"
        )
    say = log or (lambda s: None)
    base: dict[str, Any] = {"methods": list(methods), **(config or {})}
    with tempfile.TemporaryDirectory(prefix="blendrank-eval-") as scratch:
        out_dir = Path(out) if out is not None else Path(scratch)
        if world is not None:
            if world not in WORLDS:
                raise ConfigError(f"world {world!r}: unknown world; available: {', '.join(WORLDS)}")
            cfg = load_config(
                BenchConfig,
                None,
                None,
                base={"world": world, "preset": preset, "seed": seed, **base},
            )
            return run_world_bench(cfg, out_dir, log=say, policies={"policy": policy.model})
        lcfg = load_config(
            LogBenchConfig,
            None,
            None,
            base={"seed": seed or 0, "objective": str(objective) if objective else None, **base},
        )
        log_path = as_log(data)
        if isinstance(log_path, pa.Table):
            raise DataError(
                "evaluate: data= takes the log's path (a file or a train/valid/test directory)"
            )
        return run_log_bench(
            lcfg,
            log_path,
            Path(mapping) if mapping else None,
            out_dir,
            log=say,
            policies={"policy": policy.model},
        )
