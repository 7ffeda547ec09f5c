"""``blendrank export``: write a trained policy's deterministic head to ONNX for serving."""

from __future__ import annotations

import errno
import json
import pickle
from pathlib import Path

import typer

from blendrank.cli.common import check_writable_dir, fail, out, user_errors
from blendrank.errors import BlendrankError, DataError
from blendrank.objective import OBJECTIVE_FILE, load_objective
from blendrank.staging import staged_files


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


def _fallback(value: str | None) -> tuple[list[float] | dict[str, float] | None, str | None]:
    """``--fallback-weights``: comma-separated numbers, or a JSON/YAML file holding the weights:
    ``static_weights.json`` (``objectives`` + ``weights`` lists, from `blendrank train --method
    static_search`), ``production.yaml`` (``weights: {objective: w}``, beside a contract log) or a
    world's ``summary.json`` (``production_weights: {input: w}``)."""
    if value is None:
        return None, None
    path = Path(value)
    if not path.is_file():
        try:
            return [float(x) for x in value.split(",")], "--fallback-weights"
        except ValueError:
            fail(f"--fallback-weights {value!r}: not a file; give comma-separated numbers (one per fusion input) "
                 "or a static_weights.json / production.yaml / world summary.json")
    try:
        import yaml

        doc = json.loads(path.read_text()) if path.suffix == ".json" else yaml.safe_load(path.read_text())
    except (OSError, ValueError, yaml.YAMLError) as exc:
        fail(f"--fallback-weights {path}: unreadable ({exc})")
    doc = doc if isinstance(doc, dict) else {}
    weights = doc.get("production_weights", doc.get("weights"))
    if isinstance(weights, list) and isinstance(doc.get("objectives"), list) and len(doc["objectives"]) == len(weights):
        weights = dict(zip(doc["objectives"], weights))
    if not isinstance(weights, (dict, list)):
        fail(f"--fallback-weights {path}: expected a 'weights' list or mapping (static_weights.json, production.yaml) "
             "or a 'production_weights' mapping (a world's summary.json)")
    return weights, str(path)


@user_errors
def export(
    policy: Path = typer.Option(..., "--policy", help="Trained policy directory (`blendrank train --method grade`)."),
    out_dir: Path = typer.Option(..., "--out", help="Export directory (model.onnx, manifest.json, feature center, fusion spec)."),
    fallback_weights: str | None = typer.Option(
        None, "--fallback-weights",
        help="Static weights served when the model cannot be used, normally the production formula's: "
             "comma-separated (one per fusion input), or a file: a world's summary.json, a production.yaml, "
             "a static_weights.json, an objective.yaml. Default: the production weights of the objective the "
             "policy was trained for (its objective.yaml), else uniform."),
) -> None:
    """Export the policy's deterministic head to ONNX, checked against PyTorch with onnxruntime."""
    from blendrank.serve.export import export_policy

    check_writable_dir(out_dir)
    _check_policy_files(policy)
    weights, source = _fallback(fallback_weights)
    if weights is None and (policy / OBJECTIVE_FILE).is_file():  # the objective the policy was trained for
        weights, source = load_objective(policy / OBJECTIVE_FILE).production_weights, f"{policy / OBJECTIVE_FILE}"
    try:
        # Built beside --out and moved into place when complete (manifest.json, which serving
        # reads first, last): a failed export leaves no partial directory and the old one intact.
        with staged_files(out_dir, last=("manifest.json",)) as stage:
            m = export_policy(policy, stage, fallback_weights=weights, fallback_source=source)
    except OSError as exc:
        if exc.errno != errno.ENOSPC:
            raise
        # The error names the file being copied (the policy's), not where space ran out.
        raise BlendrankError(
            f"--out {out_dir}: no space left on the device while writing the export; free some "
            f"space or choose another --out ({out_dir} was not changed)") from None
    out.print(f"exported {policy} -> {out_dir}/model.onnx ({m['exporter']} exporter, inputs {m['fusion_inputs']}, "
              f"parity max abs error {m['parity_max_abs_error']:.2g}, sha256 {m['model_sha256'][:12]})")
    fb = dict(zip(m["fusion_inputs"], (round(w, 4) for w in m["fallback_weights"])))
    dropped = f"; not fused, dropped: {m['fallback_dropped']}" if m["fallback_dropped"] else ""
    out.print(f"fallback weights {fb} from {m['fallback_source']}{dropped}")
