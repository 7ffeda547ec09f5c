"""Configuration of the ``kuairand-sim`` world and the names its arrays are indexed by.

Every parameter (pool, users, session / exit model, calibration, business value and the models'
hyper-parameters) is a field of :class:`KuaiRandSimConfig`; the fitted models are cached on disk
under digests of it (:meth:`KuaiRandSimConfig.digest`). Equations and defaults are in
``docs/worlds.md``.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
from pydantic import Field, field_validator

from blendrank.config import BaseConfig
from blendrank.data.kuairand import PRODUCTION_WEIGHTS
from blendrank.fusion.formulas import Formula
from blendrank.mtl.config import MTLConfig
from blendrank.prerank import PrerankConfig
from blendrank.worlds.kuairand_sim_teacher import POST_CLICK, TeacherConfig

#: Fusion inputs: the deployed predictor's unconditional probabilities, in this order.
FUSION_INPUTS: tuple[str, ...] = tuple(PRODUCTION_WEIGHTS)
#: Teacher output columns of the truth arrays ``[..., T]``.
TRUTH = ("click", *POST_CLICK, "hate", "watch_m")
#: Feedbacks realised per impression (and reported as per-impression rates).
FEEDBACKS = ("click", *POST_CLICK, "hate")
STREAM_LOGS, STREAM_VALID, STREAM_EVAL, STREAM_CALIBRATION = 1, 3, 4, 5


def _student_mtl() -> MTLConfig:
    return MTLConfig(model="mmoe", objectives=list(FUSION_INPUTS), esmm={k: "click" for k in FUSION_INPUTS if k != "click"},
                     embedding_dim=8, expert_dims=[64, 32], n_experts=3, tower_dims=[32], epochs=6, patience=2,
                     wide_lr=0.02, position_bias_tower=False, seed=0)


def _logger_mtl() -> MTLConfig:
    return _student_mtl().model_copy(update={"expert_dims": [32], "n_experts": 2, "epochs": 3, "wide": True})


class SessionSpec(BaseConfig):
    """Satisfaction and exit model (per impression; see docs/worlds.md)."""

    beta: float = Field(0.9, ge=0, lt=1, description="Memory of the satisfaction S ← β·S + (1−β)·z(u).")
    exit_satisfaction: float = Field(1.0, ge=0, description="λ: exit-logit decrease per unit of satisfaction.")
    # κ, θ̄, σ_θ, η and ρ: fitted to the log's impressions per user-day (kuairand_sim_calibrate; docs/worlds.md).
    fatigue: float = Field(0.0, ge=0, description="κ: exit-logit increase per log(1 + impressions so far).")
    exit_base: float = Field(-3.76, description="θ̄: mean exit logit at zero satisfaction and no fatigue.")
    exit_user_sd: float = Field(0.0, ge=0, description="σ_θ: per-user random exit-logit offset.")
    exit_activity: float = Field(1.0, ge=0, description="η: exit-logit decrease per SD of the user's real "
                                 "(shrunk, log) impressions per active day.")
    max_impressions: int = Field(600, ge=1, description="Cap on impressions per session.")
    thinning: float = Field(0.0105, gt=0, le=1, description="ρ: share of a session's impressions the real log keeps "
                            "(KuaiRand-Pure is a sample of each user-day); not used by the simulation, only to "
                            "compare simulated session lengths with the log's impressions per user-day.")
    utility: dict[str, float] = Field(
        default_factory=lambda: {"watch": 1.0, "like": 2.0, "follow": 4.0, "comment": 3.0, "forward": 3.0,
                                 "profile_enter": 1.0, "hate": -6.0, "no_click": -0.3},
        description="Per-impression utility u = watch·log(1+s)/log(61) + Σ w_k·feedback_k (+ no_click if not clicked).")

    @field_validator("utility")
    @classmethod
    def _utility_keys(cls, value: dict[str, float]) -> dict[str, float]:
        allowed = {"watch", "hate", "no_click", *POST_CLICK}
        unknown, missing = set(value) - allowed, {"watch", "hate", "no_click"} - set(value)
        if unknown or missing:
            raise ValueError(f"utility keys must be among {sorted(allowed)} and include watch, hate and no_click "
                             f"(unknown: {sorted(unknown)}, missing: {sorted(missing)})")
        return value


class CalibrationSpec(BaseConfig):
    """How the teacher's outputs are calibrated to the real log (see docs/worlds.md)."""

    platt: bool = Field(True, description="Apply the teacher's per-head Platt scaling (fitted on the validation "
                        "days: click and hate on every impression, post-click rates on the clicked ones).")
    match_log_rates: bool = Field(True, description="Shift each head's logit by a constant so that the per-impression "
                                  "rates of logging-policy sessions match the log's (tab `tab`): the simulated logger "
                                  "picks the teacher's favourites far better than Kuaishou's production did.")
    tab: int | None = Field(1, description="Log rows whose rates are the targets (the feed tab; null: every row).")
    sessions: int = Field(300, ge=10, description="Logging-policy sessions simulated per fitting round.")
    rounds: int = Field(2, ge=1, description="Fitting rounds (exits depend on the rates, so the shown videos move a little).")


class ValueSpec(BaseConfig):
    """Business value of an impression, in seconds-equivalent (teacher expectation for oracles)."""

    watch: float = Field(1.0, description="Per second watched.")
    like: float = Field(120.0, description="Per like.")
    follow: float = Field(600.0, description="Per follow.")
    comment: float = Field(300.0, description="Per comment.")
    forward: float = Field(600.0, description="Per forward.")
    profile_enter: float = Field(20.0, description="Per profile visit.")
    hate: float = Field(-900.0, description="Per hate (negative).")

    def post_click(self) -> np.ndarray:
        """Weights of the post-click feedbacks in :data:`POST_CLICK` order (long_view has none)."""
        return np.array([getattr(self, k) if k != "long_view" else 0.0 for k in POST_CLICK])


class KuaiRandSimConfig(BaseConfig):
    """Every parameter of the kuairand-sim world (see docs/worlds.md)."""

    seed: int = Field(0, description="Seed of the user sample, per-user exit offsets and every stream.")
    pool_min_rows: int = Field(5, ge=1, description="Pool: videos with at least this many logged impressions.")
    max_pool: int | None = Field(None, ge=10, description="Keep only the most-logged videos of the pool (null: all).")
    max_users: int | None = Field(None, ge=10, description="Sample this many of the logged users (null: all).")
    candidates: int = Field(50, ge=2, description="N: candidates the prerank returns per request.")
    page_size: int = Field(6, ge=1, description="K: videos per page, consumed in order.")
    max_watch_s: float = Field(600.0, gt=0, description="Cap on one sampled watch time (s).")
    long_view_s: float = Field(18.0, gt=0, description="long_view = watch ≥ min(this, video duration).")
    exam_decay: float = Field(0.9, gt=0, le=1, description="Position discount γ^(p−1) of the myopic page value "
                              "that the oracles maximise (the chance of still being there).")
    fusion: Formula = Field("log_linear", description="Fusion formula of every arm.")
    fusion_floor: float = Field(1e-3, gt=0, description="Floor b_k inside log(p + b_k).")
    production_weights: dict[str, float] = Field(default_factory=lambda: dict(PRODUCTION_WEIGHTS),
                                                 description="Production fusion weights per input (normalised).")
    logging_concentration: float = Field(200.0, gt=0, description="κ₀: logged weights ~ Dir(κ₀·production).")
    logger_max_rows: int | None = Field(None, ge=1000, description="Subsample the real training days to this many "
                                        "impressions for the logger MTL (tests); null uses all.")
    log_sessions: int = Field(1500, ge=10, description="Logged sessions the student is trained on.")
    prerank: PrerankConfig = Field(default_factory=PrerankConfig, description="Prerank (two-tower on real clicks).")
    teacher: TeacherConfig = Field(default_factory=TeacherConfig, description="Ground-truth teacher fit.")
    student: MTLConfig = Field(default_factory=_student_mtl, description="The deployed student MTL.")
    logger: MTLConfig = Field(default_factory=_logger_mtl, description="The logging policy's MTL (fitted on the real log).")
    session: SessionSpec = Field(default_factory=SessionSpec, description="Session / exit model.")
    calibration: CalibrationSpec = Field(default_factory=CalibrationSpec, description="Calibration of the "
                                         "teacher's outputs to the real log's rates.")
    value: ValueSpec = Field(default_factory=ValueSpec, description="Business value.")
    cache_dir: str | None = Field(None, description="Where fitted teacher / logger / student are cached "
                                  "(null: $BLENDRANK_CACHE or ~/.cache/blendrank).")

    @property
    def fusion_inputs(self) -> list[str]:
        return list(FUSION_INPUTS)

    @property
    def objectives(self) -> list[str]:
        return list(FUSION_INPUTS)

    def digest(self, *exclude: str) -> str:
        data = self.model_dump(mode="json", exclude={"cache_dir", *exclude})
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:12]
