"""The business objective, declared once: what a shown page is worth, which metrics may not
fall, and the hand-set production fusion that is the baseline and the serving fallback.

Every consumer reads it and none writes the goal again: GRADE's R_prior (the page's expected
value under the predictions), R_post and Stage 1 (its realised value from logged labels) and its
guard rails, static search's objective, IntegratedRL-MTF's reward, the benches' value metric and
guard-rail check, and ``export``'s fallback weights. A world supplies its own objective (its true
value); a log gets it from ``objective.yaml`` beside the data or ``--objective FILE``
(docs/objective.md).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from blendrank.config import BaseConfig, format_validation_error, load_yaml
from blendrank.errors import ConfigError

OBJECTIVE_FILE = "objective.yaml"
LEGACY_PRODUCTION_FILE = "production.yaml"
PRICE = "price"
#: How ``log_objective``'s source starts when no objective file was found (the stated default).
DEFAULT_SOURCE = "default:"
#: Business metric -> the objective terms it is a total or a ratio of (guard-rail names).
METRIC_TERMS: dict[str, str] = {"ctr": "click", "cvr": "order/click", "opm": "order", "gpm": "order*price"}
#: R_post label of a price term: ``label_gmv``, or ``label_order * price`` when the log has none.
PRICE_TERM_LABELS: dict[str, str] = {"order*price": "gmv"}


def term_factors(term: str) -> list[str]:
    """``"order*price"`` -> ``["order", "price"]``: the behaviours (and price) a term multiplies."""
    return [f.strip() for f in term.split("*")]


class Objective(BaseConfig):
    """The value of a shown page = Σ_pos d(pos) · Σ_terms value[term] · E[term | item at pos]."""

    value: dict[str, float] = Field(
        description="Term -> value of one unit of it. A term is a behaviour name (a label_<name> column: "
        "click, order, long_view, like, or a continuous one such as play_time_ms) or a behaviour times "
        "price, e.g. 'order*price' (GMV, price in units of price_scale). Negative values are costs (e.g. hate).")
    discount: Literal["log2", "none"] = Field(
        "log2", description="Position discount d(pos) of the page value: 1/log2(pos+1) or none.")
    page_size: int = Field(10, ge=1, description="Positions of a page that are valued (and NDCG's cut-off).")
    guardrails: dict[str, float] = Field(
        default_factory=dict,
        description="Metric -> largest allowed relative loss against production, e.g. {ctr: 0.005, cvr: 0.005, "
        "opm: 0}. A metric is ctr, cvr, opm, gpm, a term, or a ratio 'num/den' of two terms.")
    production_weights: dict[str, float] | None = Field(
        None, description="The hand-set production fusion: fusion input -> weight. Its keys are the fusion "
        "inputs (a pred_<name> per behaviour, plus 'price' to fuse price). Null: equal weights over every "
        "behaviour with a pred_ column.")
    price_scale: float | None = Field(
        None, gt=0, description="Unit of price in GMV terms and as a fusion input; null: the training log's median price.")

    @field_validator("value")
    @classmethod
    def _terms(cls, value: dict[str, float]) -> dict[str, float]:
        if not any(v != 0 for v in value.values()):
            raise ValueError("needs at least one term with a non-zero value, e.g. {click: 1.0}")
        for term in value:
            factors = term_factors(term)
            if not all(factors) or factors.count(PRICE) > 1 or factors == [PRICE]:
                raise ValueError(f"term {term!r}: write a behaviour name or 'behaviour*price' (e.g. 'order*price')")
        return value

    @field_validator("guardrails")
    @classmethod
    def _rails(cls, value: dict[str, float]) -> dict[str, float]:
        for metric, tol in value.items():
            if not 0 <= tol < 1:
                raise ValueError(f"guardrails[{metric!r}] = {tol}: the allowed relative loss must be in [0, 1)")
        return value

    @field_validator("production_weights")
    @classmethod
    def _production(cls, value: dict[str, float] | None) -> dict[str, float] | None:
        if value is not None and (not value or any(w < 0 for w in value.values()) or sum(value.values()) <= 0):
            raise ValueError("production_weights must be non-negative with a positive sum")
        return value

    @model_validator(mode="after")
    def _rail_terms(self) -> Objective:
        for metric in self.guardrails:
            for term in self.rail_terms(metric).split("/"):
                if not term or any(not f for f in term_factors(term)):
                    raise ValueError(f"guardrails: {metric!r} is not ctr, cvr, opm, gpm, a term or 'num/den'")
        return self

    # ------------------------------------------------------------------ what consumers read
    @staticmethod
    def rail_terms(metric: str) -> str:
        """A guard-rail metric as terms: ``"cvr"`` -> ``"order/click"``; a term stays itself."""
        return METRIC_TERMS.get(metric, metric)

    @property
    def fuses_price(self) -> bool:
        return self.production_weights is not None and PRICE in self.production_weights

    def fusion_behaviours(self, available: list[str]) -> list[str]:
        """The behaviours whose predictions are fused, in order: the production formula's, else
        every ``available`` one."""
        if self.production_weights is None:
            return list(available)
        return [k for k in self.production_weights if k != PRICE]

    def production_vector(self, inputs: list[str]) -> np.ndarray:
        """``[K]`` production weights over ``inputs`` (summing to 1; equal when none are declared)."""
        if self.production_weights is None:
            return np.full(len(inputs), 1.0 / len(inputs))
        unknown = sorted(set(self.production_weights) - set(inputs))
        if unknown:
            raise ConfigError(f"objective production_weights name {unknown}, which are not fusion inputs {inputs}")
        w = np.array([float(self.production_weights.get(k, 0.0)) for k in inputs])
        return w / w.sum()

    def prior_coefs(self, predicted: list[str], has_price: bool) -> tuple[dict[str, float], list[str]]:
        """R_prior's terms: those whose behaviours all have predictions (``predicted``) and, for
        price terms, a price. Returns (term -> value, the terms it cannot value)."""
        have = set(predicted) | ({PRICE} if has_price else set())
        coefs = {t: v for t, v in self.value.items() if v != 0 and set(term_factors(t)) <= have}
        return coefs, [t for t in self.value if t not in coefs and self.value[t] != 0]

    def post_weights(self, labels: list[str], has_price: bool) -> tuple[dict[str, float], list[str]]:
        """R_post's (and Stage 1's) label weights: a behaviour term is its ``label_<name>``, a
        price term its GMV label (``label_gmv`` or order·price). Returns (label -> value, the
        terms no logged label carries)."""
        have = set(labels)
        out: dict[str, float] = {}
        missing = []
        for term, v in self.value.items():
            if v == 0:
                continue
            label = PRICE_TERM_LABELS.get(term, term)
            derivable = term in PRICE_TERM_LABELS and has_price and "order" in have
            if label in have or derivable:
                out[label] = out.get(label, 0.0) + v
            else:
                missing.append(term)
        return out, missing

    def grade_guardrails(self) -> dict[str, float]:
        """The guard rails in R_prior's terms: ``{"click": 0.005, "order/click": 0.005, ...}``."""
        return {self.rail_terms(m): tol for m, tol in self.guardrails.items()}

    def describe(self) -> str:
        terms = " + ".join(f"{v:g}·{t}" for t, v in self.value.items())
        rails = ", ".join(f"{m} ≥ −{tol:.2%}" for m, tol in self.guardrails.items()) or "none"
        prod = ("equal weights" if self.production_weights is None
                else ", ".join(f"{k} {w:g}" for k, w in self.production_weights.items()))
        return f"value = Σ d(pos)·({terms}), d = {self.discount}; guard rails: {rails}; production: {prod}"

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json", exclude_none=True), sort_keys=False)


# ---------------------------------------------------------------------------- log objectives
def load_objective(path: str | Path) -> Objective:
    """An objective from a YAML file; ConfigError naming the file and field on any mistake."""
    path = Path(path)
    try:
        content = load_yaml(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the objective file ({exc.strerror or exc})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text; save the objective file as UTF-8 YAML") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from None
    if not isinstance(content, dict):
        raise ConfigError(f"{path}: expected a mapping with a 'value:' section (see docs/objective.md)")
    try:
        return Objective.model_validate(content)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, str(path))) from None


def _from_production_file(path: Path) -> Objective:
    """A legacy ``production.yaml`` (``weights:`` and optionally ``objectives:``) as an objective
    whose value and production weights are those weights."""
    try:
        content = load_yaml(path.read_text(encoding="utf-8")) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: unreadable ({exc})") from None
    if not isinstance(content, dict) or not isinstance(content.get("weights"), dict):
        raise ConfigError(f"{path}: expected a mapping with a 'weights: {{objective: weight}}' section; "
                          f"better, write {OBJECTIVE_FILE} (docs/objective.md)")
    weights = {str(k): float(v) for k, v in content["weights"].items()}
    order = content.get("objectives") or list(weights)
    weights = {k: weights.get(k, 0.0) for k in order}
    try:
        return Objective(value=weights, production_weights=weights)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, str(path))) from None


def log_objective(data: str | Path | None, explicit: str | Path | None = None,
                  default_value: dict[str, float] | None = None) -> tuple[Objective, str]:
    """The objective of a log and where it came from: ``explicit`` (``--objective``), else
    ``objective.yaml`` beside the data, else a legacy ``production.yaml`` there, else the default
    (value = equal weights over ``default_value``'s behaviours, equal production weights).
    ``data=None`` (an in-memory table) has no folder to look in: explicit, else the default."""
    if explicit is not None:
        return load_objective(explicit), str(explicit)
    names = list(default_value or {"click": 1.0})
    value = default_value or {n: 1.0 / len(names) for n in names}
    if data is None:
        return (Objective(value=value),
                f"{DEFAULT_SOURCE} no objective given with the table, so value = equal weights "
                "over "
                f"{names} and production = equal weights; pass objective=Objective(...) or an "
                "objective YAML path")
    data = Path(data)
    folder = data if data.is_dir() else data.parent
    # Beside the data: in its folder, or for a directory of shards also one level up (a world's
    # objective.yaml sits next to its logs/, where Parquet readers of logs/ never see it).
    for candidate in (folder / OBJECTIVE_FILE, *([folder.parent / OBJECTIVE_FILE] if data.is_dir() else [])):
        if candidate.is_file():
            return load_objective(candidate), str(candidate)
    if (folder / LEGACY_PRODUCTION_FILE).is_file():
        return (_from_production_file(folder / LEGACY_PRODUCTION_FILE),
                f"{folder / LEGACY_PRODUCTION_FILE} (read as the objective's value and production weights; "
                f"write {OBJECTIVE_FILE} instead, see docs/objective.md)")
    return (Objective(value=value),
            f"{DEFAULT_SOURCE} no {OBJECTIVE_FILE} beside {data}, so value = equal weights over "
            f"{names} and production = "
            f"equal weights; write {folder / OBJECTIVE_FILE} or pass --objective FILE (docs/objective.md)")
