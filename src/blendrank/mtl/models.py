"""Multi-task networks: shared-bottom, MMoE and PLE over the Feature Center's encoding, with
ESMM wiring for post-click conversion and a training-only position tower.

Input. Every categorical feature ``j`` has an embedding table (``cardinality_j x E``, OOV = row
0); the network input is ``x = [e_1(x_1), ..., e_J(x_J), z]`` with ``z`` the standardised numerics.

Backbones (all return one ``h``-dimensional representation per task, ``[N, T, h]``):

* ``shared_bottom``: one MLP shared by every task;
* ``mmoe`` (Ma et al., KDD 2018): ``n_experts`` expert MLPs, and per task ``k`` a softmax gate
  ``g_k(x) = softmax(W_k x)`` mixing them, ``r_k = sum_e g_k,e(x) expert_e(x)``;
* ``ple`` (Tang et al., RecSys 2020): ``ple_levels`` customised gate-control layers; each level
  has ``ple_shared_experts`` shared experts and ``ple_task_experts`` experts per task; task ``k``'s
  gate mixes its own and the shared experts, and (except at the last level) a shared gate mixes
  all experts into the next level's shared input.

A tower MLP per task then maps ``r_k`` to one raw output: a logit for binary tasks, a conditional
logit (pCVR) for ESMM children, a standardised value for regression tasks.

ESMM (Ma et al., SIGIR 2018). For a pair ``child: parent`` (``order: click``)::

    pred_parent = sigmoid(logit_parent)            # pCTR
    pCVR        = sigmoid(logit_child)              # conditional, never trained alone
    pred_child  = pred_parent * pCVR               # pCTCVR, trained on ALL impressions

The product is formed in float32 exactly as written, so ``pred_child == pred_parent * pCVR``
holds bit-for-bit. Its log-loss is computed in log space (``log p = logsigmoid(a) +
logsigmoid(b)``), so tiny products do not underflow.

Position tower. Learned per-position parameters (position 1 fixed as the reference, positions
above ``max_position`` share the last bucket, null/unknown positions have no effect, positions
hidden by ``position_dropout`` share one learned "some position" bucket) enter the
position tasks during training only; at inference they are omitted, i.e. every prediction is "as
if shown at position 1". Two forms (``position_mode``):

* ``logit`` (default): a bias ``b[pos]`` (``b[1] = 0``) added to the task's logit
  (YouTube's shallow tower);
* ``examination``: a factor ``e[pos] = exp(-softplus(theta[pos]))`` in (0, 1] (``e[1] = 1``)
  multiplying the task's probability, ``P(click | pos) = e[pos] * sigmoid(logit)`` (PAL's
  examination hypothesis); through ESMM the children get the same factor.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn

TaskKind = Literal["binary", "esmm", "regression"]

__all__ = [
    "PLE",
    "MMoE",
    "MTLNetwork",
    "NetworkSpec",
    "SharedBottom",
    "TaskLayout",
    "build_layout",
    "task_losses",
]

_LOGP_MAX = -1e-7  # log p is clamped below 0 so log(1 - p) stays finite


# --------------------------------------------------------------------------------- task layout


@dataclass(frozen=True)
class TaskLayout:
    """What each network output means. ``parent[k]`` is the ESMM parent's index (-1: none)."""

    names: tuple[str, ...]
    kinds: tuple[TaskKind, ...]
    parent: tuple[int, ...]

    def __post_init__(self) -> None:
        if not (len(self.names) == len(self.kinds) == len(self.parent)):
            raise ValueError("names, kinds and parent must have the same length")
        for k, (kind, p) in enumerate(zip(self.kinds, self.parent)):
            if kind == "esmm":
                if not 0 <= p < len(self.names) or self.kinds[p] != "binary":
                    raise ValueError(f"task {self.names[k]!r}: ESMM parent must be a binary task")
            elif p != -1:
                raise ValueError(f"task {self.names[k]!r}: only ESMM tasks have a parent")

    def __len__(self) -> int:
        return len(self.names)

    @property
    def probability_tasks(self) -> list[int]:
        """Indices of tasks whose output is a probability (binary and ESMM)."""
        return [k for k, kind in enumerate(self.kinds) if kind != "regression"]

    @property
    def regression_tasks(self) -> list[int]:
        return [k for k, kind in enumerate(self.kinds) if kind == "regression"]

    def index(self, name: str) -> int:
        return self.names.index(name)

    def to_dict(self) -> dict[str, Any]:
        return {"names": list(self.names), "kinds": list(self.kinds), "parent": list(self.parent)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TaskLayout:
        return cls(
            tuple(data["names"]), tuple(data["kinds"]), tuple(int(p) for p in data["parent"])
        )


def build_layout(
    objectives: Sequence[str], regression: Sequence[str], esmm: Mapping[str, str]
) -> TaskLayout:
    """Layout for ``objectives`` (network output order); ``esmm`` maps child -> parent (pairs
    whose child is not modelled are ignored; a modelled child with no modelled binary parent is
    an error)."""
    regression_set = set(regression)
    kinds: list[TaskKind] = []
    parents: list[int] = []
    for name in objectives:
        if name in esmm:
            parent = esmm[name]
            if parent not in objectives:
                raise ValueError(
                    f"ESMM pair {name}: {parent}: the parent {parent!r} is not modelled "
                    f"(objectives: {list(objectives)}); add it or drop the pair (esmm: {{}})"
                )
            if name in regression_set or parent in regression_set:
                raise ValueError(f"ESMM pair {name}: {parent}: both tasks must be binary")
            kinds.append("esmm")
            parents.append(list(objectives).index(parent))
        else:
            kinds.append("regression" if name in regression_set else "binary")
            parents.append(-1)
    return TaskLayout(tuple(objectives), tuple(kinds), tuple(parents))


# ------------------------------------------------------------------------------- building blocks


class GroupedLinear(nn.Module):
    """``G`` independent linear maps applied at once: ``[N, d]`` (shared input) or ``[N, G, d]``
    (one input per group) -> ``[N, G, d_out]``. Initialised like ``nn.Linear``."""

    def __init__(self, groups: int, d_in: int, d_out: int) -> None:
        super().__init__()
        self.groups, self.d_in, self.d_out = groups, d_in, d_out
        bound = 1.0 / math.sqrt(d_in) if d_in else 0.0
        self.weight = nn.Parameter(torch.empty(groups, d_in, d_out).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(groups, d_out).uniform_(-bound, bound))

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() == 2:
            n = x.shape[0]
            w = self.weight.permute(1, 0, 2).reshape(self.d_in, self.groups * self.d_out)
            out = (x @ w).view(n, self.groups, self.d_out)
        else:
            out = torch.bmm(x.transpose(0, 1), self.weight).transpose(0, 1)
        return out + self.bias


class GroupedMLP(nn.Module):
    """``G`` independent ReLU MLPs (a ReLU and optional dropout after every layer)."""

    def __init__(self, groups: int, d_in: int, dims: Sequence[int], dropout: float = 0.0) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for d_out in dims:
            layers += [GroupedLinear(groups, d_in, d_out), nn.ReLU()]
            if dropout:
                layers.append(nn.Dropout(dropout))
            d_in = d_out
        self.net = nn.Sequential(*layers)
        self.d_out = d_in

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.net(x)
        return out


class SharedBottom(nn.Module):
    """One bottom MLP shared by all ``n_tasks`` tasks: ``[N, d] -> [N, T, h]``."""

    def __init__(self, d_in: int, n_tasks: int, dims: Sequence[int], dropout: float = 0.0) -> None:
        super().__init__()
        self.n_tasks = n_tasks
        self.bottom = GroupedMLP(1, d_in, dims, dropout)
        self.d_out = self.bottom.d_out

    def forward(self, x: Tensor) -> Tensor:
        h = self.bottom(x)  # [N, 1, h]
        return h.expand(-1, self.n_tasks, -1)


class MMoE(nn.Module):
    """Multi-gate mixture of experts: ``[N, d] -> [N, T, h]``; ``gates(x)`` -> ``[N, T, E]``."""

    def __init__(
        self, d_in: int, n_tasks: int, n_experts: int, dims: Sequence[int], dropout: float = 0.0
    ) -> None:
        super().__init__()
        self.experts = GroupedMLP(n_experts, d_in, dims, dropout)
        self.gate = GroupedLinear(n_tasks, d_in, n_experts)
        self.d_out = self.experts.d_out

    def gates(self, x: Tensor) -> Tensor:
        return torch.softmax(self.gate(x), dim=-1)

    def forward(self, x: Tensor) -> Tensor:
        experts = self.experts(x)  # [N, E, h]
        return torch.bmm(self.gates(x), experts)  # [N, T, h]


class _CGCLevel(nn.Module):
    """One PLE extraction level (customised gate control)."""

    def __init__(
        self,
        d_in: int,
        n_tasks: int,
        n_task_experts: int,
        n_shared: int,
        dims: Sequence[int],
        dropout: float,
        last: bool,
    ) -> None:
        super().__init__()
        self.n_tasks, self.n_task_experts, self.n_shared = n_tasks, n_task_experts, n_shared
        self.task_experts = GroupedMLP(n_tasks * n_task_experts, d_in, dims, dropout)
        self.shared_experts = GroupedMLP(n_shared, d_in, dims, dropout)
        self.task_gate = GroupedLinear(n_tasks, d_in, n_task_experts + n_shared)
        self.shared_gate = (
            None if last else GroupedLinear(1, d_in, n_tasks * n_task_experts + n_shared)
        )
        self.d_out = self.task_experts.d_out

    def forward(self, task_in: Tensor, shared_in: Tensor) -> tuple[Tensor, Tensor | None]:
        """``task_in`` ``[N, d]`` (first level) or ``[N, T, d]``; ``shared_in`` ``[N, d]``."""
        n, t, p, s = shared_in.shape[0], self.n_tasks, self.n_task_experts, self.n_shared
        if task_in.dim() == 3 and p > 1:
            expert_in = task_in.repeat_interleave(p, dim=1)  # task k's input for its p experts
        else:
            expert_in = task_in
        task_e = self.task_experts(expert_in)  # [N, T*P, h]
        shared_e = self.shared_experts(shared_in)  # [N, S, h]
        h = task_e.shape[-1]
        own = torch.cat(
            [task_e.view(n, t, p, h), shared_e.unsqueeze(1).expand(n, t, s, h)], dim=2
        )  # [N, T, P+S, h]
        gate = torch.softmax(self.task_gate(task_in), dim=-1)  # [N, T, P+S]
        task_out = (gate.unsqueeze(-1) * own).sum(2)  # [N, T, h]
        if self.shared_gate is None:
            return task_out, None
        every = torch.cat([task_e, shared_e], dim=1)  # [N, T*P+S, h]
        g = torch.softmax(self.shared_gate(shared_in), dim=-1)  # [N, 1, T*P+S]
        return task_out, torch.bmm(g, every).squeeze(1)


class PLE(nn.Module):
    """Progressive layered extraction: stacked CGC levels, ``[N, d] -> [N, T, h]``."""

    def __init__(
        self,
        d_in: int,
        n_tasks: int,
        levels: int,
        n_task_experts: int,
        n_shared: int,
        dims: Sequence[int],
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.levels = nn.ModuleList()
        for level in range(levels):
            cgc = _CGCLevel(
                d_in, n_tasks, n_task_experts, n_shared, dims, dropout, last=level == levels - 1
            )
            self.levels.append(cgc)
            d_in = cgc.d_out
        self.d_out = d_in

    def forward(self, x: Tensor) -> Tensor:
        task_in: Tensor = x
        shared_in: Tensor | None = x
        for cgc in self.levels:
            assert shared_in is not None
            task_in, shared_in = cgc(task_in, shared_in)
        return task_in


# ------------------------------------------------------------------------------------ network


@dataclass(frozen=True)
class NetworkSpec:
    """Everything needed to rebuild an :class:`MTLNetwork` (saved with the model)."""

    model: str
    cardinalities: tuple[int, ...]
    n_numeric: int
    layout: TaskLayout
    embedding_dim: int = 8
    expert_dims: tuple[int, ...] = (64, 32)
    tower_dims: tuple[int, ...] = (32,)
    n_experts: int = 4
    ple_levels: int = 2
    ple_shared_experts: int = 2
    ple_task_experts: int = 1
    dropout: float = 0.0
    position_tasks: tuple[int, ...] = ()
    max_position: int = 20
    wide: bool = True
    position_mode: str = "logit"

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["layout"] = self.layout.to_dict()
        for key in ("cardinalities", "expert_dims", "tower_dims", "position_tasks"):
            data[key] = list(data[key])
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> NetworkSpec:
        values = dict(data)
        values["layout"] = TaskLayout.from_dict(values["layout"])
        for key in ("cardinalities", "expert_dims", "tower_dims", "position_tasks"):
            values[key] = tuple(int(v) for v in values[key])
        return cls(**values)


class MTLNetwork(nn.Module):
    """Embeddings -> backbone -> one tower per task, with ESMM wiring and the position tower.

    ``forward(categorical, numeric, position=None)`` returns raw outputs ``[N, T]`` (logits,
    conditional logits for ESMM children, standardised values for regression); ``position``
    (int64 ``[N]``, 0 = unknown) adds the position bias (training, or evaluation "as shown").
    :meth:`outputs` turns raw outputs into predictions.
    """

    offsets: Tensor
    position_index: Tensor

    def __init__(self, spec: NetworkSpec) -> None:
        super().__init__()
        if spec.position_mode not in ("logit", "examination"):
            raise ValueError(f"unknown position_mode {spec.position_mode!r}")
        if spec.model not in ("mmoe", "ple", "shared_bottom"):
            raise ValueError(f"unknown model {spec.model!r}; expected mmoe, ple or shared_bottom")
        if any(c < 1 for c in spec.cardinalities):
            raise ValueError(f"cardinalities must be >= 1, got {list(spec.cardinalities)}")
        if len(spec.layout) < 1:
            raise ValueError("at least one task is needed")
        self.spec = spec
        self.layout = spec.layout
        n_tasks = len(spec.layout)
        offsets = np.concatenate([[0], np.cumsum(spec.cardinalities)[:-1]]).astype(np.int64)
        self.register_buffer("offsets", torch.as_tensor(offsets[: len(spec.cardinalities)]))
        self.embedding: nn.Embedding | None = None
        if spec.cardinalities:
            self.embedding = nn.Embedding(sum(spec.cardinalities), spec.embedding_dim)
            nn.init.normal_(self.embedding.weight, std=0.05)
        d_in = len(spec.cardinalities) * spec.embedding_dim + spec.n_numeric
        if d_in == 0:
            raise ValueError("the network has no input features")
        self.backbone: nn.Module
        if spec.model == "shared_bottom":
            self.backbone = SharedBottom(d_in, n_tasks, spec.expert_dims, spec.dropout)
        elif spec.model == "mmoe":
            self.backbone = MMoE(d_in, n_tasks, spec.n_experts, spec.expert_dims, spec.dropout)
        else:
            self.backbone = PLE(
                d_in,
                n_tasks,
                spec.ple_levels,
                spec.ple_task_experts,
                spec.ple_shared_experts,
                spec.expert_dims,
                spec.dropout,
            )
        h = self.backbone.d_out
        self.towers = GroupedMLP(n_tasks, h, spec.tower_dims, spec.dropout)
        self.head = GroupedLinear(n_tasks, self.towers.d_out, 1)
        self.wide_categorical: nn.Embedding | None = None
        self.wide_numeric: nn.Linear | None = None
        if spec.wide:
            if spec.cardinalities:
                self.wide_categorical = nn.Embedding(sum(spec.cardinalities), n_tasks)
                nn.init.zeros_(self.wide_categorical.weight)
            if spec.n_numeric:
                self.wide_numeric = nn.Linear(spec.n_numeric, n_tasks, bias=False)
                nn.init.zeros_(self.wide_numeric.weight)
        self.position_bias: nn.Parameter | None = None
        if spec.position_tasks:
            init = 0.0 if spec.position_mode == "logit" else -4.0  # examination starts near 1
            self.position_bias = nn.Parameter(
                torch.full((spec.max_position + 1, len(spec.position_tasks)), init)
            )
        self.register_buffer(
            "position_index", torch.as_tensor(list(spec.position_tasks), dtype=torch.int64)
        )

    @property
    def n_tasks(self) -> int:
        return len(self.layout)

    def embed(self, categorical: Tensor, numeric: Tensor) -> tuple[Tensor, Tensor | None]:
        """Network input ``[N, d]`` and the looked-up embeddings ``[N, J, E]`` (for the L2)."""
        emb = None
        parts = []
        if self.embedding is not None:
            emb = self.embedding(categorical + self.offsets)
            parts.append(emb.flatten(1))
        if self.spec.n_numeric:
            parts.append(numeric)
        return torch.cat(parts, dim=1) if len(parts) > 1 else parts[0], emb

    def wide_logits(
        self, categorical: Tensor, numeric: Tensor
    ) -> tuple[Tensor | None, Tensor | None]:
        """The wide (per-task linear) part ``[N, T]`` and its looked-up weights ``[N, J, T]``."""
        out: Tensor | None = None
        rows: Tensor | None = None
        if self.wide_categorical is not None:
            rows = self.wide_categorical(categorical + self.offsets)
            out = rows.sum(1)
        if self.wide_numeric is not None:
            lin = self.wide_numeric(numeric)
            out = lin if out is None else out + lin
        return out, rows

    def forward(
        self, categorical: Tensor, numeric: Tensor, position: Tensor | None = None
    ) -> Tensor:
        """Raw outputs ``[N, T]``; in ``logit`` mode they include the position bias when
        ``position`` is given (use :meth:`forward_full` for the ``examination`` factor)."""
        raw, _, _ = self.forward_full(categorical, numeric, position)
        return raw

    def forward_full(
        self, categorical: Tensor, numeric: Tensor, position: Tensor | None = None
    ) -> tuple[Tensor, Tensor | None, Tensor]:
        """Raw outputs ``[N, T]``, the log-probability offsets ``[N, T]`` of the examination
        factor (``examination`` mode with ``position``; else None) and the L2 penalty of the
        embedding rows and wide weights used."""
        x, emb = self.embed(categorical, numeric)
        rep = self.backbone(x)  # [N, T, h]
        raw = self.head(self.towers(rep)).squeeze(-1)  # [N, T]
        wide, wide_rows = self.wide_logits(categorical, numeric)
        if wide is not None:
            raw = raw + wide
        offset = None
        if position is not None and self.position_bias is not None:
            effect = self.position_effect(position)
            if self.spec.position_mode == "logit":
                raw = raw.index_add(1, self.position_index, effect)
            else:
                offset = torch.zeros_like(raw).index_add(1, self.position_index, effect)
        return raw, offset, self._penalty(emb, wide_rows)

    def position_effect(self, position: Tensor) -> Tensor:
        """``[N, n_position_tasks]``: the logit bias (``logit`` mode) or the log examination
        factor ``-softplus(theta)`` (``examination`` mode); 0 at position 1 and for unknown
        positions (0). A *hidden* position (-1, training's ``position_dropout``) gets the
        learned effect of row 0, an average over the positions, so hiding a row's position
        takes away what the position explains within a request but not the mean level."""
        assert self.position_bias is not None
        idx = position.clamp(0, self.spec.max_position)  # hidden (-1) reads row 0
        value = self.position_bias[idx]
        if self.spec.position_mode == "examination":
            value = -nn.functional.softplus(value)
        active = (idx >= 2) | (position < 0)
        return value * active.unsqueeze(-1).to(value.dtype)

    def outputs(self, raw: Tensor, log_offset: Tensor | None = None) -> Tensor:
        """Predictions ``[N, T]`` from raw outputs: probabilities for binary tasks, the ESMM
        product ``p_parent * pCVR`` for children, raw standardised values for regression.
        ``log_offset`` (examination mode, 'as shown') multiplies the probabilities by the
        examination factor of their position task."""
        out = raw.clone()
        probs = torch.sigmoid(raw)
        if log_offset is not None:
            probs = probs * torch.exp(log_offset)
        for k, kind in enumerate(self.layout.kinds):
            if kind == "binary":
                out[:, k] = probs[:, k]
            elif kind == "esmm":
                out[:, k] = probs[:, self.layout.parent[k]] * probs[:, k]
        return out

    def conditional(self, raw: Tensor) -> Tensor:
        """Per-task sigmoid of the raw outputs: pCVR for ESMM children (``[N, T]``)."""
        return torch.sigmoid(raw)

    def _penalty(self, emb: Tensor | None, wide_rows: Tensor | None) -> Tensor:
        """Mean over rows of the squared norm of the row's embeddings and wide weights, plus the
        squared numeric wide weights."""
        total = torch.zeros((), device=self.offsets.device)
        for rows in (emb, wide_rows):
            if rows is not None:
                total = total + rows.square().sum((1, 2)).mean()
        if self.wide_numeric is not None:
            total = total + self.wide_numeric.weight.square().sum()
        return total


# --------------------------------------------------------------------------------------- losses


def _log1mexp(x: Tensor) -> Tensor:
    """``log(1 - exp(x))`` for ``x < 0``, accurate on both ends."""
    return torch.where(x > -math.log(2.0), torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def _log_loss(logp: Tensor, y: Tensor) -> Tensor:
    logp = logp.clamp(max=_LOGP_MAX)
    return -(y * logp + (1.0 - y) * _log1mexp(logp))


def task_losses(
    raw: Tensor,
    labels: Tensor,
    mask: Tensor,
    layout: TaskLayout,
    log_offset: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Per-task summed losses ``[T]`` and labelled-row counts ``[T]`` (divide for the mean).

    Binary: log-loss on the logit. ESMM child: log-loss of ``p_parent * pCVR`` against the child
    label on every labelled row. Regression: squared error on the standardised target.
    ``log_offset`` ``[N, T]`` (examination mode) adds ``log e[pos]`` to the log-probability of
    the binary tasks it is non-zero for, and of their ESMM children.
    """
    w = mask.to(raw.dtype)
    out = torch.empty(raw.shape[1], dtype=raw.dtype, device=raw.device)
    bce = nn.functional.binary_cross_entropy_with_logits(raw, labels, reduction="none")
    shifted = set()
    if log_offset is not None:
        shifted = {k for k in range(raw.shape[1]) if bool((log_offset[:, k] != 0).any())}
    for k, kind in enumerate(layout.kinds):
        if kind == "binary":
            if k in shifted:
                assert log_offset is not None
                logp = nn.functional.logsigmoid(raw[:, k]) + log_offset[:, k]
                loss = _log_loss(logp, labels[:, k])
            else:
                loss = bce[:, k]
        elif kind == "esmm":
            parent = layout.parent[k]
            logp = nn.functional.logsigmoid(raw[:, parent]) + nn.functional.logsigmoid(raw[:, k])
            if log_offset is not None:
                logp = logp + log_offset[:, parent]
            loss = _log_loss(logp, labels[:, k])
        else:
            loss = (raw[:, k] - labels[:, k]).square()
        out[k] = (loss * w[:, k]).sum()
    return out, w.sum(0)
