"""The application's PostgreSQL sessions run without JIT compilation (config/settings/base.py, DB_JIT): a chunk's
look-up of the events queued behind its own was compiled for 520-670 ms before running for 4 ms."""
import json

from django.db import connection

from billing_sync import ordering


def test_the_sessions_run_without_jit(db):
    with connection.cursor() as cursor:
        cursor.execute("SHOW jit")
        assert cursor.fetchone()[0] == "off"


def test_a_chunks_successor_look_up_is_not_compiled(db):
    probes = json.dumps([{"seq": n, "probe": [f"invoice:s:inv{n}", f"w|customer:s:c{n}"]} for n in range(200)])
    with connection.cursor() as cursor:
        cursor.execute("SET jit_above_cost = 0")  # what a large estimate does on a busy table
        cursor.execute(f"EXPLAIN (ANALYZE, FORMAT JSON) {ordering._SUCCESSORS_MANY}", [probes, ordering.SUCCESSOR_LIMIT])
        plan = cursor.fetchone()[0][0]
        cursor.execute("RESET jit_above_cost")
    assert "JIT" not in plan
