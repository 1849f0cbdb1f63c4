"""Tampering as an attacker with database superuser rights would: ordinary triggers (our append-only
guards) switched off for one session, then raw SQL against the audit tables."""
import hashlib
import json
from contextlib import contextmanager

from django.db import connection

from audit.services import canonical_json


@contextmanager
def triggers_off():
    """Superuser only: the append-only triggers do not fire for statements on this cursor."""
    with connection.cursor() as cursor:
        cursor.execute("SET session_replication_role = replica")
        try:
            yield cursor
        finally:
            cursor.execute("SET session_replication_role = DEFAULT")


def execute_with_triggers_off(sql, params=None):
    with triggers_off() as cursor:
        cursor.execute(sql, params)


def edit_entry(cursor, entry_id: int, *, rehash: bool = False, **changes) -> str:
    """Rewrite an entry as an attacker who wants it to look consistent: its content and the matching
    columns together (the database refuses columns that differ from the content). The entry hash is left
    as it was unless `rehash`; returns the hash the new content has."""
    cursor.execute("SELECT content FROM audit_auditentry WHERE id = %s", [entry_id])
    document = json.loads(cursor.fetchone()[0])
    document.update(changes)
    content = canonical_json(document).decode()
    new_hash = hashlib.sha256(content.encode()).hexdigest()
    columns = {key: value for key, value in changes.items() if key not in ("before", "after")}
    assignments = ", ".join([f"{name} = %s" for name in columns] + ["content = %s"] +
                            (["entry_hash = %s"] if rehash else []))
    cursor.execute(f"UPDATE audit_auditentry SET {assignments} WHERE id = %s",
                   [*columns.values(), content, *([new_hash] if rehash else []), entry_id])
    return new_hash


def insert_entry(cursor, entry_id: int, entry) -> None:
    """INSERT an entry built by `audit.services.entries._build` under a chosen id, bypassing `record`."""
    cursor.execute("""INSERT INTO audit_auditentry (id, at, actor, action, object_type, object_id, event_id,
                                                    correlation_id, content, entry_hash)
                      VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)""",
                   [entry_id, entry.at, entry.actor, entry.action, entry.object_type, entry.object_id,
                    entry.event_id, entry.correlation_id, entry.content, entry.entry_hash])
