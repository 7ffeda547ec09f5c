"""Contract rows → per-request tensors for fusion policies (one code path for logs, worlds and
serving): policy inputs (user/context features), fusion inputs, labels and logged positions.

Training reads the log as a stream (:class:`RequestLog`): Parquet record batches are grouped into
complete requests, built into tensors chunk by chunk and held in a bounded buffer of requests, so
memory does not grow with the log (docs/scaling.md). Whole-log statistics (Feature Center, median
price, list-statistics normaliser, position bias) come from streaming passes
(:meth:`RequestLog.scan`, :meth:`RequestLog.summary`) or a bounded sample (feature kinds, median
price beyond :data:`PRICE_SAMPLE` values).

Shapes: ``B`` requests, ``L`` candidates (padded), ``K`` fusion inputs.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, fields, replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
import torch.nn.functional as F
from torch import Tensor

from blendrank.data.contract import format_violations, objectives_of, validate_table
from blendrank.data.io import PARQUET_SUFFIXES
from blendrank.data.request_ids import (
    MAX_GATHERED_IDS,
    SeenRequestIds,
    repeated_requests_report,
    shifted,
)
from blendrank.data.slates import to_slates
from blendrank.data.stream import LogSource, as_source
from blendrank.errors import DataError
from blendrank.features.center import FeatureCenter, FeatureSchema
from blendrank.fusion.artifact import POLICY_ROLES, FusionSpec
from blendrank.fusion.formulas import fusion_features
from blendrank.fusion.state import list_stats
from blendrank.rewards.components import position_click_counts

REQUEST_ID = "request_id"
#: Prices kept (a uniform, seeded sample) to estimate the median training price: exact below it.
PRICE_SAMPLE = 1_000_000


def fit_fusion_spec(data: pa.Table | str | Path | LogSource, objectives: list[str] | None = None,
                    **kw) -> FusionSpec:
    """The fusion of a training table or Parquet log (file or directory of shards, streamed): its
    ``pred_*`` inputs and price; the median price is exact up to :data:`PRICE_SAMPLE` prices, else
    that of a uniform sample."""
    source = _source(data)
    cols = source.column_names
    objs = objectives or [o for o in objectives_of(cols) if f"pred_{o}" in cols]
    missing = [o for o in objs if f"pred_{o}" not in cols]
    if not objs or missing:
        raise DataError(f"fusion needs pred_<objective> columns; missing {missing or 'all'} "
                        "(run `blendrank mtl predict` first, or use a log with predictions)")
    use_price = "price" in cols
    scale = _sampled_median(rb.column(0) for rb in source.batches(["price"], 262_144)) if use_price else 1.0
    return FusionSpec(objectives=objs, use_price=use_price, price_scale=max(scale, 1e-6), **kw)


@dataclass(frozen=True)
class RequestBatch:
    """A batch of requests for a fusion policy."""

    cat: Tensor  # [B, n_cat] int64 user/context categoricals
    num: Tensor  # [B, n_num] float32 user/context numerics
    inputs: Tensor  # [B, L, K] raw fusion inputs (predictions, relative price)
    features: Tensor  # [B, L, K] fusion features (log(x + b) or x)
    stats: Tensor  # [B, 4K] list statistics of the features
    mask: Tensor  # [B, L] real candidates
    shown: Tensor  # [B, L] logged as shown (position not null)
    position: Tensor  # [B, L] logged 1-based position, 0 when not shown
    labels: dict[str, Tensor]  # objective -> [B, L]
    price: Tensor  # [B, L] (ones when the log has no price)
    request_id: np.ndarray  # [B]

    def __len__(self) -> int:
        return self.cat.shape[0]

    def index(self, idx: Tensor | np.ndarray | slice) -> RequestBatch:
        """Sub-batch of requests ``idx``."""
        out = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, dict):
                out[f.name] = {k: t[idx] for k, t in v.items()}
            elif isinstance(v, np.ndarray):
                out[f.name] = v[idx.numpy() if isinstance(idx, Tensor) else idx]
            else:
                out[f.name] = v[idx]
        return replace(self, **out)

    @classmethod
    def concat(cls, parts: list[RequestBatch]) -> RequestBatch:
        """The requests of ``parts`` in order (equal ``L``: build them with the same ``width``)."""
        if len(parts) == 1:
            return parts[0]
        out = {}
        for f in fields(cls):
            vals = [getattr(p, f.name) for p in parts]
            if isinstance(vals[0], dict):
                out[f.name] = {k: torch.cat([v[k] for v in vals]) for k in vals[0]}
            elif isinstance(vals[0], np.ndarray):
                out[f.name] = np.concatenate(vals)
            else:
                out[f.name] = torch.cat(vals)
        return cls(**out)


def fit_policy_features(table: pa.Table) -> FeatureCenter:
    """Feature Center over the user/context ``f_*`` columns of the training split."""
    schema = policy_schema(table)
    return FeatureCenter.fit(table.select(schema.names), schema)


def policy_schema(data: pa.Table | LogSource, rows: int = 16_384) -> FeatureSchema:
    """The user/context features of a log, as :meth:`FeatureSchema.infer` on the whole log:
    on a table directly; on Parquet files in a streaming pass that keeps at most
    ``max_int_categories + 1`` distinct values per integer column (the kind of every other
    column follows from its type)."""
    if isinstance(data, LogSource) and data.table is not None:
        data = data.table
    if isinstance(data, pa.Table):
        return FeatureSchema(features=FeatureSchema.infer(data).select(POLICY_ROLES))
    f_cols = [c for c in data.column_names if c.startswith("f_")]
    first = next(data.batches(f_cols, 1), None) if f_cols else None
    if first is None:
        return FeatureSchema(features=[])
    specs = FeatureSchema.infer(first).select(POLICY_ROLES)
    ints = [s.name for s in specs if pa.types.is_integer(first.schema.field(s.name).type)]
    limit = 101  # FeatureSchema.infer's max_int_categories + 1: enough to tell the kinds apart
    distinct: dict[str, set] = {c: set() for c in ints}
    for rb in data.batches(ints, rows) if ints else ():
        for c in ints:
            if len(distinct[c]) < limit:
                distinct[c].update(pc.unique(rb.column(c)).drop_null().to_pylist())
    if ints:  # a small table with those distinct values: infer decides the kinds exactly
        n = max(len(v) for v in distinct.values())
        sample = pa.table({c: pa.array([*distinct[c], *[None] * (n - len(distinct[c]))], first.schema.field(c).type)
                           for c in ints})
        kinds = {s.name: s.kind for s in FeatureSchema.infer(sample).features}
        specs = [s.model_copy(update={"kind": kinds[s.name]}) if s.name in kinds else s for s in specs]
    return FeatureSchema(features=specs)


def _pad(t: Tensor, width: int) -> Tensor:
    """``[B, L, ...]`` zero-padded (False for bool) along ``L`` to ``width``."""
    extra = width - t.shape[1]
    if extra <= 0:
        return t
    pad = [0, 0] * (t.dim() - 2) + [0, extra]
    return F.pad(t.to(torch.uint8), pad).bool() if t.dtype == torch.bool else F.pad(t, pad)


def build_batch(table: pa.Table, spec: FusionSpec, center: FeatureCenter, width: int | None = None) -> RequestBatch:
    """Group contract rows into a :class:`RequestBatch` (requests in first-appearance order,
    candidates by logged position, then row order), padded to ``width`` candidates when given
    (chunks of one log built with its longest request's width concatenate)."""
    labels = [o for o in objectives_of(table.column_names)]
    cols = [f"pred_{o}" for o in spec.objectives] + [f"label_{o}" for o in labels]
    extra = [c for c in ("position", "price") if c in table.column_names]
    sl = to_slates(table, cols + extra)
    if width is not None and width > sl.mask.shape[1]:
        sl = replace(sl, mask=_pad(sl.mask, width), columns={k: _pad(v, width) for k, v in sl.columns.items()})
    first = table.take(pa.array(sl.row[:, 0]))
    fb = center.transform(first, roles=POLICY_ROLES)
    pos = torch.nan_to_num(sl.columns["position"], nan=0.0) if "position" in sl.columns else torch.zeros_like(sl.mask, dtype=torch.float32)
    price = sl.columns["price"] if "price" in sl.columns else torch.ones_like(pos)
    parts = [sl.columns[f"pred_{o}"] for o in spec.objectives]
    if spec.use_price:
        if "price" not in sl.columns:
            raise DataError("this policy fuses price but the data has no price column")
        parts.append(price / spec.price_scale)
    inputs = torch.stack(parts, -1)
    label_map = {o: sl.columns[f"label_{o}"] for o in labels}
    if "order" in label_map and "gmv" not in label_map and "price" in sl.columns:
        # GMV-graded label for R_post / Stage 1 (linear gain): relative price of ordered items.
        label_map["gmv"] = label_map["order"] * price / spec.price_scale
    feats = fusion_features(inputs, spec.formula, spec.floor).masked_fill(~sl.mask.unsqueeze(-1), 0.0)
    return RequestBatch(
        cat=torch.from_numpy(fb.categorical), num=torch.from_numpy(fb.numeric), inputs=inputs, features=feats,
        stats=list_stats(feats, sl.mask, spec.stats_top), mask=sl.mask,
        shown=(pos > 0) & sl.mask, position=pos, labels=label_map,
        price=price, request_id=sl.request_id,
    )


# ------------------------------------------------------------------------------ streamed logs
def _source(data: pa.Table | str | Path | LogSource) -> LogSource:
    """Every row of ``data`` in log order (GRADE trains on whole requests, shown or not)."""
    if isinstance(data, (pa.Table, LogSource)):
        return as_source("log", data, shown_only=False)
    if Path(data).is_file() and not Path(data).name.lower().endswith(PARQUET_SUFFIXES):
        raise DataError(f"{data}: GRADE streams Parquet logs (a file or a directory of shards); read other "
                        "formats with blendrank.data.io.read_log and pass the table, or convert them to Parquet")
    return LogSource.of("log", data, shown_only=False)


def validate_log_stream(path: str | Path, read_batch_rows: int = 16_384) -> None:
    """Check a Parquet log against the data contract chunk by chunk of whole requests, never
    reading it whole; raise :class:`DataError` with the violations of the first bad chunk (rows
    counted from the start of the log, as ``data validate`` counts them).

    A request id that comes back after other requests (two requests given one id) is then
    checked as ``data validate`` checks it: its rows are gathered in a second pass and validated
    together, so the error lists the same violations (``multi_user_request``,
    ``duplicate_item``); and, since streamed training needs each request's rows adjacent, a
    reused id whose rows are merely apart is an error too."""
    source, where = _source(path), str(path)
    seen, repeated, n_repeated, offset = SeenRequestIds(), [], 0, 0
    chunks = _request_chunks(source, source.column_names, read_batch_rows, check_repeats=False)
    for t, starts in chunks:
        report = validate_table(t, where)
        if not report.ok:
            raise DataError(format_violations(shifted(report, offset)))
        heads = t[REQUEST_ID].combine_chunks().take(pa.array(starts))
        again = heads.filter(pa.array(seen.add(heads))).to_pylist()
        n_repeated += len(again)
        repeated.extend(again[: MAX_GATHERED_IDS - len(repeated)])
        offset += t.num_rows
    if not repeated:
        return
    report, rows = repeated_requests_report(source.batches(batch_size=read_batch_rows),
                                            list(dict.fromkeys(repeated)), where)
    rid = repeated[0]
    first, back = rows.get(rid, (-1, -1))
    checked = f" (the first {MAX_GATHERED_IDS:,} checked)" if n_repeated > len(repeated) else ""
    adjacency = (f"{where}: {n_repeated:,} request id(s) come back after other requests{checked}, "
                 f"e.g. request_id={rid!r} in rows {first} and {back}; `data validate` reads "
                 "such rows as one request, streamed training needs them adjacent: give each "
                 "request its own id, or sort the log by request (e.g. by ts, request_id)")
    raise DataError(f"{format_violations(report)}\n{adjacency}" if not report.ok else adjacency)


def _sampled_median(arrays: Iterable[pa.Array], size: int = PRICE_SAMPLE, seed: int = 0) -> float:
    """Median of the finite values; exact up to ``size`` values, else the median of a uniform
    sample of ``size`` of them (each value gets a seeded random key, the smallest keys stay)."""
    rng = np.random.default_rng(seed)
    keys, vals = np.empty(0), np.empty(0)
    for arr in arrays:
        x = np.asarray(arr.to_numpy(zero_copy_only=False), dtype=np.float64)
        x = x[np.isfinite(x)]
        keys, vals = np.concatenate([keys, rng.random(len(x))]), np.concatenate([vals, x])
        if len(keys) > size:
            keep = np.argpartition(keys, size)[:size]
            keys, vals = keys[keep], vals[keep]
    return float(np.median(vals)) if len(vals) else 1.0


def _request_starts(ids: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """Row index where each run of equal request ids starts (``[0, ...]`` for non-empty)."""
    ids = ids.combine_chunks() if isinstance(ids, pa.ChunkedArray) else ids
    if len(ids) == 0:
        return np.zeros(0, dtype=np.int64)
    change = pc.fill_null(pc.not_equal(ids.slice(1), ids.slice(0, len(ids) - 1)), True)
    return np.concatenate([[0], np.flatnonzero(change.to_numpy(zero_copy_only=False)) + 1]).astype(np.int64)


def _grouped(table: pa.Table) -> pa.Table:
    """``table`` with each request's rows adjacent, requests in first-appearance order (rows of a
    request keep their order): what :func:`_request_chunks` needs, for in-memory tables."""
    if table.num_rows == 0 or len(_request_starts(table[REQUEST_ID])) == pc.count_distinct(table[REQUEST_ID]).as_py():
        return table
    codes = pc.dictionary_encode(table[REQUEST_ID]).combine_chunks().indices.to_numpy(zero_copy_only=False)
    return table.take(pa.array(np.argsort(codes, kind="stable")))


def _request_chunks(source: LogSource, columns: list[str], rows: int,
                    check_repeats: bool = True) -> Iterator[tuple[pa.Table, np.ndarray]]:
    """``(table, starts)``: the log's complete requests, about ``rows`` rows at a time, in log
    order, with each request's first row. A request's rows must be adjacent in the log (every
    blendrank writer does this); the last request of a record batch is carried into the next.
    With ``check_repeats`` a request id that comes back after other requests, however far
    apart, is an error (every id passed is remembered, :class:`SeenRequestIds`)."""
    cols = list(dict.fromkeys([REQUEST_ID, *columns]))
    files = source.files
    where = "the training table" if source.table is not None else (
        str(files[0]) if len(files) == 1 else f"{files[0].parent} ({len(files)} shards)")
    carry: pa.Table | None = None
    seen = SeenRequestIds() if check_repeats else None

    def emit(t: pa.Table, starts: np.ndarray) -> tuple[pa.Table, np.ndarray]:
        if seen is not None:
            heads = t[REQUEST_ID].combine_chunks().take(pa.array(starts))
            again = seen.add(heads)
            if again.any():
                rid = heads[int(np.argmax(again))].as_py()
                raise DataError(
                    f"{where}: the rows of a request are not adjacent (request_id={rid!r} comes "
                    "back after other requests); sort the log by request (e.g. by ts, "
                    "request_id) before training, or give each request its own id")
        return t, starts

    for rb in source.batches(cols, rows):
        t = pa.Table.from_batches([rb])
        if carry is not None:
            t = pa.concat_tables([carry, t])
        starts = _request_starts(t[REQUEST_ID])
        if len(starts) == 0:
            continue
        last = int(starts[-1])
        carry = t.slice(last)
        if last > 0:
            yield emit(t.slice(0, last), starts[:-1])
    if carry is not None and carry.num_rows:
        yield emit(carry, np.zeros(1, dtype=np.int64))


def _order_generator(seed: int, stage: int, pass_: int, buffer: int) -> torch.Generator:
    """The generator that shuffles ``buffer`` in ``pass_`` of ``stage``: derived from the seed
    alone, so any position of the stream can be replayed (exact resume) without saved state."""
    state = np.random.SeedSequence([seed % 2**63, stage, pass_, buffer]).generate_state(2, np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 31 | int(state[1]) >> 1)


@dataclass
class LogSummary:
    """Whole-log statistics of the training requests (one streaming pass, :meth:`RequestLog.summary`)."""

    stats_mean: Tensor  # [4K] mean of the list statistics over requests
    stats_std: Tensor  # [4K] their standard deviation (unbiased)
    any_shown: bool  # some candidate has a logged position
    labels: list[str]  # label names of the built requests (objectives, plus gmv when derived)
    click_label: str  # label the position bias is fitted on
    shows: Tensor  # [P] shown impressions per position 1..P
    clicks: Tensor  # [P] of them with a click_label > 0


class RequestLog:
    """The training requests of a log, read in record batches and never whole.

    ``data`` is a table (already in memory) or a Parquet file / directory of shards. Requests
    (adjacent rows with one ``request_id``; tables are regrouped) are numbered in log order and
    cut into buffers of ``buffer_requests``; :meth:`buffers` builds them one at a time, chunk by
    chunk of ``read_batch_rows`` rows, so memory is bounded by those two numbers. A log that fits
    in one buffer is built once and kept.

    :meth:`scan` makes one streaming pass for what building needs: the :class:`FusionSpec` (when
    not given), the Feature Center, the number of requests and the longest request (``width``)."""

    def __init__(self, source: LogSource | None, spec: FusionSpec | None, center: FeatureCenter | None, n_requests: int,
                 width: int, read_batch_rows: int, buffer_requests: int, cache: RequestBatch | None = None):
        self.source, self.spec, self.center = source, spec, center
        self.n_requests, self.width = n_requests, width
        self.read_batch_rows, self.buffer_requests = read_batch_rows, buffer_requests
        self._cache = cache
        self._summaries: dict[int, LogSummary] = {}
        self.columns: list[str] = []
        if source is not None and spec is not None and center is not None:
            cols = source.column_names
            self.columns = [*center.schema.names, *[f"pred_{o}" for o in spec.objectives],
                            *[c for c in cols if c.startswith("label_")],
                            *[c for c in ("position", "price") if c in cols]]

    @classmethod
    def from_batch(cls, batch: RequestBatch) -> RequestLog:
        """Requests already built in memory: one buffer, kept."""
        return cls(None, None, None, len(batch), batch.mask.shape[1], 0, max(len(batch), 1), cache=batch)

    @classmethod
    def scan(cls, data: pa.Table | str | Path, spec: FusionSpec | None = None, *, read_batch_rows: int = 16_384,
             buffer_requests: int = 8192) -> RequestLog:
        source = _source(data)
        if source.table is not None:
            source = replace(source, table=_grouped(source.table))
        if REQUEST_ID not in source.column_names:
            raise DataError(f"{'the training table' if source.table is not None else source.files[0]}: "
                            f"no {REQUEST_ID} column; GRADE trains on requests (see docs/data_contract.md)")
        spec = spec or fit_fusion_spec(source)
        schema = policy_schema(source, read_batch_rows)
        size = [0, 0]  # requests, longest request

        def policy_batches() -> Iterator[pa.RecordBatch]:
            for t, starts in _request_chunks(source, schema.names, read_batch_rows):
                size[0] += len(starts)
                size[1] = max(size[1], int(np.diff(np.append(starts, t.num_rows)).max()))
                yield from t.select(schema.names).to_batches()

        center = FeatureCenter.fit(policy_batches(), schema)
        return cls(source, spec, center, size[0], size[1], read_batch_rows, buffer_requests)

    def _chunks(self, start: int = 0) -> Iterator[tuple[pa.Table, np.ndarray]]:
        """``(rows, starts)`` of the requests from number ``start`` on (earlier rows are read but
        not built)."""
        first = 0
        # scan's pass has checked that no request id comes back: later passes need not remember them
        chunks = _request_chunks(self.source, self.columns, self.read_batch_rows,
                                 check_repeats=False)
        for t, starts in chunks:
            n = len(starts)
            if first + n > start:
                skip = max(start - first, 0)
                if skip:
                    t, starts = t.slice(int(starts[skip])), starts[skip:] - starts[skip]
                yield t, starts
            first += n

    def buffers(self, first: int = 0) -> Iterator[RequestBatch]:
        """Buffers ``first, first + 1, …`` in log order: ``buffer_requests`` requests each (the
        last one fewer), built with the log's width."""
        if self._cache is not None or self.n_requests <= self.buffer_requests:
            if first == 0:
                if self._cache is None:
                    self._cache = RequestBatch.concat(list(self._built(0)))
                yield self._cache
            return
        yield from self._built(first)

    def _built(self, first_buffer: int) -> Iterator[RequestBatch]:
        size = self.buffer_requests
        parts: list[RequestBatch] = []
        held = 0
        for t, starts in self._chunks(first_buffer * size):
            while len(starts):
                room = size - held
                take = min(room, len(starts))
                end = int(starts[take]) if take < len(starts) else t.num_rows
                parts.append(build_batch(t.slice(0, end), self.spec, self.center, self.width))
                held += take
                t, starts = t.slice(end), starts[take:] - end
                if held == size:
                    yield RequestBatch.concat(parts)
                    parts, held = [], 0
        if parts:
            yield RequestBatch.concat(parts)

    def summary(self, max_pos: int) -> LogSummary:
        """Streaming pass over the built requests (once per ``max_pos``): list-statistics moments
        (merged per buffer, Chan et al.), whether anything was shown, and click counts per
        position ``1..max_pos`` (for :func:`blendrank.rewards.components.position_bias_from_counts`)."""
        if max_pos not in self._summaries:
            self._summaries[max_pos] = self._summary(max_pos)
        return self._summaries[max_pos]

    def _summary(self, max_pos: int) -> LogSummary:
        n, mean, m2 = 0, None, None
        shows = clicks = torch.zeros(max_pos, dtype=torch.float64)
        any_shown, labels = False, []
        for buf in self.buffers():
            labels = list(buf.labels)
            click = "click" if "click" in buf.labels else labels[0]
            x = buf.stats.double()
            nb, mb = len(x), x.mean(0)
            m2b = ((x - mb) ** 2).sum(0)
            if mean is None:
                n, mean, m2 = nb, mb, m2b
            else:
                delta, tot = mb - mean, n + nb
                mean, m2, n = mean + delta * nb / tot, m2 + m2b + delta**2 * n * nb / tot, tot
            any_shown |= bool(buf.shown.any())
            s, c = position_click_counts(buf.position, buf.labels[click], buf.shown, max_pos)
            shows, clicks = shows + s, clicks + c
            del buf, x  # not held while the next buffer is built
        std = (m2 / max(n - 1, 1)).sqrt()
        return LogSummary(mean.float(), std.float(), any_shown, labels, click, shows, clicks)


def shuffled_requests(log: RequestLog, seed: int, stage: int, start: int = 0,
                      passes: int | None = 1) -> Iterator[RequestBatch]:
    """The log's requests in training order from stream position ``start``: pass ``p`` visits
    every request once, buffer after buffer, each buffer permuted by
    ``_order_generator(seed, stage, p, buffer)``; ``passes=None`` streams forever. Position
    ``start`` is replayed exactly from the seed (the buffers before it are skipped unbuilt)."""
    n, size = log.n_requests, log.buffer_requests
    p, offset = divmod(start, n)
    while passes is None or p < passes:
        first = offset // size
        for k, buf in enumerate(log.buffers(first), first):
            perm = torch.randperm(len(buf), generator=_order_generator(seed, stage, p, k))
            lo = max(offset - k * size, 0)
            part = buf.index(perm[lo:]) if lo < len(buf) else None
            del buf  # build the next buffer while only this shuffled copy is held
            if part is not None:
                yield part
        p, offset = p + 1, 0


def batches_of(parts: Iterator[RequestBatch], size: int) -> Iterator[RequestBatch]:
    """Consecutive batches of ``size`` requests from a stream of pieces (the last may be smaller)."""
    held: list[RequestBatch] = []
    count = 0
    for part in parts:
        held.append(part)
        count += len(part)
        if count >= size:
            buf = RequestBatch.concat(held)
            starts = range(0, count - size + 1, size)
            for lo in starts:
                yield buf.index(slice(lo, lo + size))
            rest = starts[-1] + size  # copied, so that the rest does not hold the whole buffer
            held, count = ([buf.index(torch.arange(rest, count))], count - rest) if rest < count else ([], 0)
            del buf
    if count:
        yield RequestBatch.concat(held)
