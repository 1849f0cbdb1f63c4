"""The ordering look-ups on a month-end burst (billing_sync/ordering.py, `_pending_with`;
audit.services.tables_analyze): the events partition is analysed while its events are processed, then 5,000 of
them turn accepted. On those statistics the planner reads the (status, received_at) index for some look-up, entry
by entry across the whole backlog (16-30 ms a look-up at 200,000 accepted events); once beat's
`tables-analyze` has taken the partition's statistics again, each look-up reads the partial GIN index on
`order_keys` and nothing else of the partition (not the `seq` index either, which the callers' ORDER BY seq LIMIT
once led it down: 140 ms a look-up at 150,000). A partition that changed less than the thresholds is left alone."""
import json
import time

import pytest
from django.db import connection

from audit import services as audit
from billing_sync import ordering
from tests import factories as f
from tests.helpers import send

COPIES = 5000

COPY_SQL = """
INSERT INTO billing_sync_event (id, source_system, event_id, type, entity_code, occurred_at, payload, payload_hash,
                                status, correlation_id, received_at, receipt_id, sent_by_id, response_body, attempts,
                                order_keys)
SELECT gen_random_uuid(), t.source_system, 'evt_plan_' || i, t.type, t.entity_code, t.occurred_at, t.payload,
       t.payload_hash, 'processed', t.correlation_id, t.received_at, t.receipt_id, t.sent_by_id, t.response_body, 0,
       ARRAY['customer:s:c' || i, 'invoice:s:inv' || i, 'w|invoice:s:inv' || i]
FROM billing_sync_event t, generate_series(1, %s) AS i
WHERE t.id = %s
"""


def _indexes(plan: dict) -> set[str]:
    found = {plan["Index Name"]} if "Index Name" in plan else set()
    for child in plan.get("Plans", []):
        found |= _indexes(child)
    return found


def _plans(first_seq: int) -> dict[str, set[str]]:
    probe = ["w|customer:s:c17", "invoice:s:inv17"]
    statements = {
        "the hold check": (ordering._PENDING_BEFORE, [probe, first_seq + COPIES * 2]),
        "successors_of": (ordering._SUCCESSORS, [probe, first_seq - 1, ordering.SUCCESSOR_LIMIT]),
        "accepted_providers_of": (ordering._PROVIDERS, [probe, ["invoice.issued"], ordering.SUCCESSOR_LIMIT]),
        "successors_of_many": (ordering._SUCCESSORS_MANY, [
            json.dumps([{"seq": first_seq - 1, "probe": probe}]), ordering.SUCCESSOR_LIMIT]),
    }
    found = {}
    with connection.cursor() as cursor:
        for name, (sql, params) in statements.items():
            cursor.execute(f"EXPLAIN (FORMAT JSON) {sql}", params)
            found[name] = _indexes(cursor.fetchone()[0][0]["Plan"])
    return found


def _modified_since_analyze(partition: str) -> int:
    """The partition's changed rows as PostgreSQL's statistics count them (flushed by the backend when idle)."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_stat_force_next_flush()")
        cursor.execute("SELECT pg_stat_clear_snapshot()")
        cursor.execute("SELECT n_mod_since_analyze FROM pg_stat_user_tables WHERE relname = %s", [partition])
        row = cursor.fetchone()
    return row[0] if row else 0


@pytest.fixture
def burst(transactional_db, entity, integration):
    """(the events partition, the first copy's seq) after the burst, its statistics from before it."""
    template = send(integration, f.invoice("inv_plan", customer_id="cus_plan", lines=[("10.00", "0")]))
    with connection.cursor() as cursor:
        cursor.execute("SELECT tableoid::regclass::text FROM billing_sync_event WHERE id = %s", [template["id"]])
        partition = cursor.fetchone()[0]
        cursor.execute(COPY_SQL, [COPIES, template["id"]])
        cursor.execute(f"ANALYZE {partition}")
        cursor.execute("UPDATE billing_sync_event SET status = 'accepted' WHERE event_id LIKE 'evt_plan_%%'")
        cursor.execute("SELECT min(seq) FROM billing_sync_event WHERE event_id LIKE 'evt_plan_%%'")
        first = cursor.fetchone()[0]
    deadline = time.monotonic() + 10
    while _modified_since_analyze(partition) < COPIES and time.monotonic() < deadline:
        time.sleep(0.2)
    return partition, first


def test_a_burst_is_planned_on_fresh_statistics_once_beat_has_analysed_it(burst):
    partition, first = burst
    mine = f"{partition}_"  # the burst's partition's indexes (the empty months ahead may plan as they like)
    stale = _plans(first)
    assert any(i for indexes in stale.values() for i in indexes if i.startswith(mine) and "status" in i), (
        f"on the statistics from before the burst some look-up reads a status index: {stale}")
    # A change below the thresholds leaves the statistics as they are.
    assert audit.tables_analyze(min_rows=COPIES * 10) == []
    assert partition in audit.tables_analyze(min_rows=1000, fraction=0.02)
    fresh = _plans(first)
    for name, indexes in fresh.items():
        mine_read = {i for i in indexes if i.startswith(mine)}
        assert mine_read == {f"{partition}_order_keys_idx"}, f"{name} reads more than the GIN index: {sorted(indexes)}"
    assert _modified_since_analyze(partition) < 1000
    # And the look-ups find what they should: the one copy writing invoice inv17.
    found = ordering.successors_of(seq=first - 1, keys=["customer:s:c17", "w|invoice:s:inv17"])
    with connection.cursor() as cursor:
        cursor.execute("SELECT id FROM billing_sync_event WHERE event_id = 'evt_plan_17'")
        assert found == [cursor.fetchone()[0]]
