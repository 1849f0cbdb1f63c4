"""The one way to write the audit log, and the sealer that chains it.

`record(...)` must be called inside the transaction that makes the change (it refuses otherwise), so
that an entry exists exactly when its change committed. `seal()` appends committed entries to the hash
chain in the order it sees them; `verify()` re-computes every entry hash and the chain, streaming.
"""
import datetime
import hashlib
import json
from dataclasses import dataclass
from decimal import Decimal
from uuid import UUID

from django.db import connection, transaction
from django.utils import timezone

from audit.models import AuditEntry, AuditSeal
from config import correlation

GENESIS = "0" * 64
# Any fixed 64-bit key: only the sealer takes this lock, writers never do.
SEAL_LOCK_KEY = 0x7469656F7574  # "tieout"


def actor_label(actor) -> str:
    if actor is None:
        return "system"
    if isinstance(actor, str):
        return actor
    return actor.get_username()


def _default(value):
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, (datetime.datetime, datetime.date)):
        return value.isoformat()
    if isinstance(value, UUID):
        return str(value)
    raise TypeError(f"not JSON-serialisable in an audit entry: {type(value).__name__}")


def jsonable(value):
    """Money and dates as strings, so that what is hashed survives the round trip through jsonb."""
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
    content = entry_content(at=entry.at, actor=entry.actor, action=entry.action, object_type=entry.object_type,
                            object_id=entry.object_id, event_id=entry.event_id, before=entry.before,
                            after=entry.after, correlation_id=entry.correlation_id)
    return hashlib.sha256(canonical_json(content)).hexdigest()


def chain_hash(prev_hash: str, seq: int, entry_id: int, entry_hash: str) -> str:
    return hashlib.sha256(f"{prev_hash}|{seq}|{entry_id}|{entry_hash}".encode()).hexdigest()


def _build(*, actor, action, object_type, object_id, event_id=None, before=None, after=None,
           correlation_id=None, at=None, native=False) -> AuditEntry:
    entry = AuditEntry(
        at=at or timezone.now(),
        actor=actor_label(actor),
        action=action,
        object_type=object_type,
        object_id=str(object_id),
        event_id=event_id,
        # `native`: the caller promises plain JSON values (str, int, bool, None, lists, dicts), so the
        # round trip that turns Decimals and dates into strings can be skipped (hot batch paths).
        before=before if native else jsonable(before),
        after=after if native else jsonable(after),
        correlation_id=correlation_id or correlation.get() or "",
    )
    entry.entry_hash = compute_entry_hash(entry)
    return entry


def _require_transaction():
    if not connection.in_atomic_block:
        raise RuntimeError("audit entries are written inside the transaction of the change they record")


_RECORD_SQL = """
INSERT INTO audit_auditentry (at, actor, action, object_type, object_id, event_id, before, after, correlation_id,
                              entry_hash)
VALUES (%s, %s, %s, %s, %s, %s, %s::jsonb, %s::jsonb, %s, %s) RETURNING id
"""


def _json_or_none(value):
    return None if value is None else json.dumps(value, separators=(",", ":"))


def record(*, actor, action: str, object_type: str, object_id, event_id=None, before=None, after=None,
           correlation_id: str | None = None) -> AuditEntry:
    _require_transaction()
    entry = _build(actor=actor, action=action, object_type=object_type, object_id=object_id,
                   event_id=event_id, before=before, after=after, correlation_id=correlation_id)
    # A plain INSERT: this runs several times in every transaction of the system, and the ORM's
    # save() machinery (signals, field preparation) costs more than the statement itself.
    with connection.cursor() as cursor:
        cursor.execute(_RECORD_SQL, [entry.at, entry.actor, entry.action, entry.object_type, entry.object_id,
                                     entry.event_id, _json_or_none(entry.before), _json_or_none(entry.after),
                                     entry.correlation_id, entry.entry_hash])
        entry.pk = cursor.fetchone()[0]
    entry._state.adding = False
    return entry


_RECORD_MANY_SQL = """
INSERT INTO audit_auditentry (at, actor, action, object_type, object_id, event_id, before, after, correlation_id,
                              entry_hash)
SELECT %s, u.actor, u.action, u.object_type, u.object_id, u.event_id, u.before, u.after, u.correlation_id,
       u.entry_hash
FROM jsonb_to_recordset(%s::jsonb) AS u(actor text, action text, object_type text, object_id text, event_id uuid,
                                        before jsonb, after jsonb, correlation_id text, entry_hash text)
"""


def record_many(items: list[dict], *, native: bool = False) -> int:
    """Many entries in one INSERT (batch ingest); each dict takes `record`'s keyword arguments.

    The rows travel as one JSON document: binding them as arrays costs far more in client-side escaping.
    """
    _require_transaction()
    now = timezone.now()
    entries = [_build(at=now, native=native, **item) for item in items]
    rows = [{"actor": e.actor, "action": e.action, "object_type": e.object_type, "object_id": e.object_id,
             "event_id": str(e.event_id) if e.event_id else None, "before": e.before, "after": e.after,
             "correlation_id": e.correlation_id, "entry_hash": e.entry_hash} for e in entries]
    with connection.cursor() as cursor:
        cursor.execute(_RECORD_MANY_SQL, [now, json.dumps(rows, separators=(",", ":"))])
    return len(rows)


def model_snapshot(instance, fields: list[str]) -> dict:
    return jsonable({name: getattr(instance, name) for name in fields})


@dataclass
class SealResult:
    sealed: int
    head_seq: int
    head_hash: str


def seal(*, batch_size: int = 5000, full_scan: bool = False, window: int = 200_000) -> SealResult:
    """Append committed, unsealed entries to the chain.

    Only sealers take the advisory lock; a second sealer returns at once. Entries normally arrive in id
    order; one whose transaction committed late (lower id) is found by the look-back window, or by a
    full scan (`audit_verify` runs one).
    """
    total = 0
    while True:
        with transaction.atomic():
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_try_advisory_xact_lock(%s)", [SEAL_LOCK_KEY])
                if not cursor.fetchone()[0]:
                    head = AuditSeal.objects.order_by("-seq").first()
                    return SealResult(total, head.seq if head else 0, head.chain_hash if head else GENESIS)
                head = AuditSeal.objects.order_by("-seq").values("seq", "chain_hash", "entry_id").first()
                seq = head["seq"] if head else 0
                prev = head["chain_hash"] if head else GENESIS
                floor = 0 if full_scan or not head else max(0, head["entry_id"] - window)
                cursor.execute(
                    """SELECT e.id, e.entry_hash FROM audit_auditentry e
                       WHERE e.id > %s AND NOT EXISTS (SELECT 1 FROM audit_auditseal s WHERE s.entry_id = e.id)
                       ORDER BY e.id LIMIT %s""",
                    [floor, batch_size],
                )
                rows = cursor.fetchall()
                if not rows:
                    return SealResult(total, seq, prev)
                now = timezone.now()
                seals = []
                for entry_id, entry_hash in rows:
                    seq += 1
                    prev_hash, prev = prev, chain_hash(prev, seq, entry_id, entry_hash)
                    seals.append(AuditSeal(seq=seq, entry_id=entry_id, entry_hash=entry_hash,
                                           prev_hash=prev_hash, chain_hash=prev, sealed_at=now))
                AuditSeal.objects.bulk_create(seals, batch_size=2000)
                total += len(seals)
        if len(rows) < batch_size:
            return SealResult(total, seq, prev)


@dataclass
class VerifyResult:
    ok: bool
    count: int
    problem: str = ""
    bad_entry_id: int | None = None
    bad_seq: int | None = None


def verify(*, chunk: int = 20_000) -> VerifyResult:
    """Re-check every sealed entry and the chain, in seq order, streaming with a server-side cursor."""
    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute("DECLARE audit_verify_cur NO SCROLL CURSOR FOR "
                           "SELECT s.seq, s.entry_id, s.entry_hash, s.prev_hash, s.chain_hash, e.id, e.at, e.actor, "
                           "e.action, e.object_type, e.object_id, e.event_id, e.before, e.after, e.correlation_id, "
                           "e.entry_hash FROM audit_auditseal s LEFT JOIN audit_auditentry e ON e.id = s.entry_id "
                           "ORDER BY s.seq")
            try:
                return _verify_rows(cursor, chunk)
            finally:
                cursor.execute("CLOSE audit_verify_cur")


def _verify_rows(cursor, chunk: int) -> VerifyResult:
    prev = GENESIS
    expected_seq = 0
    while True:
        cursor.execute(f"FETCH {int(chunk)} FROM audit_verify_cur")
        rows = cursor.fetchall()
        if not rows:
            break
        for (seq, entry_id, seal_entry_hash, prev_hash, stored_chain, e_id, at, actor, action, otype, oid,
             event_id, before, after, corr, stored_entry_hash) in rows:
            expected_seq += 1
            if seq != expected_seq:
                return VerifyResult(False, expected_seq - 1, f"chain position {expected_seq} is missing",
                                    entry_id, seq)
            if e_id is None:
                return VerifyResult(False, seq - 1, f"entry {entry_id} (seq {seq}) was deleted", entry_id, seq)
            if isinstance(before, str):
                before = json.loads(before)
            if isinstance(after, str):
                after = json.loads(after)
            content = entry_content(at=at, actor=actor, action=action, object_type=otype, object_id=oid,
                                    event_id=event_id, before=before, after=after, correlation_id=corr)
            recomputed = hashlib.sha256(canonical_json(content)).hexdigest()
            if recomputed != seal_entry_hash or stored_entry_hash != seal_entry_hash:
                return VerifyResult(False, seq - 1, f"entry {entry_id} (seq {seq}) was altered", entry_id, seq)
            if prev_hash != prev or chain_hash(prev, seq, entry_id, seal_entry_hash) != stored_chain:
                return VerifyResult(False, seq - 1, f"chain broken at entry {entry_id} (seq {seq})",
                                    entry_id, seq)
            prev = stored_chain
    return VerifyResult(True, expected_seq)
