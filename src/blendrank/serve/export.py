"""Export a trained fusion policy's deterministic head to ONNX for serving (docs/serving.md).

The exported graph is the Dirichlet mean ``m(s)``: ``(cat int64 [B, n_cat], num float32
[B, n_num], stats float32 [B, n_stats]) -> weights float32 [B, K]`` with a dynamic batch. The
export directory is self-contained::

    model.onnx           the head (checked against PyTorch with onnxruntime at export time)
    manifest.json        version, objectives, fusion inputs, feature schema, sha256 of model.onnx
    feature_center.json  the fitted Feature Center (user/context features)
    fusion.json          the FusionSpec (objectives, price, formula, floor, stats_top)
    policy.pt, config.json  the PyTorch policy (the ``torch`` backend and reload parity checks)
"""

from __future__ import annotations

import copy
import json
import logging
import os
import shutil
import time
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from blendrank import __version__
from blendrank.errors import DataError
from blendrank.features.center import FeatureCenter
from blendrank.fusion.artifact import POLICY_ROLES, load_policy
from blendrank.serve.onnx_model import (  # noqa: F401 - re-exported for export's callers
    INPUT_NAMES,
    MANIFEST_FORMAT,
    MANIFEST_VERSION,
    OUTPUT_NAME,
    onnx_session,
    run_session,
    session_runner,
    sha256_file,
)

PARITY_TOL = 1e-5


class ExportError(DataError):
    """The policy could not be exported, or the exported model disagrees with PyTorch."""


class FusionHead(nn.Module):
    """The deterministic serving head of a ``DirichletPolicy``: ``m(s) = softmax(z(s))``."""

    def __init__(self, policy: nn.Module):
        super().__init__()
        self.policy = copy.deepcopy(policy).eval()

    def forward(self, cat: Tensor, num: Tensor, stats: Tensor) -> Tensor:
        return self.policy.mean_weights(cat, num, stats)


def random_states(cardinalities: list[int], n_num: int, stats_mean: Tensor, stats_std: Tensor,
                  batch: int, seed: int = 0) -> tuple[Tensor, Tensor, Tensor]:
    """Random policy states for parity checks: valid category indices, standard-normal numerics,
    list statistics around the training moments."""
    g = torch.Generator().manual_seed(seed)
    cat = torch.stack([torch.randint(c, (batch,), generator=g) for c in cardinalities], 1) if cardinalities \
        else torch.zeros(batch, 0, dtype=torch.long)
    num = torch.randn(batch, n_num, generator=g)
    stats = stats_mean + stats_std * torch.randn(batch, stats_mean.numel(), generator=g)
    return cat.to(torch.long), num.float(), stats.float()


def parity_error(head: nn.Module, session: Any, cardinalities: list[int], n_num: int,
                 stats_mean: Tensor, stats_std: Tensor, batches: tuple[int, ...] = (1, 7, 256)) -> float:
    """Max abs difference between PyTorch and onnxruntime weights on random states."""
    worst = 0.0
    for i, b in enumerate(batches):
        cat, num, stats = random_states(cardinalities, n_num, stats_mean, stats_std, b, seed=i)
        with torch.no_grad():
            ref = head(cat, num, stats).numpy()
        got = run_session(session, cat.numpy(), num.numpy(), stats.numpy())
        if got.shape != ref.shape:
            raise ExportError(f"ONNX output shape {got.shape} != PyTorch {ref.shape} at batch {b}")
        worst = max(worst, float(np.abs(got - ref).max()) if got.size else 0.0)
    return worst


def _export_onnx(head: nn.Module, example: tuple[Tensor, Tensor, Tensor], path: Path) -> str:
    """Write the ONNX file; dynamo exporter first, the legacy TorchScript exporter as fallback."""
    errors: list[str] = []
    # torch's ONNX registry warns once per missing optional package (torchvision ops): noise here.
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    try:
        batch = torch.export.Dim("batch", min=1)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            prog = torch.onnx.export(head, example, dynamo=True, input_names=list(INPUT_NAMES),
                                     output_names=[OUTPUT_NAME], verbose=False,
                                     dynamic_shapes={"cat": {0: batch}, "num": {0: batch}, "stats": {0: batch}})
            prog.save(str(path))
        return "dynamo"
    except Exception as exc:  # noqa: BLE001 - any exporter failure falls back to the legacy path
        errors.append(f"dynamo: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(head, example, str(path), dynamo=False, input_names=list(INPUT_NAMES),
                              output_names=[OUTPUT_NAME], opset_version=17,
                              dynamic_axes={n: {0: "batch"} for n in (*INPUT_NAMES, OUTPUT_NAME)})
        return "legacy"
    except Exception as exc:  # noqa: BLE001
        errors.append(f"legacy: {type(exc).__name__}: {exc}")
    raise ExportError("ONNX export failed with both exporters: " + "; ".join(errors))


def fallback_vector(weights: Sequence[float] | Mapping[str, float] | None, inputs: list[str],
                    source: str = "fallback weights") -> tuple[list[float], list[str]]:
    """The static fallback weights over the fusion ``inputs`` (normalised to sum 1) and the names
    dropped from a mapping.

    ``weights``: one value per input in order, or a mapping ``{input: weight}`` such as the
    production formula's weights (names the policy does not fuse, e.g. ``price`` for a policy
    trained without it, are dropped and reported); ``None`` gives uniform weights.
    """
    k = len(inputs)
    if weights is None:
        return [1.0 / k] * k, []
    dropped: list[str] = []
    if isinstance(weights, Mapping):
        missing = [n for n in inputs if n not in weights]
        if missing:
            raise ExportError(f"{source}: no weight for fusion input(s) {missing}; the policy fuses {inputs}")
        dropped = sorted(str(n) for n in weights if n not in inputs)
        weights = [weights[n] for n in inputs]
    try:
        fb = [float(x) for x in weights]
    except (TypeError, ValueError):
        fb = []
    if len(fb) != k or not all(np.isfinite(fb)) or min(fb) < 0 or sum(fb) <= 0:
        raise ExportError(f"{source} {list(weights)}: need {k} non-negative finite values "
                          f"(one per fusion input {inputs}) with a positive sum")
    return [x / sum(fb) for x in fb], dropped


def export_policy(policy_dir: str | Path, out_dir: str | Path,
                  fallback_weights: Sequence[float] | Mapping[str, float] | None = None, tol: float = PARITY_TOL,
                  fallback_source: str | None = None) -> dict[str, Any]:
    """Export a trained GRADE/LTR policy directory to a serving directory; returns the manifest.

    ``fallback_weights`` (see :func:`fallback_vector`; e.g. the production formula's weights) are
    served when the model cannot be used; uniform weights when not given — a trained policy
    directory does not record the production weights, so they must be passed here.
    ``fallback_source`` (e.g. the file they came from) is recorded in the manifest.
    """
    policy_dir, out = Path(policy_dir), Path(out_dir)
    pol, spec, _ = load_policy(policy_dir)
    center = FeatureCenter.load(policy_dir / "feature_center.json")
    inputs = spec.inputs
    fb, dropped = fallback_vector(fallback_weights, inputs, fallback_source or "fallback weights")
    cards = list(center.cardinalities.values())
    cat_names = center.categorical_names(POLICY_ROLES)
    num_names = center.numeric_names(POLICY_ROLES)
    if len(cat_names) != len(pol.encoder.embeddings) or len(num_names) != len(center.numeric_names()):
        raise ExportError(f"{policy_dir}: feature center does not match the policy's inputs")
    head = FusionHead(pol)
    example = random_states(cards, len(num_names), pol.stats_mean, pol.stats_std, 4)

    out.mkdir(parents=True, exist_ok=True)
    tmp = out / "model.onnx.tmp"
    exporter = _export_onnx(head, example, tmp)
    try:
        session = onnx_session(tmp)
        err = parity_error(head, session, cards, len(num_names), pol.stats_mean, pol.stats_std)
    except ExportError:
        tmp.unlink(missing_ok=True)
        raise
    except Exception as exc:  # noqa: BLE001
        tmp.unlink(missing_ok=True)
        raise ExportError(f"onnxruntime could not run the exported model ({type(exc).__name__}: {exc})") from None
    if not err <= tol:
        tmp.unlink(missing_ok=True)
        raise ExportError(f"ONNX parity check failed: max abs weight error {err:.3g} > {tol:g} "
                          f"(exporter {exporter}); the model was not written")
    os.replace(tmp, out / "model.onnx")
    for name in ("feature_center.json", "fusion.json", "policy.pt", "config.json"):
        if (policy_dir / name).resolve() != (out / name).resolve():
            shutil.copyfile(policy_dir / name, out / name)
    schema = [s.model_dump(mode="json") for s in center.schema.select(POLICY_ROLES)]
    manifest = {
        "format": MANIFEST_FORMAT,
        "version": MANIFEST_VERSION,
        "blendrank_version": __version__,
        "created_unix": int(time.time()),
        "source": str(policy_dir),
        "objectives": list(spec.objectives),
        "fusion_inputs": inputs,
        "fusion": spec.model_dump(mode="json"),
        "feature_schema": schema,
        "categorical": cat_names,
        "numeric": num_names,
        "cardinalities": cards,
        "n_stats": int(pol.stats_mean.numel()),
        "fallback_weights": fb,
        "fallback_source": (fallback_source or "given") if fallback_weights is not None else "uniform (none given)",
        "fallback_dropped": dropped,
        "exporter": exporter,
        "torch_version": torch.__version__,
        "parity_max_abs_error": err,
        "model_sha256": sha256_file(out / "model.onnx"),
    }
    tmp_m = out / "manifest.json.tmp"
    tmp_m.write_text(json.dumps(manifest, indent=2))
    os.replace(tmp_m, out / "manifest.json")
    return manifest
