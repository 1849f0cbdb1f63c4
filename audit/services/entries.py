"""Audit entries: how one is built and hashed (its `content` is the canonical JSON of the record, stored
verbatim; `entry_hash` is the SHA-256 of those bytes), and `record` / `record_many`, the only ways to
write one, inside the transaction of the change it records. Inside a `config.deferred.write_behind` block (a
processing chunk) `record` builds the entry at the moment and `record_built` writes the block's entries together,
in order, in one statement before the block's transaction commits."""
import datetime
import hashlib
import json
import secrets
from decimal import Decimal
from uuid import UUID

from django.conf import settings
from django.db import connection
from django.utils import timezone

from audit.models import AuditEntry
from config import correlation, deferred

# What an entry written with hashing off (bench/audit_chain.py only) carries instead of its hash.
UNHASHED = "-" * 64


def actor_label(actor) -> str:
    if actor is None:
        return "system"
    if isinstance(actor, str):
        return actor
    return actor.get_username()


class _Slot:
    """An id the database draws in the statement that writes the entry (see `entry_template`)."""

    def __str__(self):
        return SLOT_TOKEN


# Random per process (letters, digits and dashes: the same in JSON, SQL and text), so no sent value can
# imitate them: where a `DB_ID` stands, in the entry's content (a JSON value) or its object id (a string).
_SLOT_VALUE = f"tieout-db-value-{secrets.token_hex(16)}"
SLOT_TOKEN = f"tieout-db-id-{secrets.token_hex(16)}"
DB_ID = _Slot()


def _default(value):
    if isinstance(value, _Slot):
        return _SLOT_VALUE
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, (datetime.datetime, datetime.date)):
        return value.isoformat()
    if isinstance(value, UUID):
        return str(value)
    raise TypeError(f"not JSON-serialisable in an audit entry: {type(value).__name__}")


def jsonable(value):
    """Money and dates as strings: plain JSON values, as an audit entry records them."""
    if value is None:
        return None
    return json.loads(json.dumps(value, default=_default))


def canonical_json(value) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=_default).encode()


def entry_content(*, at, actor, action, object_type, object_id, event_id, before, after, correlation_id) -> dict:
    return {
        "at": at.astimezone(datetime.timezone.utc).isoformat(),
        "actor": actor,
        "action": action,
        "object_type": object_type,
        "object_id": str(object_id),
        "event_id": str(event_id) if event_id else None,
        "before": before,
        "after": after,
        "correlation_id": correlation_id,
    }


def compute_entry_hash(entry: AuditEntry) -> str:
    return hashlib.sha256(entry.content.encode()).hexdigest()


def _build(*, actor, action, object_type, object_id, event_id=None, before=None, after=None,
           correlation_id=None, at=None) -> AuditEntry:
    at = at or timezone.now()
    actor, object_id = actor_label(actor), str(object_id)
    correlation_id = correlation_id or correlation.get() or ""
    # Money and dates become strings here, once: `content` is what is stored, hashed and read back.
    content = canonical_json(entry_content(at=at, actor=actor, action=action, object_type=object_type,
                                           object_id=object_id, event_id=event_id, before=before, after=after,
                                           correlation_id=correlation_id)).decode()
    entry = AuditEntry(at=at, actor=actor, action=action, object_type=object_type, object_id=object_id,
                       event_id=event_id, correlation_id=correlation_id, content=content)
    # TIEOUT_AUDIT_HASHING=off exists for bench/audit_chain.py only (the cost of the chain, measured):
    # entries written that way never verify, and nothing else may turn it off.
    entry.entry_hash = compute_entry_hash(entry) if settings.TIEOUT_AUDIT_HASHING else UNHASHED
    return entry


def _require_transaction():
    if not connection.in_atomic_block:
        raise RuntimeError("audit entries are written inside the transaction of the change they record")


# The transaction takes its id (xid) before the entry takes its id from the sequence (the materialised CTE
# runs first): the sealer relies on "whoever drew an entry id is already a known transaction" to tell an
# entry still being written from a gap left by a rollback (see `chain_seal`). Costs nothing measurable.
_RECORD_SQL = """
WITH tx AS MATERIALIZED (SELECT pg_current_xact_id() AS xid)
INSERT INTO audit_auditentry (at, actor, action, object_type, object_id, event_id, correlation_id, content,
                              entry_hash)
SELECT %s, %s, %s, %s, %s, %s, %s, %s, %s FROM tx WHERE tx.xid IS NOT NULL RETURNING id
"""


def record_params(entry: AuditEntry) -> list:
    """`_RECORD_SQL`'s parameters for a built entry."""
    return [entry.at, entry.actor, entry.action, entry.object_type, entry.object_id, entry.event_id,
            entry.correlation_id, entry.content, entry.entry_hash]


def record(*, actor, action: str, object_type: str, object_id, event_id=None, before=None, after=None,
           correlation_id: str | None = None) -> AuditEntry:
    _require_transaction()
    entry = _build(actor=actor, action=action, object_type=object_type, object_id=object_id,
                   event_id=event_id, before=before, after=after, correlation_id=correlation_id)
    if deferred.active():
        # A chunk's entries, built now (time, content, hash) and written together, in order, before it commits.
        deferred.defer(record_built, entry)
        return entry
    # A plain INSERT: this runs several times in every transaction of the system, and the ORM's
    # save() machinery (signals, field preparation) costs more than the statement itself.
    with connection.cursor() as cursor:
        cursor.execute(_RECORD_SQL, record_params(entry))
        entry.pk = cursor.fetchone()[0]
    entry._state.adding = False
    return entry


_RECORD_MANY_SQL = """
WITH tx AS MATERIALIZED (SELECT pg_current_xact_id() AS xid)
INSERT INTO audit_auditentry (at, actor, action, object_type, object_id, event_id, correlation_id, content,
                              entry_hash)
SELECT %s, u.actor, u.action, u.object_type, u.object_id, u.event_id, u.correlation_id, u.content, u.entry_hash
FROM tx, jsonb_to_recordset(%s::jsonb) AS u(actor text, action text, object_type text, object_id text, event_id uuid,
                                            correlation_id text, content text, entry_hash text)
WHERE tx.xid IS NOT NULL
"""


def entry_template(**item) -> AuditEntry:
    """An entry (`record`'s keyword arguments) that names an id the database draws in the same statement (a
    receipt's, say) as `DB_ID`, in `before`/`after` or as `object_id`: built, its content and object id
    holding `SLOT_TOKEN` where the id goes. The statement writes them through `slot_filled_sql` and hashes
    the content with `entry_hash_sql`: the very bytes and hash `record` would have written had the id been
    known first. Its id must be drawn after the statement's transaction id, as `_RECORD_SQL` ensures.
    """
    entry = _build(**item)
    entry.content = entry.content.replace(f'"{_SLOT_VALUE}"', SLOT_TOKEN)  # a number: digits, not a string
    entry.entry_hash = ""
    return entry


def slot_filled_sql(text_sql: str, id_sql: str) -> str:
    """SQL: the text expression `text_sql` (a template's content or object id) with `id_sql` put in."""
    return f"replace({text_sql}, '{SLOT_TOKEN}', ({id_sql})::text)"


def entry_hash_sql(content_sql: str) -> str:
    """SQL: the `entry_hash` of the content expression `content_sql` (the hex SHA-256 of its UTF-8 bytes,
    as `compute_entry_hash`), or the unhashed marker when hashing is off (bench only)."""
    if not settings.TIEOUT_AUDIT_HASHING:
        return f"'{UNHASHED}'"
    return f"encode(sha256(convert_to({content_sql}, 'UTF8')), 'hex')"


def record_many(items: list[dict]) -> int:
    """Many entries in one INSERT (batch ingest); each dict takes `record`'s keyword arguments.

    The rows travel as one JSON document: binding them as arrays costs far more in client-side escaping.
    """
    _require_transaction()
    now = timezone.now()
    entries = [_build(at=now, **item) for item in items]
    rows = [{"actor": e.actor, "action": e.action, "object_type": e.object_type, "object_id": e.object_id,
             "event_id": str(e.event_id) if e.event_id else None, "correlation_id": e.correlation_id,
             "content": e.content, "entry_hash": e.entry_hash} for e in entries]
    with connection.cursor() as cursor:
        cursor.execute(_RECORD_MANY_SQL, [now, json.dumps(rows, separators=(",", ":"))])
    return len(rows)


_RECORD_BUILT_SQL = """
WITH tx AS MATERIALIZED (SELECT pg_current_xact_id() AS xid)
INSERT INTO audit_auditentry (at, actor, action, object_type, object_id, event_id, correlation_id, content,
                              entry_hash)
SELECT (r.e->>'at')::timestamptz, r.e->>'actor', r.e->>'action', r.e->>'object_type', r.e->>'object_id',
       (r.e->>'event_id')::uuid, r.e->>'correlation_id', r.e->>'content', r.e->>'entry_hash'
FROM tx, jsonb_array_elements(%s::jsonb) WITH ORDINALITY AS r(e, n)
WHERE tx.xid IS NOT NULL
ORDER BY r.n
"""


def record_built(entries: list[AuditEntry]) -> int:
    """Write entries built by `record` inside `write_behind`, in their order, in one INSERT: the same rows, content and hashes
    that `record` would have written for each at the moment it was built (only their ids come later)."""
    _require_transaction()
    if not entries:
        return 0
    rows = [{"at": e.at.isoformat(), "actor": e.actor, "action": e.action, "object_type": e.object_type,
             "object_id": e.object_id, "event_id": str(e.event_id) if e.event_id else None,
             "correlation_id": e.correlation_id, "content": e.content, "entry_hash": e.entry_hash} for e in entries]
    with connection.cursor() as cursor:
        cursor.execute(_RECORD_BUILT_SQL, [json.dumps(rows, separators=(",", ":"))])
    return len(rows)


def model_snapshot(instance, fields: list[str]) -> dict:
    return jsonable({name: getattr(instance, name) for name in fields})

