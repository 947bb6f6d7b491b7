"""The metrics-row schema: every row has exactly its columns, typed; unknown columns and bad types are refused."""

import pytest

from kcp.schema import BY_NAME, COLUMNS, ROW, make_row


def test_a_row_has_every_column_in_order_and_none_where_not_given():
    row = make_row(method="kcp", params=12.0, rel_error=float("nan"), warm_start=False)
    assert list(row) == list(COLUMNS) == [c.name for c in ROW]
    assert row["params"] == 12 and isinstance(row["params"], int)
    assert row["rel_error"] is None  # NaN is "not measured" in CSV and JSON alike
    assert row["warm_start"] is False and row["latency_ms"] is None


def test_unknown_columns_and_wrong_types_are_refused():
    with pytest.raises(ValueError, match="not columns of a metrics row: colour"):
        make_row(colour="red")
    with pytest.raises(TypeError, match="'params' takes an integer"):
        make_row(params=1.5)
    with pytest.raises(TypeError, match="'warm_start' takes a bool"):
        make_row(warm_start=1)


def test_every_column_is_described():
    assert len(BY_NAME) == len(ROW)
    assert all(c.label and c.help for c in ROW)
