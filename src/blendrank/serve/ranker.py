"""In-process serving API: request objects (or batched arrays) → fusion weights → ranked page.

One code path with training: user/context features go through the saved Feature Center
(``transform_rows``, bit-identical to the table path); list statistics, fusion and top-K are the
numpy twins of :func:`blendrank.fusion.state.list_stats` and
:func:`blendrank.fusion.formulas.fusion_features` / ``fuse`` / ``top_k`` (checked against them in
tests), in a ``[B, K, L]`` layout that keeps each request's candidates contiguous. Small batches
(``NUMPY_HEAD_MAX_BATCH``) run the ONNX head with numpy and one request's top-K with numpy, when
that gives the same answer (see :func:`_with_numpy_head`, :func:`_top_single`).

A request (the columnar candidates are the fast path; a list of candidate objects is accepted
too, see :mod:`blendrank.serve.payload`)::

    {"user": {"f_user_age_bucket": 3, ..., "f_ctx_hour": 14},
     "candidates": {"item_id": [17, 18], "pred_click": [0.12, 0.3], "pred_order": [0.01, 0.0],
                    "price": [9.9, 25.0]},
     "k": 10}

When the model cannot be loaded (or fails at run time) the ranker serves the static fallback
weights from the manifest (the production weights given at export, else uniform) and reports
``model_ok=False`` / ``fallback=True`` with the reason.
"""

from __future__ import annotations

import importlib.util
import json
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import numpy as np

from blendrank.errors import DataError
from blendrank.fusion.numpy_twins import (
    fuse_np,
    fusion_features_np,
    list_stats_np,
    top_k_np,
    top_single_np,
)
from blendrank.fusion.spec import POLICY_ROLES, read_spec
from blendrank.serve.onnx_model import (
    MANIFEST_FORMAT,
    onnx_session,
    session_runner,
    sha256_file,
)
from blendrank.serve.payload import Limits, ParsedRequest, Schema, as_request_list, parse_request

Backend = Literal["onnx", "torch"]
BACKENDS: tuple[str, ...] = ("onnx", "torch")
NUMPY_HEAD_MAX_BATCH = 4  # batches up to this size skip onnxruntime (see _with_numpy_head)
NUMPY_HEAD_TOL = 1e-6  # max abs weight difference from onnxruntime for the numpy head to be used
BLOCK_ELEMENTS = 64 * 3 * 200  # fusion inputs per block of a large batch (~150 KB per float32 array)


class ExportError(DataError):
    """An export directory that cannot be served. ``public`` says why without server paths or
    file content, so the service may return it to a client; the message has the details."""

    def __init__(self, message: str, public: str) -> None:
        super().__init__(message)
        self.public = public


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
    limits: Limits = field(default_factory=Limits)
    _cards: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64), repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    # ------------------------------------------------------------------ loading
    @classmethod
    def load(cls, export_dir: str | Path, backend: Backend = "onnx", strict: bool = False,
             threads: int = 1, parity_tol: float = 1e-5, limits: Limits | None = None) -> Ranker:
        """Load an export directory written by ``blendrank export``.

        The manifest and ``fusion.json`` must be readable (DataError otherwise). If the feature
        center or the model cannot be loaded, the ranker serves the fallback weights — unless
        ``strict``, which raises instead and also checks the ONNX model's sha256 and its parity
        with the PyTorch policy (when ``policy.pt`` is present). ``limits`` bound each request
        of :meth:`rank` / :meth:`weights` (default :class:`~blendrank.serve.payload.Limits`).
        """
        path = Path(export_dir)
        if backend not in BACKENDS:
            raise DataError(f"backend {backend!r}: choose one of {', '.join(BACKENDS)}")
        if not (path / "manifest.json").is_file():
            why = "not an export directory (no manifest.json); run `blendrank export` first"
            raise ExportError(f"{path}: {why}", why)
        try:
            manifest = json.loads((path / "manifest.json").read_text())
            spec = read_spec(path / "fusion.json")
        except (OSError, ValueError, DataError) as exc:
            raise ExportError(f"{path}: unreadable manifest.json or fusion.json ({exc})",
                              "unreadable manifest.json or fusion.json (missing, corrupt or not "
                              "an export's)") from None
        if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
            raise ExportError(f"{path}/manifest.json: not a blendrank serving manifest",
                              "manifest.json: not a blendrank serving manifest")
        k = len(spec.inputs)
        fb = np.asarray(manifest.get("fallback_weights") or [1.0 / k] * k, dtype=np.float32)
        if fb.shape != (k,) or not np.isfinite(fb).all() or (fb < 0).any() or fb.sum() <= 0:
            fb = np.full(k, 1.0 / k, dtype=np.float32)
        fb = fb / fb.sum()
        cards = manifest.get("cardinalities")
        if not isinstance(cards, list) or not all(type(c) is int for c in cards):
            raise ExportError(f"{path}/manifest.json: 'cardinalities' must be a list of integers",
                              "manifest.json: 'cardinalities' must be a list of integers")
        self = cls(path, manifest, spec, None, fb, backend, limits=limits or Limits(),
                   _cards=np.asarray(cards, dtype=np.int64))
        try:
            from blendrank.features.center import FeatureCenter

            self.center = FeatureCenter.load(path / "feature_center.json")
            self.model = self._load_model(backend, threads, strict, parity_tol)
        except Exception as exc:  # noqa: BLE001 - any failure means: serve the fallback
            if strict:
                # Only the checks written here have messages free of paths and file content.
                public = (exc.public if isinstance(exc, ExportError) else
                          f"{type(exc).__name__} while loading feature_center.json or the model")
                raise ExportError(f"{path}: model cannot be used: {exc}",
                                  f"model cannot be used: {public}") from None
            self.model, self.fallback_reason = None, f"{type(exc).__name__}: {exc}"
        return self

    def _load_model(self, backend: str, threads: int, strict: bool, tol: float) -> _Model:
        m, k = self.manifest, len(self.spec.inputs)
        if self.center is not None:
            cats = self.center.categorical_names(POLICY_ROLES)
            nums = self.center.numeric_names(POLICY_ROLES)
            if cats != m.get("categorical") or nums != m.get("numeric"):
                msg = "feature_center.json does not match the manifest's feature schema"
                raise ExportError(msg, msg)
        if backend == "torch":
            # torch only on this path (and the strict parity check): a serving install has none.
            import torch

            from blendrank.fusion.artifact import load_policy

            pol = load_policy(self.path)[0]

            def run_torch(cat: np.ndarray, num: np.ndarray, stats: np.ndarray) -> np.ndarray:
                with torch.no_grad():
                    return pol.mean_weights(torch.as_tensor(cat), torch.as_tensor(num), torch.as_tensor(stats)).numpy()

            model = _Model(run_torch, "torch")
        else:
            onnx_path = self.path / "model.onnx"
            if not onnx_path.is_file():
                raise ExportError("model.onnx not found", "model.onnx not found")
            if strict and sha256_file(onnx_path) != m.get("model_sha256"):
                msg = "model.onnx sha256 does not match the manifest (corrupt or edited)"
                raise ExportError(msg, msg)
            session = onnx_session(onnx_path, threads)
            if strict and (self.path / "policy.pt").is_file() and _torch_installed():
                from blendrank.fusion.artifact import load_policy
                from blendrank.serve.export import FusionHead, parity_error

                pol = load_policy(self.path)[0]
                err = parity_error(FusionHead(pol), session, list(m["cardinalities"]), len(m["numeric"]),
                                   pol.stats_mean, pol.stats_std, batches=(1, 33))
                if not err <= tol:
                    msg = f"ONNX/PyTorch parity check failed (max abs error {err:.3g} > {tol:g})"
                    raise ExportError(msg, msg)
            model = _Model(_with_numpy_head(session_runner(session), onnx_path, self._parity_states()), "onnx")
        # Smoke run: one state of the right shape must give K finite weights.
        w = model.run(np.zeros((1, len(m["categorical"])), np.int64), np.zeros((1, len(m["numeric"])), np.float32),
                      np.zeros((1, int(m["n_stats"])), np.float32))
        if w.shape != (1, k) or not np.isfinite(w).all():
            msg = f"model gives weights of shape {w.shape}, expected (1, {k})"
            raise ExportError(msg, msg)
        return model

    def _parity_states(self) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Random policy states for comparing two evaluations of the head: valid category
        indices, standard-normal numerics, and list statistics of random candidate lists (as
        served) or standard-normal ones; batches of 1 to 33."""
        m, k, rng = self.manifest, len(self.spec.inputs), np.random.default_rng(0)
        out = []
        for b, realistic in ((1, True), (2, True), (NUMPY_HEAD_MAX_BATCH, True), (33, True), (1, False), (33, False)):
            cat = np.stack([rng.integers(c, size=b) for c in m["cardinalities"]] or [np.zeros(b, np.int64)], 1)
            num = rng.normal(size=(b, len(m["numeric"]))).astype(np.float32)
            if realistic:
                values = rng.uniform(0.0, 1.0, size=(b, k, 50)).astype(np.float32)
                stats = list_stats_np(self._features(values), None, self.spec.stats_top)
            else:
                stats = rng.normal(size=(b, int(m["n_stats"]))).astype(np.float32)
            out.append((cat[:, :len(m["cardinalities"])], num, stats))
        return out

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

    # ------------------------------------------------------------------ arrays
    @cached_property
    def schema(self) -> Schema:
        """What a request must carry: the model's user/context features and value columns."""
        spec = self.spec
        return Schema(tuple(self.feature_names),
                      tuple(f"pred_{o}" for o in spec.objectives) + (("price",) if spec.use_price else ()),
                      float(spec.price_scale))

    def policy_weights(self, cat: np.ndarray, num: np.ndarray, stats: np.ndarray) -> tuple[np.ndarray, bool]:
        """``[B, K]`` float32 weights for policy states and whether the fallback was used."""
        b, k = stats.shape[0], len(self.spec.inputs)
        model = self.model
        if model is not None:
            try:
                w = model.run(cat, num, stats)
                if w.shape == (b, k) and np.isfinite(w).all():
                    return np.asarray(w, dtype=np.float32), False
                raise ValueError(f"bad model output shape {w.shape} or non-finite values")
            except Exception:  # noqa: BLE001 - serve the fallback rather than fail the request
                with self._lock:
                    self.runtime_failures += 1
        return np.repeat(self.fallback_weights[None, :], b, axis=0), True

    def _check_state(self, cat: np.ndarray, num: np.ndarray, b: int) -> tuple[np.ndarray, np.ndarray]:
        cards, n_num = self._cards, len(self.manifest.get("numeric", []))
        cat = np.ascontiguousarray(cat, dtype=np.int64)
        num = np.ascontiguousarray(num, dtype=np.float32)
        if cat.shape != (b, len(cards)) or num.shape != (b, n_num):
            raise DataError(f"cat/num shapes {cat.shape}/{num.shape}: the model needs [{b}, {len(cards)}] categorical "
                            f"and [{b}, {n_num}] numeric")
        if len(cards) and ((cat < 0) | (cat >= cards)).any():
            raise DataError("categorical index out of range for the model's vocabularies")
        return cat, num

    def _features(self, values: np.ndarray) -> np.ndarray:
        return fusion_features_np(values, self.spec.formula, self.spec.floor)

    def _rank_core(self, cat: np.ndarray, num: np.ndarray, values: np.ndarray, mask: np.ndarray | None,
                   k: int | None) -> tuple[np.ndarray, bool, np.ndarray | None, np.ndarray | None]:
        """Weights and page for validated arrays. ``values``: ``[B, K, L]`` float32 raw fusion
        inputs; ``mask``: ``[B, L]`` real candidates or None when all are real; ``k=None`` skips
        the page. Returns ``(weights [B, K], fallback, index [B, k'], scores [B, k'])``.

        Large batches go through in blocks of about ``BLOCK_ELEMENTS`` fusion inputs, so that the
        block's temporaries stay in the CPU cache (measured: B=256 at L=200 ran 1.4x faster in
        blocks of 64-128 requests than in one piece)."""
        b, kk, n = values.shape
        block = max(8, BLOCK_ELEMENTS // max(kk * n, 1))
        if b <= block:
            return self._rank_block(cat, num, values, mask, k)
        parts = [self._rank_block(cat[i:i + block], num[i:i + block], values[i:i + block],
                                  None if mask is None else mask[i:i + block], k) for i in range(0, b, block)]
        w = np.concatenate([p[0] for p in parts])
        fallback = any(p[1] for p in parts)
        if k is None:
            return w, fallback, None, None
        return w, fallback, np.concatenate([p[2] for p in parts]), np.concatenate([p[3] for p in parts])

    def _rank_block(self, cat: np.ndarray, num: np.ndarray, values: np.ndarray, mask: np.ndarray | None,
                    k: int | None) -> tuple[np.ndarray, bool, np.ndarray | None, np.ndarray | None]:
        feats = self._features(values)
        w, used_fallback = self.policy_weights(cat, num, list_stats_np(feats, mask, self.spec.stats_top))
        if k is None:
            return w, used_fallback, None, None
        scores = fuse_np(w, feats)  # [B, L]
        page = min(max(int(k), 1), scores.shape[1])
        if mask is None and scores.shape[0] == 1:
            found = top_single_np(scores, page)
            if found is not None:
                return w, used_fallback, *found
        if mask is not None:
            scores[~mask] = -np.inf
        idx, top = top_k_np(scores, page)
        return w, used_fallback, idx, top

    def rank_batch(self, cat: Any, num: Any, inputs: Any, mask: Any, k: int
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Batched path for throughput: one policy call, fusion and top-K for ``B`` requests.

        Args:
            cat: ``[B, n_cat]`` int64 encoded categoricals (Feature Center indices).
            num: ``[B, n_num]`` float32 encoded numerics.
            inputs: ``[B, L, K]`` raw fusion inputs (``pred_<objective>``..., ``price/price_scale``).
            mask: ``[B, L]`` True on real candidates (or None: all real).
            k: page size.

        numpy arrays or CPU tensors. Returns numpy ``(weights [B, K], index [B, k'], scores
        [B, k'])``: top-``k'`` candidate indices best first and their fused scores (``-inf`` where
        a request has fewer real candidates); ``k' = min(k, L)``.
        """
        inputs = np.asarray(inputs, dtype=np.float32)
        kk = len(self.spec.inputs)
        if inputs.ndim != 3 or inputs.shape[-1] != kk:
            raise DataError(f"inputs must be [B, L, {kk}] (one column per fusion input {self.inputs}), got {inputs.shape}")
        b, n = inputs.shape[:2]
        if mask is not None:
            mask = np.asarray(mask, dtype=bool)
            if mask.shape != (b, n):
                raise DataError(f"mask must be [B, L] = [{b}, {n}], got {mask.shape}")
            if mask.all():
                mask = None
        values = np.ascontiguousarray(inputs.transpose(0, 2, 1))  # [B, K, L]: candidates contiguous
        if values.size and not (values.min() >= 0 and values.max() < np.inf):  # NaN fails both
            raise DataError("inputs must be finite and non-negative (predictions in [0, 1], price / price_scale ≥ 0)")
        cat, num = self._check_state(cat, num, b)
        w, _, idx, top = self._rank_core(cat, num, values, mask, k)
        return w, idx, top

    # ------------------------------------------------------------------ request objects
    def parse(self, request: Any, limits: Limits | None = None, where: str = "") -> ParsedRequest:
        """Validate one request object (everything but the user features' values, which
        :meth:`rank_parsed` checks while encoding them). DataError names the field at fault."""
        return parse_request(request, self.schema, limits or self.limits, where)

    def _assemble(self, parsed: list[ParsedRequest]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
        """``(cat, num, values [B, K, L], mask [B, L] or None)`` for parsed requests."""
        b, kk = len(parsed), len(self.spec.inputs)
        lengths = [p.values.shape[1] for p in parsed]
        n = max(max(lengths, default=0), 1)
        if b == 1 and lengths[0] == n:
            values, mask = parsed[0].values[None], None
        else:
            values = np.zeros((b, kk, n), dtype=np.float32)
            mask = np.zeros((b, n), dtype=bool)
            for r, p in enumerate(parsed):
                values[r, :, : lengths[r]] = p.values
                mask[r, : lengths[r]] = True
            if mask.all():
                mask = None
        cat, num = self._encode_users([p.user for p in parsed])
        return cat, num, values, mask

    def _parse(self, requests: Sequence[Any], limits: Limits | None
               ) -> tuple[list[ParsedRequest], np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
        requests = as_request_list(requests)
        one = len(requests) == 1
        parsed = [self.parse(req, limits, "" if one else f"request {r}: ") for r, req in enumerate(requests)]
        return (parsed, *self._assemble(parsed))

    def _encode_users(self, users: list[Mapping[str, Any]]) -> tuple[np.ndarray, np.ndarray]:
        if self.center is None:  # fallback only: the state is not used
            return (np.zeros((len(users), len(self._cards)), np.int64),
                    np.zeros((len(users), len(self.manifest.get("numeric", []))), np.float32))
        fb = self.center.transform_rows(users, roles=POLICY_ROLES)
        return fb.categorical, fb.numeric

    def encode(self, requests: Sequence[Mapping[str, Any]], limits: Limits | None = None
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, list[list[Any]], list[int]]:
        """Validate and encode request objects → ``(cat, num, inputs [B, L, K], mask [B, L],
        item_ids, ks)`` for :meth:`rank_batch`. Raises DataError naming the field at fault."""
        parsed, cat, num, values, mask = self._parse(requests, limits)
        if mask is None:
            mask = np.ones((values.shape[0], values.shape[2]), dtype=bool)
        return cat, num, values.transpose(0, 2, 1), mask, [p.item_ids for p in parsed], [p.k for p in parsed]

    def rank(self, requests: Sequence[Mapping[str, Any]], limits: Limits | None = None) -> list[RankResult]:
        """Rank request objects (one batched policy call); DataError on invalid input."""
        requests = as_request_list(requests)
        one = len(requests) == 1
        return self.rank_parsed([self.parse(req, limits, "" if one else f"request {r}: ")
                                 for r, req in enumerate(requests)])

    def rank_parsed(self, parsed: list[ParsedRequest]) -> list[RankResult]:
        """Rank validated requests together (one policy call); DataError if a user feature's value
        does not fit the Feature Center (e.g. a string for an integer categorical)."""
        if not parsed:
            return []
        cat, num, values, mask = self._assemble(parsed)
        w, used_fallback, idx, top = self._rank_core(cat, num, values, mask, max(p.k for p in parsed))
        names = self.inputs
        out = []
        for r, p in enumerate(parsed):
            n = min(p.k, len(p.item_ids))
            ids = p.item_ids
            out.append(RankResult(item_ids=[ids[j] for j in idx[r, :n].tolist()], scores=top[r, :n].tolist(),
                                  weights=dict(zip(names, w[r].tolist())), fallback=used_fallback))
        return out

    def weights(self, requests: Sequence[Mapping[str, Any]], limits: Limits | None = None
                ) -> tuple[np.ndarray, bool]:
        """``[B, K]`` weights for request objects and whether the fallback was used."""
        _, cat, num, values, mask = self._parse(requests, limits)
        w, fb, _, _ = self._rank_core(cat, num, values, mask, None)
        return w, fb


def _torch_installed() -> bool:
    """Whether torch can be imported (a serving install may have none), without importing it."""
    return importlib.util.find_spec("torch") is not None


def _with_numpy_head(run_onnx: Any, onnx_path: Path, states: list[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> Any:
    """``run_onnx`` for large batches, the same ONNX graph evaluated with numpy for batches up to
    ``NUMPY_HEAD_MAX_BATCH`` — when :func:`~blendrank.serve.numpy_head.compile_head` supports the
    graph and agrees with onnxruntime to ``NUMPY_HEAD_TOL`` on ``states`` (else onnxruntime
    only). One request spends 20-45 µs in onnxruntime's per-call overhead; the numpy head is
    about twenty small array operations."""
    from blendrank.serve.numpy_head import compile_head, max_abs_diff

    try:
        head = compile_head(onnx_path)
        if head is None or not max_abs_diff(head, run_onnx, states) <= NUMPY_HEAD_TOL:
            return run_onnx
    except Exception:  # noqa: BLE001 - the numpy head is optional: any failure keeps onnxruntime
        return run_onnx

    def run(cat: np.ndarray, num: np.ndarray, stats: np.ndarray) -> np.ndarray:
        return head(cat, num, stats) if stats.shape[0] <= NUMPY_HEAD_MAX_BATCH else run_onnx(cat, num, stats)

    run.numpy_head = True  # type: ignore[attr-defined]  (for tests: which path serves)
    return run
