"""Migration 0005 on a log written the old way: every entry gets the content its hash was computed from."""
import datetime
import hashlib
import json

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

from audit import services as audit
from audit.models import AuditEntry

OLD_ROWS = [
    dict(at=datetime.datetime(2026, 11, 3, 4, 5, 6, 789, tzinfo=datetime.UTC), actor="alice", action="journal.posted",
         object_type="journal", object_id="US01:1", event_id=None, before={"status": "ready"},
         after={"status": "posted", "amount": "12.50", "note": 'q " \\ ü'}, correlation_id="c1"),
    dict(at=datetime.datetime(2026, 11, 3, 4, 5, 7, tzinfo=datetime.UTC), actor="bob", action="event.received",
         object_type="event", object_id="e1", event_id="6f1c1c8e-1d2b-4c44-9a53-0a2f7f2b1e3d", before=None,
         after={"n": [1, 2.5, None, True]}, correlation_id=""),
]


def _migrate(target):
    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate([target])


@pytest.mark.django_db(transaction=True)
def test_old_entries_get_the_content_they_were_hashed_from_and_still_verify():
    _migrate(("audit", "0004_digest_append_only"))
    try:
        prev = audit.GENESIS
        with connection.cursor() as cursor:
            for seq, row in enumerate(OLD_ROWS, start=1):
                entry_hash = hashlib.sha256(audit.canonical_json(audit.entry_content(**row))).hexdigest()
                cursor.execute("""INSERT INTO audit_auditentry (at, actor, action, object_type, object_id, event_id,
                                                                before, after, correlation_id, entry_hash)
                                  VALUES (%s, %s, %s, %s, %s, %s, %s::jsonb, %s::jsonb, %s, %s) RETURNING id""",
                               [row["at"], row["actor"], row["action"], row["object_type"], row["object_id"],
                                row["event_id"], None if row["before"] is None else json.dumps(row["before"]),
                                json.dumps(row["after"]), row["correlation_id"], entry_hash])
                entry_id = cursor.fetchone()[0]
                link = audit.chain_hash(prev, seq, entry_id, entry_hash)
                cursor.execute("""INSERT INTO audit_auditseal (seq, entry_id, entry_hash, prev_hash, chain_hash,
                                                               sealed_at) VALUES (%s, %s, %s, %s, %s, now())""",
                               [seq, entry_id, entry_hash, prev, link])
                prev = link
    finally:
        _migrate(("audit", "0005_entry_content"))

    entries = list(AuditEntry.objects.order_by("id"))
    assert [(e.before, e.after) for e in entries] == [(r["before"], r["after"]) for r in OLD_ROWS]
    assert all(e.entry_hash == audit.compute_entry_hash(e) for e in entries)
    fast, thorough = audit.chain_verify(), audit.chain_verify(roots=True)
    assert (fast.ok, fast.count, fast.head_hash) == (thorough.ok, thorough.count, thorough.head_hash) == (True, 2, prev)
