"""The sealer: appends committed audit entries to the hash chain (`AuditSeal`) in id order, without gaps,
one sealer at a time under an advisory lock, so that writers (`record` only INSERTs) never queue on a
chain-head lock; and the chain's definition (`GENESIS`, `chain_hash`)."""
import hashlib
import logging
import time
from dataclasses import dataclass

from django.db import connection, transaction
from django.utils import timezone

from audit.models import AuditSeal

log = logging.getLogger(__name__)

# The chain hash before the first seal.
GENESIS = "0" * 64
# Any fixed 64-bit key: only the sealer takes this lock, writers never do.
SEAL_LOCK_KEY = 0x7469656F7574  # "tieout"


def chain_hash(prev_hash: str, seq: int, entry_id: int, entry_hash: str) -> str:
    return hashlib.sha256(f"{prev_hash}|{seq}|{entry_id}|{entry_hash}".encode()).hexdigest()


@dataclass
class SealResult:
    sealed: int
    head_seq: int
    head_hash: str


_GAP_WAIT_SQL = """
SELECT count(*) FROM pg_stat_activity a
WHERE a.datid = (SELECT oid FROM pg_database WHERE datname = current_database())
  AND a.pid <> pg_backend_pid() AND a.backend_xid IS NOT NULL
  AND a.backend_xid::text::bigint IN (SELECT x::text::bigint %% 4294967296
                                      FROM pg_snapshot_xip(%s::pg_snapshot) AS x)
"""


def _writers_finished(cursor, snapshot: str, wait_seconds: float) -> bool:
    """Wait (bounded) until every transaction of this database that was running at `snapshot` has ended."""
    deadline = time.monotonic() + wait_seconds
    pause = 0.002
    while True:
        cursor.execute("SELECT pg_stat_clear_snapshot()")  # pg_stat_activity is cached per transaction
        cursor.execute(_GAP_WAIT_SQL, [snapshot])
        if cursor.fetchone()[0] == 0:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(pause)
        pause = min(pause * 2, 0.05)


def _contiguous_prefix(rows, floor: int) -> int:
    """How many of `rows` (ordered by id) follow `floor` without a missing id."""
    expected = floor + 1
    for index, (entry_id, _) in enumerate(rows):
        if entry_id != expected:
            return index
        expected += 1
    return len(rows)


def chain_seal(*, batch_size: int = 5000, wait_seconds: float = 2.0) -> SealResult:
    """Append committed entries to the chain in id order, one seq each, without gaps.

    Writers never take a lock for the chain: `record` only INSERTs. Only sealers take the advisory lock
    (a second sealer returns at once). The chain is in id order, so the next entries to seal are simply
    those after the head's entry id: an index range scan, however long the log.

    The hard case is an id that is not visible yet: a transaction that drew a lower id than one already
    committed, and commits later. Sealing past it would leave it out of the chain forever, so at the
    first missing id the sealer takes a snapshot (after reading the rows) and waits for every transaction
    of this database that was running then. Whoever drew the missing id had a transaction id before the
    higher entry committed (`record` takes its xid first), so it is among them: once they are all done,
    the missing id either became visible (sealed now, in its place) or was rolled back (never will be).
    If that takes longer than `wait_seconds` (a long writer), the pass seals the contiguous prefix only and
    the next pass tries again; writers are never blocked by it.
    """
    total = 0
    while True:
        with transaction.atomic():
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_try_advisory_xact_lock(%s)", [SEAL_LOCK_KEY])
                head = AuditSeal.objects.order_by("-seq").values("seq", "chain_hash", "entry_id").first()
                seq = head["seq"] if head else 0
                prev = head["chain_hash"] if head else GENESIS
                floor = head["entry_id"] if head else 0
                if not cursor.fetchone()[0]:
                    return SealResult(total, seq, prev)
                select = ("SELECT id, entry_hash FROM audit_auditentry WHERE id > %s AND id <= %s "
                          "ORDER BY id LIMIT %s")
                cursor.execute(select, [floor, 2 ** 62, batch_size])
                rows = cursor.fetchall()
                if not rows:
                    return SealResult(total, seq, prev)
                cut = _contiguous_prefix(rows, floor)
                if cut < len(rows):
                    cursor.execute("SELECT pg_current_snapshot()::text")
                    snapshot = cursor.fetchone()[0]
                    if _writers_finished(cursor, snapshot, wait_seconds):
                        cursor.execute(select, [floor, rows[-1][0], batch_size])
                        rows = cursor.fetchall()
                    else:
                        log.info("audit sealer: a writer is still running below the visible entries; "
                                 "sealing the contiguous prefix", extra={"floor": floor, "prefix": cut})
                        rows = rows[:cut]
                if not rows:
                    return SealResult(total, seq, prev)
                now = timezone.now()
                seals = []
                for entry_id, entry_hash in rows:
                    seq += 1
                    prev_hash, prev = prev, chain_hash(prev, seq, entry_id, entry_hash)
                    seals.append(AuditSeal(seq=seq, entry_id=entry_id, entry_hash=entry_hash,
                                           prev_hash=prev_hash, chain_hash=prev, sealed_at=now))
                # The audit log's own table, written by its one writer: the chain is the audit record.
                AuditSeal.objects.bulk_create(seals, batch_size=2000)
                total += len(seals)
        if len(rows) < batch_size:
            return SealResult(total, seq, prev)
