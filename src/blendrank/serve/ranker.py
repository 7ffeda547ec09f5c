"""In-process serving API: request dicts (or batched tensors) → fusion weights → ranked page.

One code path with training: user/context features go through the saved Feature Center
(``transform_rows``, bit-identical to the table path), list statistics through
:func:`blendrank.fusion.state.list_stats`, scores and the page through
:func:`blendrank.fusion.formulas.fuse` / :func:`~blendrank.fusion.formulas.top_k`.

A request::

    {"user": {"f_user_age_bucket": 3, ..., "f_ctx_hour": 14},
     "candidates": [{"item_id": 17, "pred_click": 0.12, "pred_order": 0.01, "price": 9.9}, ...],
     "k": 10}

When the model cannot be loaded (or fails at run time) the ranker serves the static fallback
weights from the manifest (the production weights given at export, else uniform) and reports
``model_ok=False`` / ``fallback=True`` with the reason.
"""

from __future__ import annotations

import json
import math
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from blendrank.errors import DataError
from blendrank.fusion.formulas import fuse, fusion_features, top_k
from blendrank.fusion.state import list_stats

Backend = Literal["onnx", "torch"]
BACKENDS: tuple[str, ...] = ("onnx", "torch")
POLICY_ROLES = ("user", "context")
RESERVED = ("item_id",)


@dataclass
class RankResult:
    """One ranked request: the page (best first), its fused scores and the weights used."""

    item_ids: list[Any]
    scores: list[float]
    weights: dict[str, float]
    fallback: bool = False


@dataclass
class _Model:
    """The loaded policy head: a callable ``(cat, num, stats) numpy -> weights numpy``."""

    run: Any
    backend: str


@dataclass
class Ranker:
    """A loaded export directory. Build with :meth:`load`."""

    path: Path
    manifest: dict[str, Any]
    spec: Any  # FusionSpec
    center: Any | None  # FeatureCenter (None when it could not be loaded: fallback only)
    fallback_weights: np.ndarray
    backend: str
    model: _Model | None = None
    fallback_reason: str | None = None
    runtime_failures: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    # ------------------------------------------------------------------ loading
    @classmethod
    def load(cls, export_dir: str | Path, backend: Backend = "onnx", strict: bool = False,
             threads: int = 1, parity_tol: float = 1e-5) -> Ranker:
        """Load an export directory written by ``blendrank export``.

        The manifest and ``fusion.json`` must be readable (DataError otherwise). If the feature
        center or the model cannot be loaded, the ranker serves the fallback weights — unless
        ``strict``, which raises instead and also checks the ONNX model's sha256 and its parity
        with the PyTorch policy (when ``policy.pt`` is present).
        """
        from blendrank.algos.grade.data import FusionSpec

        path = Path(export_dir)
        if backend not in BACKENDS:
            raise DataError(f"backend {backend!r}: choose one of {', '.join(BACKENDS)}")
        if not (path / "manifest.json").is_file():
            raise DataError(f"{path}: not an export directory (no manifest.json); run `blendrank export` first")
        try:
            manifest = json.loads((path / "manifest.json").read_text())
            spec = FusionSpec.model_validate_json((path / "fusion.json").read_text())
        except (OSError, ValueError) as exc:
            raise DataError(f"{path}: unreadable manifest.json or fusion.json ({exc})") from None
        from blendrank.serve.export import MANIFEST_FORMAT

        if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
            raise DataError(f"{path}/manifest.json: not a blendrank serving manifest")
        k = len(spec.inputs)
        fb = np.asarray(manifest.get("fallback_weights") or [1.0 / k] * k, dtype=np.float32)
        if fb.shape != (k,) or not np.isfinite(fb).all() or (fb < 0).any() or fb.sum() <= 0:
            fb = np.full(k, 1.0 / k, dtype=np.float32)
        fb = fb / fb.sum()
        self = cls(path, manifest, spec, None, fb, backend)
        try:
            from blendrank.features.center import FeatureCenter

            self.center = FeatureCenter.load(path / "feature_center.json")
            self.model = self._load_model(backend, threads, strict, parity_tol)
        except Exception as exc:  # noqa: BLE001 - any failure means: serve the fallback
            if strict:
                raise DataError(f"{path}: model cannot be used: {exc}") from None
            self.model, self.fallback_reason = None, f"{type(exc).__name__}: {exc}"
        return self

    def _load_model(self, backend: str, threads: int, strict: bool, tol: float) -> _Model:
        m, k = self.manifest, len(self.spec.inputs)
        if self.center is not None:
            cats = self.center.categorical_names(POLICY_ROLES)
            nums = self.center.numeric_names(POLICY_ROLES)
            if cats != m.get("categorical") or nums != m.get("numeric"):
                raise DataError("feature_center.json does not match the manifest's feature schema")
        if backend == "torch":
            from blendrank.algos.grade.trainer import GradePolicy

            pol = GradePolicy.load(self.path).policy.eval()

            def run_torch(cat: np.ndarray, num: np.ndarray, stats: np.ndarray) -> np.ndarray:
                with torch.no_grad():
                    return pol.mean_weights(torch.as_tensor(cat), torch.as_tensor(num), torch.as_tensor(stats)).numpy()

            model = _Model(run_torch, "torch")
        else:
            from blendrank.serve.export import onnx_session, parity_error, run_session, sha256_file

            onnx_path = self.path / "model.onnx"
            if not onnx_path.is_file():
                raise DataError("model.onnx not found")
            if strict and sha256_file(onnx_path) != m.get("model_sha256"):
                raise DataError("model.onnx sha256 does not match the manifest (corrupt or edited)")
            session = onnx_session(onnx_path, threads)
            if strict and (self.path / "policy.pt").is_file():
                from blendrank.algos.grade.trainer import GradePolicy
                from blendrank.serve.export import FusionHead

                pol = GradePolicy.load(self.path).policy.eval()
                err = parity_error(FusionHead(pol), session, list(m["cardinalities"]), len(m["numeric"]),
                                   pol.stats_mean, pol.stats_std, batches=(1, 33))
                if not err <= tol:
                    raise DataError(f"ONNX/PyTorch parity check failed (max abs error {err:.3g} > {tol:g})")
            model = _Model(lambda c, n, s: run_session(session, c, n, s), "onnx")
        # Smoke run: one state of the right shape must give K finite weights.
        w = model.run(np.zeros((1, len(m["categorical"])), np.int64), np.zeros((1, len(m["numeric"])), np.float32),
                      np.zeros((1, int(m["n_stats"])), np.float32))
        if w.shape != (1, k) or not np.isfinite(w).all():
            raise DataError(f"model gives weights of shape {w.shape}, expected (1, {k})")
        return model

    # ------------------------------------------------------------------ status
    @property
    def model_ok(self) -> bool:
        return self.model is not None

    @property
    def fallback(self) -> bool:
        return self.model is None

    @property
    def inputs(self) -> list[str]:
        return list(self.spec.inputs)

    @property
    def feature_names(self) -> list[str]:
        return list(self.manifest.get("categorical", [])) + list(self.manifest.get("numeric", []))

    def status(self) -> dict[str, Any]:
        return {"model_ok": self.model_ok, "fallback": self.fallback, "fallback_reason": self.fallback_reason,
                "backend": self.backend, "path": str(self.path), "fusion_inputs": self.inputs,
                "model_sha256": self.manifest.get("model_sha256"), "runtime_failures": self.runtime_failures,
                "blendrank_version": self.manifest.get("blendrank_version")}

    # ------------------------------------------------------------------ weights
    def policy_weights(self, cat: Tensor, num: Tensor, stats: Tensor) -> tuple[Tensor, bool]:
        """``[B, K]`` weights for policy states and whether the fallback was used."""
        b = stats.shape[0]
        if self.model is not None:
            try:
                w = self.model.run(cat.numpy(), num.numpy(), stats.numpy())
                if w.shape == (b, len(self.inputs)) and np.isfinite(w).all():
                    return torch.from_numpy(np.asarray(w, dtype=np.float32)), False
                raise ValueError(f"bad model output shape {w.shape} or non-finite values")
            except Exception:  # noqa: BLE001 - serve the fallback rather than fail the request
                with self._lock:
                    self.runtime_failures += 1
        return torch.from_numpy(self.fallback_weights).expand(b, -1).clone(), True

    def rank_batch(self, cat: Tensor, num: Tensor, inputs: Tensor, mask: Tensor, k: int
                   ) -> tuple[Tensor, Tensor, Tensor]:
        """Batched path for throughput.

        Args:
            cat: ``[B, n_cat]`` int64 encoded categoricals (Feature Center indices).
            num: ``[B, n_num]`` float32 encoded numerics.
            inputs: ``[B, L, K]`` raw fusion inputs (``pred_<objective>``..., ``price/price_scale``).
            mask: ``[B, L]`` True on real candidates.
            k: page size.

        Returns:
            ``(weights [B, K], index [B, k'], scores [B, k'])``: top-``k'`` candidate indices best
            first and their fused scores (``-inf`` where a request has fewer real candidates).
        """
        w, _, idx, top = self._rank_tensors(cat, num, inputs, mask, k)
        return w, idx, top

    def _rank_tensors(self, cat: Tensor, num: Tensor, inputs: Tensor, mask: Tensor, k: int):
        spec = self.spec
        cards = self.manifest.get("cardinalities", [])
        if cat.shape[1:] != (len(cards),) or num.shape[1:] != (len(self.manifest.get("numeric", [])),):
            raise DataError(f"cat/num shapes {tuple(cat.shape)}/{tuple(num.shape)} do not match the model "
                            f"({len(cards)} categorical, {len(self.manifest.get('numeric', []))} numeric)")
        if inputs.dim() != 3 or inputs.shape[-1] != len(self.inputs) or mask.shape != inputs.shape[:2]:
            raise DataError(f"inputs must be [B, L, {len(self.inputs)}] with mask [B, L]")
        if cards and ((cat < 0) | (cat >= torch.tensor(cards))).any():
            raise DataError("categorical index out of range for the model's vocabularies")
        mask = mask.bool()
        feats = fusion_features(inputs.float(), spec.formula, spec.floor).masked_fill(~mask.unsqueeze(-1), 0.0)
        stats = list_stats(feats, mask, spec.stats_top)
        w, used_fallback = self.policy_weights(cat.long(), num.float(), stats)
        scores = fuse(feats, w)
        idx, valid = top_k(scores, mask, max(int(k), 1))
        top = scores.gather(-1, idx).masked_fill(~valid, float("-inf"))
        return w, used_fallback, idx, top

    # ------------------------------------------------------------------ request dicts
    def encode(self, requests: Sequence[Mapping[str, Any]], max_candidates: int | None = None
               ) -> tuple[Tensor, Tensor, Tensor, Tensor, list[list[Any]], list[int]]:
        """Validate and encode request dicts → ``(cat, num, inputs, mask, item_ids, ks)``.
        Raises DataError naming the request, candidate and field at fault."""
        if not isinstance(requests, Sequence) or isinstance(requests, (str, bytes)):
            raise DataError("requests must be a list of request objects")
        spec = self.spec
        names = self.feature_names
        allowed = set(names)
        value_cols = [f"pred_{o}" for o in spec.objectives] + (["price"] if spec.use_price else [])
        cand_allowed = set(value_cols) | set(RESERVED)
        users, item_ids, ks, rows = [], [], [], []
        for r, req in enumerate(requests):
            if not isinstance(req, Mapping):
                raise DataError(f"request {r}: must be an object")
            extra = set(req) - {"user", "candidates", "k"}
            if extra:
                raise DataError(f"request {r}: unknown field(s) {sorted(extra)}")
            user = req.get("user", {})
            if not isinstance(user, Mapping):
                raise DataError(f"request {r}: 'user' must be an object of features")
            missing = [n for n in names if n not in user]
            unknown = sorted(set(user) - allowed)
            if missing or unknown:
                parts = ([f"missing feature(s) {missing} (send null for a missing value)"] if missing else []) + \
                        ([f"unknown feature(s) {unknown} (the model reads {names})"] if unknown else [])
                raise DataError(f"request {r}: " + "; ".join(parts))
            users.append(user)
            k = req.get("k", 10)
            if isinstance(k, bool) or not isinstance(k, int) or k < 1:
                raise DataError(f"request {r}: 'k' must be a positive integer, got {k!r}")
            ks.append(k)
            cands = req.get("candidates")
            if not isinstance(cands, Sequence) or isinstance(cands, (str, bytes)):
                raise DataError(f"request {r}: 'candidates' must be a list")
            if max_candidates is not None and len(cands) > max_candidates:
                raise DataError(f"request {r}: {len(cands)} candidates, more than the limit {max_candidates}")
            ids, vals = [], []
            for i, c in enumerate(cands):
                if not isinstance(c, Mapping):
                    raise DataError(f"request {r}, candidate {i}: must be an object")
                bad = sorted(set(c) - cand_allowed)
                absent = [n for n in (*RESERVED, *value_cols) if n not in c]
                if bad or absent:
                    parts = ([f"missing field(s) {absent}"] if absent else []) + \
                            ([f"unknown field(s) {bad} (expected {['item_id', *value_cols]})"] if bad else [])
                    raise DataError(f"request {r}, candidate {i}: " + "; ".join(parts))
                iid = c["item_id"]
                if isinstance(iid, bool) or not isinstance(iid, (int, str)):
                    raise DataError(f"request {r}, candidate {i}: item_id must be an integer or string")
                row = []
                for n in value_cols:
                    v = c[n]
                    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                        raise DataError(f"request {r}, candidate {i}: {n} must be a finite number, got {v!r}")
                    if n.startswith("pred_") and not 0.0 <= v <= 1.0:
                        raise DataError(f"request {r}, candidate {i}: {n} must be a probability in [0, 1], got {v!r}")
                    if n == "price" and (v < 0 or v > 1e12):
                        raise DataError(f"request {r}, candidate {i}: price must be in [0, 1e12], got {v!r}")
                    row.append(float(v))
                if spec.use_price:
                    row[-1] = row[-1] / spec.price_scale
                ids.append(iid)
                vals.append(row)
            item_ids.append(ids)
            rows.append(vals)
        b, kk = len(requests), len(spec.inputs)
        L = max([len(v) for v in rows], default=0)
        inputs = np.zeros((b, max(L, 1), kk), dtype=np.float32)
        mask = np.zeros((b, max(L, 1)), dtype=bool)
        for r, vals in enumerate(rows):
            if vals:
                inputs[r, : len(vals)] = np.asarray(vals, dtype=np.float32)
                mask[r, : len(vals)] = True
        cat, num = self._encode_users(users)
        return cat, num, torch.from_numpy(inputs), torch.from_numpy(mask), item_ids, ks

    def _encode_users(self, users: list[Mapping[str, Any]]) -> tuple[Tensor, Tensor]:
        n_cat, n_num = len(self.manifest.get("categorical", [])), len(self.manifest.get("numeric", []))
        if self.center is None:  # fallback only: the state is not used
            return torch.zeros(len(users), n_cat, dtype=torch.long), torch.zeros(len(users), n_num)
        fb = self.center.transform_rows(users, roles=POLICY_ROLES)
        return torch.from_numpy(fb.categorical), torch.from_numpy(fb.numeric)

    def rank(self, requests: Sequence[Mapping[str, Any]], max_candidates: int | None = None) -> list[RankResult]:
        """Rank request dicts (one batched forward pass); DataError on invalid input."""
        if not requests:
            return []
        cat, num, inputs, mask, item_ids, ks = self.encode(requests, max_candidates)
        w, used_fallback, idx, top = self._rank_tensors(cat, num, inputs, mask, max(ks))
        out = []
        names = self.inputs
        for r, ids in enumerate(item_ids):
            n = min(ks[r], len(ids))
            sel = idx[r, :n].tolist()
            out.append(RankResult(item_ids=[ids[j] for j in sel], scores=top[r, :n].tolist(),
                                  weights=dict(zip(names, w[r].tolist())), fallback=used_fallback))
        return out

    def weights(self, requests: Sequence[Mapping[str, Any]], max_candidates: int | None = None
                ) -> tuple[np.ndarray, bool]:
        """``[B, K]`` weights for request dicts and whether the fallback was used."""
        cat, num, inputs, mask, _, _ = self.encode(requests, max_candidates)
        feats = fusion_features(inputs, self.spec.formula, self.spec.floor).masked_fill(~mask.unsqueeze(-1), 0.0)
        w, fb = self.policy_weights(cat, num, list_stats(feats, mask, self.spec.stats_top))
        return w.numpy(), fb
