"""The exported ONNX head evaluated with numpy, for small batches.

For one request onnxruntime's per-call cost (feeds, arena, graph walk: 20-45 µs with the cache
effects of a whole request) is most of the policy's time, while the head itself is a few tiny
matrix products. :func:`compile_head` translates the ONNX graph (weights read from its
initializers: ``model.onnx`` stays the artifact of record) into one straight-line numpy function
— no per-node dispatch — with two rewrites that do not change any arithmetic: nested
concatenations become one ``np.concatenate``, and an activation or a constant operand is applied
in place to a temporary that nothing else reads.

Only the operators the policy exporter emits are supported, with the semantics of the ONNX
operator set (opset >= 13); any other operator, attribute or input makes :func:`compile_head`
return ``None`` and the caller keeps onnxruntime. The caller must also check parity with
onnxruntime before using it (:func:`max_abs_diff`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

BINARY_UFUNCS = {"Add": "_add", "Sub": "_subtract", "Mul": "_multiply", "Div": "_divide"}


class Unsupported(Exception):
    """The graph uses something this evaluator does not implement (the caller keeps onnxruntime)."""


@dataclass
class _Node:
    op: str  # ONNX op type, or "Column" (x[:, j], a view) / "Embedding" (table[index])
    ins: list[str]  # variable inputs (graph value names)
    out: str
    attrs: dict[str, Any] = field(default_factory=dict)


def _attrs(node: Any) -> dict[str, Any]:
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _read_graph(model: Any, input_names: Sequence[str], output_name: str
                ) -> tuple[list[_Node], dict[str, np.ndarray], list[str]]:
    """The graph as ``_Node`` s over variable values, its constants, and the inputs it reads."""
    from onnx import numpy_helper

    opset = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)
    if opset < 13:  # Softmax's axis semantics changed at 13; the exporter writes 17+
        raise Unsupported(f"opset {opset}")
    graph = model.graph
    consts = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    feeds = [i.name for i in graph.input if i.name not in consts]
    if not set(feeds) <= set(input_names) or [o.name for o in graph.output] != [output_name]:
        raise Unsupported("unexpected graph inputs/outputs")
    nodes: list[_Node] = []
    for onnx_node in graph.node:
        op, ins, a = onnx_node.op_type, list(onnx_node.input), _attrs(onnx_node)
        if len(onnx_node.output) != 1 or any(not i for i in ins):
            raise Unsupported(f"{op} with optional inputs/outputs")
        out = onnx_node.output[0]
        if op == "Constant":
            if "value" not in a:
                raise Unsupported("Constant without a tensor value")
            consts[out] = numpy_helper.to_array(a["value"])
            continue
        if all(i in consts for i in ins):
            raise Unsupported(f"{op} of constants only")  # the exporter folds these
        if op == "Gather":
            axis, index = int(a.get("axis", 0)), consts.get(ins[1])
            if index is not None and index.ndim == 0 and axis == 1:
                node = _Node("Column", [ins[0]], out, {"j": int(index)})
            elif ins[0] in consts and axis == 0 and consts[ins[0]].ndim == 2 and ins[1] not in consts:
                node = _Node("Embedding", [ins[1]], out, {"table": consts[ins[0]]})
            else:
                raise Unsupported("Gather other than a column or an embedding look-up")
        elif op == "Concat":
            if any(i in consts for i in ins):
                raise Unsupported("Concat with a constant")
            node = _Node(op, ins, out, {"axis": int(a["axis"])})
        elif op in BINARY_UFUNCS:
            node = _Node(op, [i for i in ins if i not in consts], out,
                         {"const": {k: consts[i] for k, i in enumerate(ins) if i in consts}})
        elif op == "Relu":
            node = _Node(op, ins, out)
        elif op == "Softmax":
            node = _Node(op, ins, out, {"axis": int(a.get("axis", -1))})
        elif op == "Gemm":
            b, c = consts.get(ins[1]), consts.get(ins[2]) if len(ins) > 2 else None
            if a.get("transA", 0) or a.get("alpha", 1.0) != 1.0 or a.get("beta", 1.0) != 1.0 \
                    or b is None or b.ndim != 2 or (len(ins) > 2 and c is None):
                raise Unsupported("Gemm with transA, alpha/beta != 1 or a non-constant B or C")
            node = _Node(op, ins[:1], out, {"b": np.ascontiguousarray(b.T if a.get("transB", 0) else b), "c": c})
        else:
            raise Unsupported(op)
        nodes.append(node)
    return nodes, consts, feeds


def _flatten_concats(nodes: list[_Node]) -> None:
    """Concat of a Concat (same axis, the inner one read only there) → one Concat."""
    made = {n.out: n for n in nodes}
    for n in nodes:
        if n.op != "Concat":
            continue
        reads = Counter(i for m in nodes for i in m.ins)
        flat: list[str] = []
        for i in n.ins:
            inner = made.get(i)
            same = inner is not None and inner.op == "Concat" and inner.attrs["axis"] == n.attrs["axis"]
            flat.extend(inner.ins if same and reads[i] == 1 else [i])
        n.ins = flat


def _live(nodes: list[_Node], output: str) -> list[_Node]:
    need, keep = {output}, []
    for n in reversed(nodes):
        if n.out in need:
            keep.append(n)
            need.update(n.ins)
    return keep[::-1]


class _Source:
    """Generated lines and the namespace of the constants they read."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.ns: dict[str, Any] = {"_concatenate": np.concatenate, "_dot": np.dot, "_exp": np.exp,
                                   "_maximum": np.maximum, "_max_reduce": np.maximum.reduce,
                                   "_sum_reduce": np.add.reduce, "_ascontiguousarray": np.ascontiguousarray,
                                   **{u: getattr(np, u[1:]) for u in BINARY_UFUNCS.values()}}

    def const(self, value: Any) -> str:
        name = f"_c{len(self.ns)}"
        self.ns[name] = value
        return name


def _emit(nodes: list[_Node], inputs: Sequence[str], fed: Sequence[str], output: str) -> tuple[str, dict[str, Any]]:
    """Python source of ``run(*inputs)`` (reading those in ``fed``) and its namespace."""
    src = _Source()
    var: dict[str, str] = {}
    fresh: set[str] = set()  # arrays this function allocated (safe to overwrite once read by one node)
    reads = Counter(i for n in nodes for i in n.ins)
    for k, name in enumerate(inputs):
        if name not in fed:
            continue
        var[name] = f"x{k}"
        dtype = "_int64" if name == "cat" else "_float32"
        src.ns[dtype] = np.int64 if dtype == "_int64" else np.float32
        src.lines.append(f"x{k} = _ascontiguousarray(x{k}, dtype={dtype})")
    for t, n in enumerate(nodes):
        v, ins = f"v{t}", [var[i] for i in n.ins]
        own = len(ins) == 1 and n.ins[0] in fresh and reads[n.ins[0]] == 1  # may overwrite its input
        if n.op == "Column":
            src.lines.append(f"{v} = {ins[0]}[:, {n.attrs['j']}]")
        elif n.op == "Embedding":
            src.lines.append(f"{v} = {src.const(n.attrs['table'])}[{ins[0]}]")
        elif n.op == "Concat":
            src.lines.append(f"{v} = _concatenate(({', '.join(ins)},), axis={n.attrs['axis']})")
        elif n.op in BINARY_UFUNCS:
            args = list(ins)
            for pos, c in sorted(n.attrs["const"].items()):
                args.insert(pos, src.const(c))
            const_f32 = all(c.dtype == np.float32 for c in n.attrs["const"].values())
            out = f", out={ins[0]}" if own and const_f32 and args[0] == ins[0] else ""
            src.lines.append(f"{v} = {BINARY_UFUNCS[n.op]}({', '.join(args)}{out})")
        elif n.op == "Relu":
            src.lines.append(f"{v} = _maximum({ins[0]}, {src.const(np.float32(0))}{f', out={ins[0]}' if own else ''})")
        elif n.op == "Softmax":
            ax = n.attrs["axis"]
            src.lines.append(f"{v} = _exp({ins[0]} - _max_reduce({ins[0]}, axis={ax}, keepdims=True))")
            src.lines.append(f"{v} /= _sum_reduce({v}, axis={ax}, keepdims=True)")
        elif n.op == "Gemm":
            src.lines.append(f"{v} = _dot({ins[0]}, {src.const(n.attrs['b'])})")
            if n.attrs["c"] is not None:
                src.lines.append(f"{v} += {src.const(n.attrs['c'])}")
        var[n.out] = v
        if n.op != "Column":
            fresh.add(n.out)
    args = ", ".join(f"x{k}" for k in range(len(inputs)))
    body = "\n".join(f"    {line}" for line in src.lines)
    return f"def run({args}):\n{body}\n    return {var[output]}\n", src.ns


def compile_head(model_path: str | Path, input_names: Sequence[str] = ("cat", "num", "stats"),
                 output_name: str = "weights") -> Callable[..., np.ndarray] | None:
    """``run(cat, num, stats) -> weights`` evaluating ``model_path`` with numpy (inputs the graph
    does not read are ignored), or ``None`` when the graph uses an operator or attribute not
    implemented here. ``run.source`` is the generated code."""
    try:
        import onnx

        nodes, _, feeds = _read_graph(onnx.load(str(model_path)), input_names, output_name)
        _flatten_concats(nodes)
        nodes = _live(nodes, output_name)
        if not nodes or nodes[-1].out != output_name:
            raise Unsupported("the output is not computed by the graph")
        source, ns = _emit(nodes, input_names, feeds, output_name)
        exec(compile(source, f"<numpy head of {Path(model_path).name}>", "exec"), ns)  # noqa: S102 - our own code
    except (Unsupported, ImportError, OSError, KeyError, ValueError, IndexError, TypeError, AttributeError):
        return None  # (ImportError: the onnx package is optional at serving time; onnxruntime serves)
    run = ns["run"]
    run.source = source
    return run


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
