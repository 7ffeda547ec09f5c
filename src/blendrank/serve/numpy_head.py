"""The exported ONNX head evaluated with numpy, for small batches.

For one request onnxruntime's per-call cost (feeds, arena, graph walk: ~20-45 µs) is most of the
policy's time, while the head itself is a few tiny matrix products. :func:`compile_head` turns the
ONNX graph (weights read from its initializers: ``model.onnx`` stays the artifact of record) into
a list of numpy steps. Only the operators the policy exporter emits are supported, with the
semantics of the ONNX operator set; any other operator, attribute or shape makes
:func:`compile_head` return ``None`` and the caller keeps onnxruntime. The caller must also check
parity with onnxruntime before using it (:func:`max_abs_diff`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

Step = tuple[Callable[..., np.ndarray], tuple[str, ...], str]


class Unsupported(Exception):
    """The graph uses something this evaluator does not implement (the caller keeps onnxruntime)."""


def _attrs(node: Any) -> dict[str, Any]:
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _binary(op: str) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    return {"Add": np.add, "Sub": np.subtract, "Mul": np.multiply, "Div": np.divide}[op]


def _gemm(attrs: dict[str, Any], b_const: np.ndarray | None, c_const: np.ndarray | None, n_inputs: int
          ) -> tuple[Callable[..., np.ndarray], int]:
    """``alpha·A'·B' + beta·C``; returns the step and how many graph inputs it reads (the
    constant ``B`` / ``C`` are bound here, ``B`` pre-transposed so the product is one ``np.dot``)."""
    alpha, beta = float(attrs.get("alpha", 1.0)), float(attrs.get("beta", 1.0))
    if attrs.get("transA", 0) or alpha != 1.0 or beta != 1.0 or b_const is None or b_const.ndim != 2:
        raise Unsupported("Gemm with transA, alpha/beta != 1 or a non-constant B")
    b = np.ascontiguousarray(b_const.T if attrs.get("transB", 0) else b_const)
    if n_inputs == 3:
        if c_const is None:
            raise Unsupported("Gemm with a non-constant C")
        c = c_const

        def gemm_bias(a: np.ndarray) -> np.ndarray:
            out = np.dot(a, b)
            out += c
            return out

        return gemm_bias, 1
    return (lambda a: np.dot(a, b)), 1


def _softmax(axis: int) -> Callable[[np.ndarray], np.ndarray]:
    # The ufuncs' reduce directly: ndarray.max/.sum add a Python-level wrapper per call.
    def softmax(x: np.ndarray) -> np.ndarray:
        e = np.exp(x - np.maximum.reduce(x, axis=axis, keepdims=True))
        e /= np.add.reduce(e, axis=axis, keepdims=True)
        return e

    return softmax


def compile_head(model_path: str | Path, input_names: Sequence[str] = ("cat", "num", "stats"),
                 output_name: str = "weights") -> Callable[..., np.ndarray] | None:
    """``run(cat, num, stats) -> weights`` evaluating ``model_path`` with numpy, or ``None`` when
    the graph uses an operator or attribute not implemented here."""
    import onnx
    from onnx import numpy_helper

    try:
        model = onnx.load(str(model_path))
        opset = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)
        if opset < 13:  # Softmax's axis semantics changed at 13; the exporter writes 17+
            raise Unsupported(f"opset {opset}")
        graph = model.graph
        consts: dict[str, np.ndarray] = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
        feeds = [i.name for i in graph.input if i.name not in consts]
        if not set(feeds) <= set(input_names) or [o.name for o in graph.output] != [output_name]:
            raise Unsupported("unexpected graph inputs/outputs")
        steps: list[Step] = []
        for node in graph.node:
            a, ins, out = _attrs(node), tuple(node.input), node.output[0]
            if len(node.output) != 1 or any(not i for i in ins):
                raise Unsupported(f"{node.op_type} with optional inputs/outputs")
            op = node.op_type
            if op == "Constant":
                if "value" not in a:
                    raise Unsupported("Constant without a tensor value")
                consts[out] = numpy_helper.to_array(a["value"])
                continue
            if op == "Gather":
                axis = int(a.get("axis", 0))
                index = consts.get(ins[1])
                if index is not None and index.ndim == 0 and ins[0] not in consts:
                    # a column of the input: a view, x[:, i] for axis 1
                    at = (slice(None),) * axis + (int(index),)
                    steps.append((lambda x, at=at: x[at], (ins[0],), out))
                    continue
                fn: Callable[..., np.ndarray] = (lambda x, i: x[i]) if axis == 0 else \
                    (lambda x, i, axis=axis: np.take(x, i, axis=axis))
            elif op == "Concat":
                axis = int(a["axis"])
                fn = lambda *xs, axis=axis: np.concatenate(xs, axis=axis)
            elif op in ("Add", "Sub", "Mul", "Div"):
                fn = _binary(op)
            elif op == "Relu":
                fn = lambda x: np.maximum(x, np.float32(0))
            elif op == "Softmax":
                fn = _softmax(int(a.get("axis", -1)))
            elif op == "Gemm":
                fn, n = _gemm(a, consts.get(ins[1]), consts.get(ins[2]) if len(ins) > 2 else None, len(ins))
                ins = ins[:n]
            else:
                raise Unsupported(op)
            if all(i in consts for i in ins):  # constant subgraph: evaluate once
                consts[out] = fn(*(consts[i] for i in ins))
            else:
                steps.append((_bind(fn, ins, consts), tuple(i for i in ins if i not in consts), out))
    except (Unsupported, KeyError, ValueError, IndexError, TypeError):
        return None
    if output_name in consts:
        return None
    fed = tuple(n for n in input_names if n in feeds)
    dtypes = {"cat": np.int64}

    def run(*args: np.ndarray) -> np.ndarray:
        env = {n: np.ascontiguousarray(x, dtype=dtypes.get(n, np.float32))
               for n, x in zip(input_names, args) if n in fed}
        for fn, reads, out in steps:
            env[out] = fn(*[env[r] for r in reads])
        return env[output_name]

    return run


def _bind(fn: Callable[..., np.ndarray], ins: tuple[str, ...], consts: dict[str, np.ndarray]
          ) -> Callable[..., np.ndarray]:
    """``fn`` with its constant inputs bound in place, called with the variable ones in order."""
    if not any(i in consts for i in ins):
        return fn
    slots = [consts.get(i) for i in ins]
    var = [k for k, i in enumerate(ins) if i not in consts]
    if len(ins) == 2 and len(var) == 1:  # the common case, without the per-call list
        c = slots[1 - var[0]]
        return (lambda x: fn(x, c)) if var[0] == 0 else (lambda x: fn(c, x))

    def bound(*xs: np.ndarray) -> np.ndarray:
        args = list(slots)
        for k, x in zip(var, xs):
            args[k] = x
        return fn(*args)

    return bound


def max_abs_diff(run_a: Callable[..., np.ndarray], run_b: Callable[..., np.ndarray],
                 states: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> float:
    """Largest absolute difference between two heads' outputs over ``states`` (inf on a shape
    mismatch or non-finite output)."""
    worst = 0.0
    for cat, num, stats in states:
        a, b = run_a(cat, num, stats), run_b(cat, num, stats)
        if a.shape != b.shape or a.dtype != b.dtype or not (np.isfinite(a).all() and np.isfinite(b).all()):
            return float("inf")
        if a.size:
            worst = max(worst, float(np.abs(a - b).max()))
    return worst
