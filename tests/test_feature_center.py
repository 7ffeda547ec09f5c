"""Feature Center: fit on train only, streaming == whole table, no train/serve skew, safe files."""

from __future__ import annotations

import json
import math
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from blendrank.errors import ConfigError, DataError
from blendrank.features.center import (
    STD_FLOOR,
    FeatureCenter,
    FeatureSchema,
    FeatureSpec,
)

ARROW_SCHEMA = pa.schema(
    [
        ("f_user_seg", pa.string()),
        ("f_ctx_hour", pa.int64()),
        ("f_item_price", pa.float64()),
        ("f_item_sales", pa.int64()),
        ("f_flag", pa.bool_()),
    ]
)
SCHEMA = FeatureSchema(
    features=[
        FeatureSpec(name="f_user_seg", kind="categorical", role="user"),
        FeatureSpec(name="f_ctx_hour", kind="categorical", role="context"),
        FeatureSpec(name="f_item_price", kind="numeric", role="item", clip=3.0),
        FeatureSpec(name="f_item_sales", kind="numeric", role="item", transform="log1p_standard"),
        FeatureSpec(name="f_flag", kind="categorical", role="item"),
    ]
)


def random_table(n: int, seed: int) -> pa.Table:
    rng = np.random.default_rng(seed)
    price = rng.lognormal(3.0, 1.0, n)
    price[rng.random(n) < 0.05] = np.nan
    price_mask = rng.random(n) < 0.05
    seg = rng.choice(["a", "b", "c", "d", "é"], size=n, p=[0.4, 0.3, 0.2, 0.09, 0.01])
    return pa.table(
        {
            "f_user_seg": pa.array(seg.tolist(), mask=rng.random(n) < 0.05),
            "f_ctx_hour": pa.array(rng.integers(0, 24, n), mask=rng.random(n) < 0.05),
            "f_item_price": pa.array(price, mask=price_mask),
            "f_item_sales": pa.array(rng.integers(0, 10_000, n)),
            "f_flag": pa.array(rng.random(n) < 0.3, mask=rng.random(n) < 0.1),
        },
        schema=ARROW_SCHEMA,
    )


@lru_cache(maxsize=1)
def fitted() -> FeatureCenter:
    return FeatureCenter.fit(random_table(2000, seed=0), SCHEMA)


def assert_same(a: Any, b: Any) -> None:
    assert a.categorical_names == b.categorical_names and a.numeric_names == b.numeric_names
    assert a.categorical.dtype == b.categorical.dtype == np.int64
    assert a.numeric.dtype == b.numeric.dtype == np.float32
    assert np.array_equal(a.categorical, b.categorical)
    assert a.numeric.tobytes() == b.numeric.tobytes()  # bit-identical


# ----------------------------------------------------------------------------- fit on train only


def test_fit_on_train_only_unseen_value_is_oov_and_mean_is_train_mean() -> None:
    train = pa.table({"f_user_seg": ["a", "b", "a"], "f_item_price": [1.0, 2.0, 6.0]})
    test = pa.table({"f_user_seg": ["a", "only_in_test", None], "f_item_price": [100.0, 3.0, None]})
    schema = FeatureSchema.infer(train)
    center = FeatureCenter.fit(train, schema)
    out = center.transform(test)
    assert out.categorical[:, 0].tolist() == [1, 0, 0]  # "a" most frequent -> 1; unseen & None -> 0
    state = center.numeric_state("f_item_price")
    assert state.mean == pytest.approx(3.0) and state.std == pytest.approx(np.std([1.0, 2.0, 6.0]))
    assert (state.count, state.missing) == (3, 0)
    assert out.numeric[1, 0] == pytest.approx(0.0)  # 3.0 is the train mean
    assert out.numeric[2, 0] == 0.0  # missing -> mean -> 0
    assert out.numeric[0, 0] == 5.0  # clipped at the default z clip
    assert center.cardinalities == {"f_user_seg": 3}


def test_vocab_order_max_vocab_and_min_count() -> None:
    table = pa.table({"f_c": ["x", "y", "y", "z", "z", "w", "w", "w", None]})
    spec = FeatureSpec(name="f_c", kind="categorical", max_vocab=2, min_count=2)
    center = FeatureCenter.fit(table, FeatureSchema(features=[spec]))
    state = center.categorical_state("f_c")
    assert state.vocab == ("w", "y")  # by count, ties broken by value; "z" beyond max_vocab
    assert (state.count, state.missing, state.cardinality) == (8, 1, 3)
    out = center.transform(table).categorical[:, 0].tolist()
    assert out == [0, 2, 2, 0, 0, 1, 1, 1, 0]


def test_numeric_transforms_std_floor_and_all_missing() -> None:
    table = pa.table(
        {
            "f_const": [7.0, 7.0, 7.0],
            "f_log": [0.0, 9.0, 99.0],
            "f_raw": [1.0, None, 3.0],
            "f_empty": pa.array([None, None, None], pa.float64()),
        }
    )
    schema = FeatureSchema(
        features=[
            FeatureSpec(name="f_const", kind="numeric"),
            FeatureSpec(name="f_log", kind="numeric", transform="log1p_standard", clip=None),
            FeatureSpec(name="f_raw", kind="numeric", transform="none"),
            FeatureSpec(name="f_empty", kind="numeric"),
        ]
    )
    center = FeatureCenter.fit(table, schema)
    assert center.numeric_state("f_const").std == STD_FLOOR
    out = center.transform(table).numeric
    assert out[:, 0].tolist() == [0.0, 0.0, 0.0]
    logs = np.log1p([0.0, 9.0, 99.0])
    np.testing.assert_allclose(out[:, 1], (logs - logs.mean()) / logs.std(), rtol=1e-6)
    assert out[:, 2].tolist() == [1.0, 2.0, 3.0]  # "none": raw, missing -> train mean
    assert out[:, 3].tolist() == [0.0, 0.0, 0.0]
    assert center.numeric_state("f_empty").missing == 3
    assert_same(center.transform(table), center.transform_rows(table.to_pylist()))  # every transform kind


# ------------------------------------------------------------------------------------- streaming


def test_streaming_fit_equals_whole_table_fit() -> None:
    table = random_table(3000, seed=1)
    whole = FeatureCenter.fit(table, SCHEMA)
    streamed = FeatureCenter.fit(iter(table.to_batches(max_chunksize=137)), SCHEMA)
    for name in whole.categorical_names():
        assert whole.categorical_state(name) == streamed.categorical_state(name)
    for name in whole.numeric_names():
        a, b = whole.numeric_state(name), streamed.numeric_state(name)
        assert (a.count, a.missing) == (b.count, b.missing)
        assert a.mean == pytest.approx(b.mean, rel=1e-12) and a.std == pytest.approx(
            b.std, rel=1e-12
        )
    np.testing.assert_array_equal(
        whole.transform(table).categorical, streamed.transform(table).categorical
    )
    np.testing.assert_allclose(
        whole.transform(table).numeric, streamed.transform(table).numeric, atol=1e-6
    )
    chunked = pa.concat_tables([table.slice(0, 1000), table.slice(1000)])
    assert_same(whole.transform(table), whole.transform(chunked))


# ------------------------------------------------------------------------------- no skew (serving)


def test_rows_path_matches_table_path_on_random_data_with_unseen_values() -> None:
    center = fitted()
    test = random_table(500, seed=7)
    rows = test.to_pylist()
    for i in range(0, 500, 10):
        rows[i]["f_user_seg"] = f"unseen-{i}"
        rows[i]["f_ctx_hour"] = 1000 + i
        rows[i]["f_item_price"] = math.inf if i % 20 else -1e300
    test = pa.Table.from_pylist(rows, schema=ARROW_SCHEMA)
    assert_same(center.transform(test), center.transform_rows(rows))
    assert_same(center.transform(test, roles=["user"]), center.transform_rows(rows, roles=["user"]))


row_strategy = st.fixed_dictionaries(
    {
        "f_user_seg": st.one_of(
            st.none(), st.sampled_from(["a", "b", "é", "A"]), st.text(max_size=4)
        ),
        "f_ctx_hour": st.one_of(st.none(), st.integers(-(2**63), 2**63 - 1), st.integers(0, 30)),
        "f_item_price": st.one_of(st.none(), st.floats(), st.integers(-(2**53), 2**53)),
        "f_item_sales": st.one_of(st.none(), st.integers(-(2**63), 2**63 - 1)),
        "f_flag": st.one_of(st.none(), st.booleans()),
    }
)


@settings(max_examples=60, deadline=None)
@given(rows=st.lists(row_strategy, min_size=0, max_size=12))
def test_rows_path_is_bit_identical_to_table_path(rows: list[dict[str, Any]]) -> None:
    center = fitted()
    table = pa.Table.from_pylist(rows, schema=ARROW_SCHEMA)
    by_table, by_rows = center.transform(table), center.transform_rows(rows)
    assert_same(by_table, by_rows)
    assert len(by_rows) == len(rows) and np.isfinite(by_rows.numeric).all()


# ---------------------------------------------------------------------------------- persistence


def test_save_load_round_trip(tmp_path: Path) -> None:
    center = fitted()
    path = center.save(tmp_path / "sub" / "features.json")
    loaded = FeatureCenter.load(path)
    assert loaded.to_dict() == center.to_dict()
    assert loaded.cardinalities == center.cardinalities
    table = random_table(300, seed=3)
    assert_same(center.transform(table), loaded.transform(table))
    assert_same(center.transform(table), loaded.transform_rows(table.to_pylist()))


def test_corrupt_or_foreign_files_raise_data_error(tmp_path: Path) -> None:
    path = fitted().save(tmp_path / "features.json")
    doc = json.loads(path.read_text())

    edited = json.loads(json.dumps(doc))
    edited["content"]["numeric"]["f_item_price"]["mean"] += 1.0
    path.write_text(json.dumps(edited))
    with pytest.raises(DataError, match="checksum"):
        FeatureCenter.load(path)

    newer = dict(doc, version=99)
    path.write_text(json.dumps(newer))
    with pytest.raises(DataError, match="version 99"):
        FeatureCenter.load(path)

    path.write_text(json.dumps(doc)[:-40])
    with pytest.raises(DataError, match="not valid JSON"):
        FeatureCenter.load(path)

    path.write_text(json.dumps({"hello": 1}))
    with pytest.raises(DataError, match="not a blendrank feature center"):
        FeatureCenter.load(path)

    with pytest.raises(DataError, match="not found"):
        FeatureCenter.load(tmp_path / "nope.json")


# ------------------------------------------------------------------------------------ bad inputs


def test_missing_column_raises_data_error_naming_it() -> None:
    center = fitted()
    table = random_table(10, seed=2).drop_columns(["f_item_sales"])
    with pytest.raises(DataError, match="f_item_sales"):
        center.transform(table)
    center.transform(table, roles=["user", "context"])  # not needed for these roles
    rows = table.to_pylist()
    with pytest.raises(DataError, match="f_item_sales"):
        center.transform_rows(rows)
    with pytest.raises(DataError, match="f_item_sales"):
        FeatureCenter.fit(table, SCHEMA)


def test_wrong_types_raise_data_error_naming_the_column() -> None:
    center = fitted()
    good = random_table(5, seed=4)
    bad = good.set_column(2, "f_item_price", pa.array(["1.0"] * 5))
    with pytest.raises(DataError, match="f_item_price"):
        center.transform(bad)
    bad = good.set_column(0, "f_user_seg", pa.array([1.5] * 5))
    with pytest.raises(DataError, match="f_user_seg"):
        center.transform(bad)
    bad = good.set_column(1, "f_ctx_hour", pa.array(["3"] * 5))
    with pytest.raises(DataError, match="f_ctx_hour"):
        center.transform(bad)
    row = good.to_pylist()[0]
    for name, value in [
        ("f_item_price", "1.0"),
        ("f_item_sales", True),
        ("f_ctx_hour", 3.0),
        ("f_user_seg", 1),
    ]:
        with pytest.raises(DataError, match=name):
            center.transform_rows([{**row, name: value}])


def test_roles_select_columns_in_schema_order() -> None:
    center = fitted()
    out = center.transform(random_table(4, seed=5), roles=["context", "user"])
    assert out.categorical_names == ("f_user_seg", "f_ctx_hour") and out.numeric_names == ()
    assert out.categorical.shape == (4, 2) and out.numeric.shape == (4, 0)
    assert center.numeric_names(["item"]) == ["f_item_price", "f_item_sales"]
    assert list(center.cardinalities) == ["f_user_seg", "f_ctx_hour", "f_flag"]
    assert center.cardinalities["f_flag"] == 3  # True, False + OOV
    with pytest.raises(ConfigError, match="bogus"):
        center.transform(random_table(4, seed=5), roles=["bogus"])  # type: ignore[list-item]


# ---------------------------------------------------------------------------------------- schema


def test_schema_inference_kinds_roles_and_overrides() -> None:
    rng = np.random.default_rng(0)
    table = pa.table(
        {
            "f_user_city": ["x", "y"] * 100,
            "f_ctx_weekday": rng.integers(0, 7, 200),
            "f_item_views": np.arange(200),
            "f_item_score": rng.random(200).astype(np.float32),
            "f_is_new": [True, False] * 100,
            "price": rng.random(200),
            "label_click": [0, 1] * 100,
        }
    )
    schema = FeatureSchema.infer(
        table, include=["price"], overrides={"f_item_views": {"transform": "log1p_standard"}}
    )
    got = {s.name: (s.kind, s.role) for s in schema.features}
    assert got == {
        "f_user_city": ("categorical", "user"),
        "f_ctx_weekday": ("categorical", "context"),
        "f_item_views": ("numeric", "item"),
        "f_item_score": ("numeric", "item"),
        "f_is_new": ("categorical", "item"),  # no role prefix -> item
        "price": ("numeric", "item"),
    }
    assert schema.get("f_item_views").transform == "log1p_standard"
    assert (
        FeatureSchema.infer(table, max_int_categories=1000).get("f_item_views").kind
        == "categorical"
    )
    over = FeatureSchema.infer(
        table, overrides={"f_is_new": {"role": "user"}, "f_ctx_weekday": {"kind": "numeric"}}
    )
    assert over.get("f_is_new").role == "user" and over.get("f_ctx_weekday").kind == "numeric"
    with pytest.raises(ConfigError, match="f_nope"):
        FeatureSchema.infer(table, overrides={"f_nope": {"role": "user"}})
    with pytest.raises(ConfigError, match="rol"):
        FeatureSchema.infer(table, overrides={"f_is_new": {"rol": "user"}})
    with pytest.raises(DataError, match="f_list"):
        FeatureSchema.infer(pa.table({"f_list": [[1], [2]]}))


def test_schema_validation_and_plain_list_form() -> None:
    schema = FeatureSchema.model_validate([{"name": "f_a", "kind": "numeric"}])
    assert schema.names == ["f_a"] and schema.features[0].role == "item"
    with pytest.raises(ValidationError, match="twice"):
        FeatureSchema.model_validate([{"name": "f_a", "kind": "numeric"}] * 2)
    with pytest.raises(ValidationError):
        FeatureSpec.model_validate({"name": "f_a", "kind": "numeric", "colour": "red"})


def test_every_config_field_has_a_description() -> None:
    for model in (FeatureSpec, FeatureSchema):
        for name, info in model.model_fields.items():
            assert info.description, f"{model.__name__}.{name} has no description"
