"""``MTLConfig``: every knob of the multi-task model (``blendrank mtl train --config/--set``).

Defaults are sized for a 2-core CPU: a 1M-impression world log (100k shown rows) trains in a
couple of minutes. See ``docs/mtl.md`` for the model, ESMM and the position tower.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Self

from pydantic import Field, field_validator, model_validator

from blendrank.config import SEED_MAX, BaseConfig

ModelName = Literal["mmoe", "ple", "shared_bottom"]
MODEL_NAMES: tuple[str, ...] = ("mmoe", "ple", "shared_bottom")
LABEL_PREFIX = "label_"

__all__ = ["MODEL_NAMES", "MTLConfig", "ModelName"]


def _strip(names: list[str], what: str) -> list[str]:
    out = [n.removeprefix(LABEL_PREFIX) for n in names]
    if any(not n for n in out):
        raise ValueError(f"{what}: objective names must not be empty")
    if len(set(out)) != len(out):
        raise ValueError(f"{what}: {out} contains duplicates")
    return out


class MTLConfig(BaseConfig):
    """Hyper-parameters of the multi-task ranking model (MMoE / PLE / shared-bottom)."""

    # ---- what to model
    model: ModelName = Field(
        default="mmoe",
        description="Architecture: `mmoe` (multi-gate mixture of experts, the default), `ple` "
        "(progressive layered extraction) or `shared_bottom`.",
    )
    objectives: list[str] | None = Field(
        default=None,
        description="Objectives to model, e.g. [click, order] (a `label_` prefix is accepted). "
        "Null: every `label_*` column of the training data.",
    )
    regression: list[str] | None = Field(
        default=None,
        description="Objectives modelled as regression (MSE on standardised log1p(y); output "
        "`est_<name>` in the label's units, not a probability). Null: every modelled label with a "
        "value outside {0, 1} in the training data (e.g. KuaiRand's play_time_ms).",
    )
    esmm: dict[str, str] = Field(
        default_factory=lambda: {"order": "click"},
        description="ESMM pairs `child: parent`: the child head is a conditional rate (pCVR) and "
        "pred_child = pred_parent * pCVR is trained against label_child on all impressions "
        "(pCVR is never trained on parent-positive rows only). Pairs whose child label is absent "
        "are ignored; {} disables ESMM.",
    )
    task_weights: dict[str, float] = Field(
        default_factory=dict,
        description="Loss weight per objective (default 1 each); the loss is the weighted mean "
        "of the per-task mean losses.",
    )

    # ---- position tower
    position_bias_tower: bool = Field(
        default=True,
        description="Training-only position tower: learned per-position effects on each "
        "`position_bias_objectives` task (see position_mode; position 1 is the reference). "
        "Omitted at inference, so predictions are 'as if shown at position 1'. Needs a "
        "`position` column; ignored when the data has none.",
    )
    position_mode: Literal["logit", "examination"] = Field(
        default="logit",
        description="How the position tower enters: `logit` adds a per-position bias to the "
        "logit (shallow tower); `examination` multiplies the probability by a learned "
        "examination factor in (0, 1] (PAL), which matches a click = examined x relevant log.",
    )
    position_bias_objectives: list[str] = Field(
        default_factory=lambda: ["click"],
        description="Objectives that get the position effect (those absent from the data are "
        "ignored). Through ESMM it also reaches their children (pCTCVR).",
    )
    position_dropout: float = Field(
        default=0.0,
        ge=0.0,
        lt=1.0,
        description="Training only: hide each row's position with this probability; hidden "
        "rows share one learned 'some position' effect (the mean level, not the rank). When "
        "the logging policy ranked on taste the features cannot see, the position tower "
        "otherwise soaks up that taste as position effect and the towers learn less of it; on "
        "hidden rows they must learn it, which ranks the candidates never shown better. "
        "0 keeps every position.",
    )
    max_position: int = Field(
        default=20,
        ge=2,
        description="Positions above this share the last position-bias bucket.",
    )

    # ---- architecture
    embedding_dim: int = Field(
        default=8, ge=1, description="Embedding width of every categorical feature."
    )
    id_features: list[str] = Field(
        default_factory=list,
        description="Extra non-`f_*` columns encoded as categorical features (e.g. [user_id, "
        "item_id]); rare values (< `min_count`) share the OOV embedding, which is also what "
        "cold (unseen) users and items get.",
    )
    expert_dims: list[int] = Field(
        default_factory=lambda: [64, 32],
        description="Hidden widths of each expert MLP (MMoE, PLE) or of the shared bottom.",
    )
    wide: bool = Field(
        default=True,
        description="Wide & deep: add a per-task linear part (one weight per categorical value "
        "and per numeric feature, as in the logistic baseline) to every task's raw output, so "
        "the deep part only has to learn interactions.",
    )
    n_experts: int = Field(default=4, ge=1, description="MMoE: number of shared experts.")
    ple_levels: int = Field(default=2, ge=1, description="PLE: extraction levels (CGC layers).")
    ple_shared_experts: int = Field(default=2, ge=1, description="PLE: shared experts per level.")
    ple_task_experts: int = Field(
        default=1, ge=1, description="PLE: task-specific experts per task and level."
    )
    tower_dims: list[int] = Field(
        default_factory=lambda: [32],
        description="Hidden widths of each task tower (then a linear output unit).",
    )
    oov_dropout: float = Field(
        default=0.0,
        ge=0.0,
        lt=1.0,
        description="Training only: replace each categorical value by OOV (index 0) with this "
        "probability, so the OOV embeddings learn what unseen (cold) values look like and rare "
        "values are not memorised.",
    )
    dropout: float = Field(
        default=0.0, ge=0.0, lt=1.0, description="Dropout after every hidden layer."
    )

    # ---- optimisation
    epochs: int = Field(default=20, ge=1, description="Maximum passes over the training rows.")
    patience: int = Field(
        default=2,
        ge=1,
        description="Early stopping: stop after this many epochs without a lower validation "
        "loss; the best epoch's weights are kept.",
    )
    batch_size: int = Field(default=1024, ge=1, description="Rows per Adam step.")
    lr: float = Field(default=2e-3, gt=0, description="Adam learning rate.")
    wide_lr: float | None = Field(
        default=None,
        gt=0,
        description="Adam learning rate of the wide part (null: `lr`).",
    )
    weight_decay: float = Field(
        default=0.0, ge=0.0, description="L2 penalty on the dense (MLP) weights (AdamW-style)."
    )
    embedding_l2: float = Field(
        default=1e-5,
        ge=0.0,
        description="L2 penalty, added to the loss, on the embedding rows and wide weights used "
        "in a batch (mean over rows of their squared norms) and on the wide numeric weights; "
        "keeps rare values near zero.",
    )
    seed: int = Field(default=0, ge=0, le=SEED_MAX, description="Seed of initialisation, dropout and shuffling.")

    # ---- data
    read_batch_rows: int = Field(
        default=16_384, ge=1, description="Rows per Parquet record batch read from disk."
    )
    shuffle_buffer_rows: int = Field(
        default=131_072,
        ge=1,
        description="Training rows (after the shown-row filter) held in the shuffle buffer; rows "
        "are shuffled within it, so memory is bounded by this, not by the data size.",
    )
    split: tuple[float, float, float] = Field(
        default=(0.7, 0.15, 0.15),
        description="Train/valid/test fractions of requests by `ts` when the data is one Parquet "
        "dataset rather than a directory with train/valid/test.parquet.",
    )
    features: Path | None = Field(
        default=None,
        description="FeatureSchema YAML. Null: `features.yaml` next to the data when present, "
        "otherwise inferred from the first training record batch (FeatureSchema.infer).",
    )
    max_int_categories: int = Field(
        default=100,
        ge=1,
        description="Schema inference: integer `f_*` columns with at most this many distinct "
        "values are categorical, others numeric.",
    )
    max_vocab: int | None = Field(
        default=100_000,
        ge=1,
        description="Inferred schema and id_features: keep at most this many values per "
        "categorical feature (most frequent in training); null keeps all.",
    )
    min_count: int = Field(
        default=1,
        ge=1,
        description="Categorical values seen fewer times in training map to OOV; a floor on "
        "every categorical feature's own min_count (declared, inferred and id_features).",
    )
    device: Literal["cpu", "cuda", "auto"] = Field(
        default="cpu", description="Torch device; `auto` picks CUDA when available."
    )
    threads: int | None = Field(
        default=None,
        ge=1,
        description="torch intra-op threads during training (null: torch's default).",
    )

    @field_validator("objectives", "regression")
    @classmethod
    def _names(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return None
        if not value:
            raise ValueError("must name at least one objective (or be null)")
        return _strip(value, "objectives")

    @field_validator("position_bias_objectives")
    @classmethod
    def _pos_names(cls, value: list[str]) -> list[str]:
        return _strip(value, "position_bias_objectives")

    @field_validator("esmm")
    @classmethod
    def _esmm(cls, value: dict[str, str]) -> dict[str, str]:
        pairs = {
            k.removeprefix(LABEL_PREFIX): v.removeprefix(LABEL_PREFIX) for k, v in value.items()
        }
        for child, parent in pairs.items():
            if not child or not parent:
                raise ValueError("esmm: objective names must not be empty")
            if child == parent:
                raise ValueError(f"esmm: {child!r} cannot be its own parent")
            if parent in pairs:
                raise ValueError(
                    f"esmm: chains are not supported ({child!r} -> {parent!r} -> "
                    f"{pairs[parent]!r}); the parent must be a plain binary objective"
                )
        return pairs

    @field_validator("task_weights")
    @classmethod
    def _weights(cls, value: dict[str, float]) -> dict[str, float]:
        out = {k.removeprefix(LABEL_PREFIX): float(v) for k, v in value.items()}
        bad = {k: v for k, v in out.items() if not v >= 0}
        if bad:
            raise ValueError(f"task weights must be >= 0, got {bad}")
        return out

    @field_validator("expert_dims", "tower_dims")
    @classmethod
    def _dims(cls, value: list[int]) -> list[int]:
        if any(d < 1 for d in value):
            raise ValueError(f"layer widths must be >= 1, got {value}")
        return value

    @field_validator("split")
    @classmethod
    def _split(cls, value: tuple[float, float, float]) -> tuple[float, float, float]:
        if any(v <= 0 for v in value) or abs(sum(value) - 1.0) > 1e-6:
            raise ValueError(f"split fractions must be > 0 and sum to 1, got {list(value)}")
        return value

    @model_validator(mode="after")
    def _expert_dims_nonempty(self) -> Self:
        if not self.expert_dims:
            raise ValueError("expert_dims must have at least one layer")
        return self
