#!/usr/bin/env python3
"""Vendor a compact Parquet copy of KuaiRand-Pure (2022-04-25 … 05-08) into the package.

Run once; kept for reproducibility::

    python scripts/vendor_kuairand.py --source /path/to/kuairand_pure

Reads the three CSVs of the source directory (checked against its ``SHA256SUMS`` when present),
narrows the dtypes losslessly (every value is checked after the round trip), and writes
``log.parquet``, ``users.parquet`` and ``videos.parquet`` (zstd) into
``src/blendrank/resources/kuairand/`` together with the official ``LICENSE`` (copied
byte-identical). Every row and every column is kept, in the original order. ``ATTRIBUTION.md``
is maintained by hand next to them.
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
import pyarrow.parquet as pq

LOG_CSV = "log_standard_4_25_to_5_08_pure.csv.gz"
USERS_CSV = "user_features_pure.csv.gz"
VIDEOS_CSV = "video_features_basic_pure.csv.gz"

DEST = Path(__file__).resolve().parents[1] / "src" / "blendrank" / "resources" / "kuairand"

I8, I16, I32, I64 = pa.int8(), pa.int16(), pa.int32(), pa.int64()
FLAGS = (
    "is_click",
    "is_like",
    "is_follow",
    "is_comment",
    "is_forward",
    "is_hate",
    "long_view",
    "is_profile_enter",
    "is_rand",
)

# Narrow dtypes; a column not named keeps the type pyarrow read it with.
LOG_TYPES: dict[str, pa.DataType] = {
    "user_id": I32,
    "video_id": I32,
    "date": I32,
    "hourmin": I16,
    "time_ms": I64,
    "play_time_ms": I32,
    "duration_ms": I32,
    "profile_stay_time": I32,
    "comment_stay_time": I32,
    "tab": I8,
    **{name: I8 for name in FLAGS},
}
USER_TYPES: dict[str, pa.DataType] = {
    "user_id": I32,
    "is_lowactive_period": I8,
    "is_live_streamer": I8,
    "is_video_author": I8,
    "follow_user_num": I32,
    "fans_user_num": I32,
    "friend_user_num": I32,
    "register_days": I16,
    **{f"onehot_feat{i}": I16 for i in range(18)},
}
VIDEO_TYPES: dict[str, pa.DataType] = {
    "video_id": I32,
    "author_id": I32,
    "visible_status": I8,
    "video_duration": I32,
    "server_width": I16,
    "server_height": I16,
    "music_id": I64,
    "music_type": I8,
}
# Sorted, slowly varying integer columns compress far better delta-encoded than dictionary-encoded.
DELTA_COLUMNS = {"log": ("time_ms",)}


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def check_sums(source: Path) -> None:
    """Verify the source files against ``SHA256SUMS`` when the directory has one."""
    sums = source / "SHA256SUMS"
    if not sums.is_file():
        print(f"note: {sums} not found; checksums not verified")
        return
    for line in sums.read_text().splitlines():
        if not line.strip():
            continue
        digest, name = line.split()
        if sha256(source / name) != digest:
            sys.exit(f"{source / name}: SHA256 mismatch with SHA256SUMS")


def narrow(table: pa.Table, types: dict[str, pa.DataType], name: str) -> pa.Table:
    """Cast the named columns (``safe`` casts fail on overflow or truncation), then verify."""
    cols = []
    for field in table.schema:
        col = table[field.name]
        if field.name in types:
            col = col.cast(types[field.name], safe=True)
        cols.append(col)
    out = pa.table(cols, names=table.column_names)
    for field in table.schema:  # lossless: every value (and every null) survives the round trip
        back = out[field.name].cast(field.type)
        same = pc.all(pc.equal(back, table[field.name])).as_py() in (True, None)
        if not same or back.null_count != table[field.name].null_count:
            sys.exit(f"{name}.{field.name}: narrowing to {out[field.name].type} is not lossless")
    return out


def write(table: pa.Table, path: Path, delta: tuple[str, ...] = ()) -> None:
    dictionary = [c for c in table.column_names if c not in delta]
    pq.write_table(
        table,
        path,
        compression="zstd",
        compression_level=19,
        use_dictionary=dictionary,
        column_encoding={c: "DELTA_BINARY_PACKED" for c in delta} or None,
        row_group_size=len(table) or None,
        write_statistics=True,
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, required=True, help="directory with the three CSVs")
    parser.add_argument(
        "--dest", type=Path, default=DEST, help=f"output directory (default {DEST})"
    )
    args = parser.parse_args(argv)
    source, dest = args.source, args.dest
    check_sums(source)
    dest.mkdir(parents=True, exist_ok=True)

    read_opts = pcsv.ConvertOptions(strings_can_be_null=False)
    log = narrow(pcsv.read_csv(source / LOG_CSV, convert_options=read_opts), LOG_TYPES, "log")
    users = narrow(
        pcsv.read_csv(source / USERS_CSV, convert_options=read_opts), USER_TYPES, "users"
    )
    videos = narrow(
        pcsv.read_csv(source / VIDEOS_CSV, convert_options=read_opts), VIDEO_TYPES, "videos"
    )
    write(log, dest / "log.parquet", DELTA_COLUMNS["log"])
    write(users, dest / "users.parquet")
    write(videos, dest / "videos.parquet")
    shutil.copyfile(source / "LICENSE", dest / "LICENSE")

    total = 0
    for name, table in (("log", log), ("users", users), ("videos", videos)):
        size = (dest / f"{name}.parquet").stat().st_size
        total += size
        print(
            f"{name}.parquet: {table.num_rows:,} rows x {table.num_columns} cols, {size / 1e6:.2f} MB"
        )
    print(f"total {total / 1e6:.2f} MB in {dest}")


if __name__ == "__main__":
    main()
