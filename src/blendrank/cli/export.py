"""``blendrank export``: write a trained policy's deterministic head to ONNX for serving."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import typer

from blendrank.cli.common import check_writable_dir, fail, out, user_errors
from blendrank.errors import DataError


def _check_policy_files(policy: Path) -> None:
    """Name the corrupt file of a policy directory before loading it (the loader would surface a
    raw JSON/pickle error). Missing files are reported by the loader itself."""
    import torch
    from pydantic import ValidationError

    from blendrank.algos.grade.config import GRADEConfig
    from blendrank.algos.grade.data import FusionSpec

    fix = "restore it or re-train with `blendrank train --method grade`"
    for name, model in (("config.json", GRADEConfig), ("fusion.json", FusionSpec)):
        path = policy / name
        if path.is_file():
            try:
                model.model_validate_json(path.read_bytes())
            except ValidationError as exc:
                first = exc.errors()[0]
                raise DataError(f"{path}: corrupt or not a blendrank {name} "
                                f"({'.'.join(map(str, first['loc'])) or 'file'}: {first['msg']}); {fix}") from None
    path = policy / "policy.pt"
    if path.is_file():
        try:
            torch.load(path, weights_only=True)
        except Exception as exc:  # noqa: BLE001 - whatever torch raises, the file is unusable
            detail = ("not a PyTorch weights file" if isinstance(exc, pickle.UnpicklingError)
                      else f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}")
            raise DataError(f"{path}: corrupt or truncated policy weights ({detail}); {fix}") from None


def _fallback(value: str | None) -> list[float] | None:
    if value is None:
        return None
    path = Path(value)
    if path.is_file():  # static_weights.json from `blendrank train --method static_search`
        try:
            return [float(x) for x in json.loads(path.read_text())["weights"]]
        except (ValueError, KeyError, TypeError) as exc:
            fail(f"--fallback-weights {value}: expected a static_weights.json with a 'weights' list ({exc})")
    try:
        return [float(x) for x in value.split(",")]
    except ValueError:
        fail(f"--fallback-weights {value!r}: give comma-separated numbers (one per fusion input) "
             "or a static_weights.json file")
    return None


@user_errors
def export(
    policy: Path = typer.Option(..., "--policy", help="Trained policy directory (`blendrank train --method grade`)."),
    out_dir: Path = typer.Option(..., "--out", help="Export directory (model.onnx, manifest.json, feature center, fusion spec)."),
    fallback_weights: str | None = typer.Option(
        None, "--fallback-weights",
        help="Static weights served when the model cannot be used: comma-separated, one per fusion "
             "input (e.g. the production weights), or a static_weights.json. Default: uniform."),
) -> None:
    """Export the policy's deterministic head to ONNX, checked against PyTorch with onnxruntime."""
    from blendrank.serve.export import export_policy

    check_writable_dir(out_dir)
    _check_policy_files(policy)
    m = export_policy(policy, out_dir, fallback_weights=_fallback(fallback_weights))
    out.print(f"exported {policy} -> {out_dir}/model.onnx ({m['exporter']} exporter, inputs {m['fusion_inputs']}, "
              f"parity max abs error {m['parity_max_abs_error']:.2g}, sha256 {m['model_sha256'][:12]})")
