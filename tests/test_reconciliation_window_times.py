"""A reconciliation run's window (`since`, `until`) is ISO-8601 text. A number is no time the
API takes: read as a Unix time, one above 2e10 would be read as milliseconds (253402300799,
the year 9999 in seconds, as 1978), and a window other than the one meant would be run."""

from __future__ import annotations

import pytest

from tests.conftest import STAFF_TOKEN, auth
from tests.gates import OPS

RUNS = "/v1/admin/reconciliation-runs"


@pytest.mark.parametrize("field", ["since", "until"])
@pytest.mark.parametrize(
    "value", [253402300799, 1700000000, 1.7e9, "1700000000", "253402300799", True]
)
def test_a_window_bound_given_as_a_number_is_refused_naming_it(client, field, value):
    r = client.post(
        RUNS, json={"scope": "rail_proofs", field: value, **OPS}, headers=auth(STAFF_TOKEN)
    )
    assert r.status_code == 422, r.text
    assert r.json()["error"]["code"] == "invalid_time"
    assert r.json()["error"]["field"] == field
    assert client.get(RUNS, headers=auth(STAFF_TOKEN)).json() == []


def test_iso_text_is_taken_and_a_time_without_offset_is_utc(client):
    r = client.post(
        RUNS,
        json={
            "scope": "rail_proofs",
            "since": "2024-01-01T00:00:00",
            "until": "2024-01-02T01:00:00+01:00",
            **OPS,
        },
        headers=auth(STAFF_TOKEN),
    )
    assert r.status_code == 201, r.text
    assert (r.json()["since"], r.json()["until"]) == (
        "2024-01-01T00:00:00Z",
        "2024-01-02T00:00:00Z",
    )


def test_rfc3339_lower_case_separators_are_taken(client):
    r = client.post(
        RUNS,
        json={"scope": "rail_proofs", "since": "2024-01-01t00:00:00z", **OPS},
        headers=auth(STAFF_TOKEN),
    )
    assert r.status_code == 201, r.text
    assert r.json()["since"] == "2024-01-01T00:00:00Z"
