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

import logging
import time

import psycopg
from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from audit import merkle
from audit.models import AuditCheck, AuditDigest, AuditEntry, AuditSeal
from config import correlation

log = logging.getLogger(__name__)

GENESIS = "0" * 64
UNHASHED = "-" * 64
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


def chain_hash(prev_hash: str, seq: int, entry_id: int, entry_hash: str) -> str:
    return hashlib.sha256(f"{prev_hash}|{seq}|{entry_id}|{entry_hash}".encode()).hexdigest()


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
# entry still being written from a gap left by a rollback (see `seal`). Costs nothing measurable.
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


def model_snapshot(instance, fields: list[str]) -> dict:
    return jsonable({name: getattr(instance, name) for name in fields})


# --------------------------------------------------------------------------------------------- the sealer
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


def seal(*, batch_size: int = 5000, wait_seconds: float = 2.0, **_legacy) -> SealResult:
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


# --------------------------------------------------------------------------------------------- verification
@dataclass
class VerifyResult:
    ok: bool
    count: int
    problem: str = ""
    bad_entry_id: int | None = None
    bad_seq: int | None = None
    head_seq: int = 0
    head_hash: str = GENESIS
    digests_checked: int = 0


class _Bad(Exception):
    def __init__(self, problem: str, entry_id=None, seq=None):
        super().__init__(problem)
        self.problem, self.entry_id, self.seq = problem, entry_id, seq


# The thorough pass streams seals and entries with two cursors and merges them here (the chain is in id
# order), so that whatever was done to either table it can say which entry and what.
_VERIFY_SEALS_SQL = """
SELECT seq, entry_id, entry_hash, prev_hash, chain_hash FROM audit_auditseal WHERE seq >= %s ORDER BY seq
"""
_VERIFY_ENTRIES_SQL = """
SELECT e.id, e.content, e.entry_hash FROM audit_auditentry e WHERE e.id > %s ORDER BY e.id
"""

# The fast pass: every entry after the start, in id order, with its seal (a merge join of two index
# scans: no sort, no hash table), each row carrying exactly the texts to hash: PostgreSQL builds the link
# "prev|seq|entry_id|entry_hash" (its integer output is Python's), Python hashes it and the content.
# Entries not sealed yet come last, with empty seal columns. Fetched through a server-side cursor in
# pipeline mode with several FETCHes queued, so that PostgreSQL reads ahead while Python hashes (six small
# batches in flight measured ~20 % faster than one large one; memory stays bounded by them).
_FAST_SQL = """
DECLARE audit_verify_fast NO SCROLL CURSOR FOR
SELECT s.seq, s.prev_hash || '|' || s.seq || '|' || s.entry_id || '|' || s.entry_hash, s.chain_hash,
       e.entry_hash = s.entry_hash, e.content
FROM audit_auditentry e LEFT JOIN audit_auditseal s ON s.entry_id = e.id
WHERE e.id > %s ORDER BY e.id
"""
_FAST_BATCH = 2000
_FAST_AHEAD = 6

# What migration 0005 installed, as PostgreSQL prints it back: verification is only as good as the
# guarantee that the indexed columns are the hashed content, so it first checks that nobody (a superuser
# included) dropped, re-defined or un-validated that guarantee, or switched off the append-only guards.
_FIELDS_CONSTRAINT = (
    "CHECK ((NOT (ROW(at, (actor)::text, (action)::text, (object_type)::text, (object_id)::text, event_id, "
    "(correlation_id)::text)::audit_entry_fields IS DISTINCT FROM jsonb_populate_record(NULL::audit_entry_fields, "
    "(content)::jsonb))))")
_FIELDS_TYPE = [("at", "timestamp with time zone"), ("actor", "text"), ("action", "text"), ("object_type", "text"),
                ("object_id", "text"), ("event_id", "uuid"), ("correlation_id", "text")]
_GUARDS = {"audit_auditentry": ["audit_entry_append_only", "audit_entry_no_truncate"],
           "audit_auditseal": ["audit_seal_append_only", "audit_seal_no_truncate"]}


def schema_problem(cursor) -> str:
    """'' when the audit tables still carry their guarantees, else what was changed."""
    cursor.execute("""SELECT pg_get_constraintdef(c.oid), c.convalidated FROM pg_constraint c
                      WHERE c.conrelid = 'audit_auditentry'::regclass AND c.conname = 'audit_entry_fields_match'""")
    found = cursor.fetchone()
    if found is None:
        return "the audit table's guarantee that its columns are the hashed content (audit_entry_fields_match) was dropped"
    if " ".join(found[0].split()) != _FIELDS_CONSTRAINT or not found[1]:
        return ("the audit table's guarantee that its columns are the hashed content (audit_entry_fields_match) was "
                f"altered or not validated: {found[0]}")
    cursor.execute("""SELECT a.attname, format_type(a.atttypid, a.atttypmod) FROM pg_type t
                      JOIN pg_attribute a ON a.attrelid = t.typrelid AND a.attnum > 0 AND NOT a.attisdropped
                      WHERE t.typname = 'audit_entry_fields' AND t.typnamespace = current_schema()::regnamespace
                      ORDER BY a.attnum""")
    if [tuple(r) for r in cursor.fetchall()] != _FIELDS_TYPE:
        return "the row type audit_entry_fields behind the audit table's content check was altered"
    for table, names in _GUARDS.items():
        cursor.execute("SELECT tgname, tgenabled FROM pg_trigger WHERE tgrelid = %s::regclass AND NOT tgisinternal",
                       [table])
        state = dict(cursor.fetchall())
        for name in names:
            if state.get(name) != "O":
                return f"the append-only guard {name} on {table} was {'disabled' if name in state else 'dropped'}"
    return ""


class _DigestTracker:
    """Checks each signed digest as the stream passes its range: signature, head, count and both roots."""

    def __init__(self, digests: list[AuditDigest], tree: merkle.Frontier | None, raw_public: bytes):
        from audit import digests as digest_mod

        self.pending = list(digests)
        self.tree = tree  # None: started mid-chain without a frontier, so the whole-tree root is not checked
        self.day_tree = merkle.Frontier()
        self.checked = 0
        for digest in self.pending:
            if not digest_mod.digest_signature_valid(digest, raw_public):
                raise _Bad(f"digest {digest.day} (seq {digest.first_seq}..{digest.last_seq}) has a bad signature: "
                           "it was forged or altered", None, digest.first_seq)

    def leaf(self, entry_hash_hex: str) -> None:
        leaf = hashlib.sha256(b"\x00" + bytes.fromhex(entry_hash_hex)).digest()
        self.day_tree.append_leaf(leaf)
        if self.tree is not None:
            self.tree.append_leaf(leaf)

    def close_through(self, seq: int, chain: str, entry_id) -> None:
        """Close every digest whose range ends at or before `seq` (empty days included)."""
        while self.pending and self.pending[0].last_seq <= seq:
            digest = self.pending.pop(0)
            where = f"digest {digest.day} (seq {digest.first_seq}..{digest.last_seq})"
            if digest.last_seq == seq and digest.head_hash != chain:
                raise _Bad(f"{where}: the chain at seq {seq} (entry {entry_id}) is not the signed head", entry_id, seq)
            if self.day_tree.root().hex() != digest.day_root or self.day_tree.size != digest.count:
                raise _Bad(f"{where}: the day's entries are not the signed ones (Merkle root differs)", entry_id, seq)
            if self.tree is not None and (self.tree.size != digest.tree_size or
                                          self.tree.root().hex() != digest.tree_root):
                raise _Bad(f"{where}: the tree of seq 1..{digest.tree_size} is not the signed one", entry_id, seq)
            self.day_tree = merkle.Frontier()
            self.checked += 1

    def finish(self, head_seq: int) -> None:
        if self.pending and self.pending[0].last_seq > head_seq:
            digest = self.pending[0]
            raise _Bad(f"digest {digest.day} signs seq {digest.first_seq}..{digest.last_seq} but the chain ends at "
                       f"seq {head_seq}: entries after it were deleted", None, head_seq + 1)


def verify(*, chunk: int = 10_000, from_digest: AuditDigest | None = None, from_seq: int = 1,
           prev_hash: str = GENESIS, prev_entry_id: int = 0, check_digests: bool = True,
           roots: bool = False) -> VerifyResult:
    """Re-check sealed entries and the chain in seq order, streamed (constant memory). Names the first bad entry.

    From the start (default), from a signed digest (its range onwards, starting from the head it signs
    before it), or from a seq whose predecessor's chain hash and entry id the caller vouches for (the
    scheduled incremental run). What it proves: the audit tables still carry their database guarantees;
    every sealed entry's content hashes to its entry hash; the chain links without a gap, in entry-id
    order, from the start to the head; every signed digest met on the way has a valid signature and its
    signed heads are the chain's (so nothing it signed changed); and no entry before the head is missing
    from the chain (inserted into the past).

    The fast pass checks exactly that and no more. When it finds anything wrong, or with `roots=True`, the
    thorough pass runs: it walks seals and entries separately so that it can say what happened to which
    entry (edited, deleted, inserted, reordered), and it also re-computes every digest's Merkle roots
    (day and whole tree) from the entry hashes: the roots are a function of the very hashes the signed
    heads already bind, so re-computing them checks the signer's arithmetic, which costs as much again.
    """
    from audit import digests as digest_mod

    tree = None
    if from_digest is not None:
        from_seq, prev_hash = from_digest.first_seq, from_digest.prev_head_hash
        before = AuditSeal.objects.filter(seq=from_seq - 1).values_list("entry_id", flat=True).first()
        prev_entry_id = before or 0
        earlier = AuditDigest.objects.filter(day__lt=from_digest.day).order_by("-day").first()
        tree = merkle.Frontier.from_json(earlier.frontier) if earlier else merkle.Frontier()
    elif from_seq == 1:
        tree = merkle.Frontier()
    with transaction.atomic():
        try:
            with connection.cursor() as cursor:
                problem = schema_problem(cursor)
                if problem:
                    raise _Bad(problem)
            digests = []
            raw_public = b""
            if check_digests:
                digests = list(AuditDigest.objects.filter(last_seq__gte=from_seq).order_by("day"))
                if from_digest is not None:
                    digests = [d for d in digests if d.day >= from_digest.day]
                elif from_seq > 1:  # mid-chain: only the digests that start here or later can be re-computed
                    digests = [d for d in digests if d.first_seq >= from_seq]
                if digests:
                    raw_public = digest_mod.public_key_bytes()
            tracker = _DigestTracker(digests, tree, raw_public)  # checks every signature first
            fast = None if roots else _fast_pass(digests, from_seq, prev_hash, prev_entry_id)
            if fast is not None:
                count, head_seq, head_hash, last_id = fast
                return VerifyResult(True, count, head_seq=head_seq, head_hash=head_hash, digests_checked=len(digests))
            with connection.cursor() as cursor, connection.cursor() as entries:
                cursor.execute(f"DECLARE audit_verify_cur NO SCROLL CURSOR FOR {_VERIFY_SEALS_SQL}", [from_seq])
                entries.execute(f"DECLARE audit_verify_entries NO SCROLL CURSOR FOR {_VERIFY_ENTRIES_SQL}",
                                [prev_entry_id])
                try:
                    count, head_seq, head_hash, last_id = _verify_rows(cursor, entries, chunk, tracker, from_seq,
                                                                       prev_hash, prev_entry_id)
                finally:
                    cursor.execute("CLOSE audit_verify_cur")
                    cursor.execute("CLOSE audit_verify_entries")
            tracker.finish(head_seq)
            _check_nothing_inserted(last_id)
        except _Bad as bad:
            return VerifyResult(False, 0, bad.problem, bad.entry_id, bad.seq)
    return VerifyResult(True, count, head_seq=head_seq, head_hash=head_hash, digests_checked=tracker.checked)


def _check_nothing_inserted(last_id: int) -> None:
    with connection.cursor() as cursor:
        cursor.execute("""SELECT min(e.id) FROM audit_auditentry e WHERE e.id <= %s
                          AND NOT EXISTS (SELECT 1 FROM audit_auditseal s WHERE s.entry_id = e.id)""", [last_id])
        inserted = cursor.fetchone()[0]
    if inserted is not None:
        raise _Bad(f"entry {inserted} was inserted: it is not in the chain, yet the chain has sealed "
                   f"later entries (up to entry {last_id})", inserted, None)


def _fast_pass(digests: list[AuditDigest], from_seq: int, prev_hash: str, prev_entry_id: int):
    """(count, head seq, head hash, last entry id) when everything holds; None at the first thing that does not.

    Sound on its own: walking the entries after `prev_entry_id` in id order, their seals' seqs must run
    from `from_seq` one by one (so the chain order is the id order, and a deleted entry, whose seal drops
    out of the join, leaves a gap), every entry must be sealed up to the last sealed one (an unsealed one
    below it was inserted), each link must hash from the previous chain hash, each content to its entry
    hash, and the chain must pass through every signed head. It does not say what is wrong: the
    thorough pass does.
    """
    marks: dict[int, str] = {}
    for digest in digests:
        for seq, expected in ((digest.first_seq - 1, digest.prev_head_hash), (digest.last_seq, digest.head_hash)):
            if seq < from_seq - 1:
                continue
            if marks.setdefault(seq, expected) != expected:
                return None  # two digests disagree about one head
    if marks.get(from_seq - 1, prev_hash) != prev_hash:
        return None
    with connection.cursor() as cursor:
        cursor.execute("SET LOCAL jit = off")  # plain scans: compiling them costs more than it saves
        cursor.execute(_FAST_SQL, [prev_entry_id])
        try:
            result = _fast_stream(connection.connection, marks, from_seq, prev_hash, prev_entry_id)
        finally:
            cursor.execute("CLOSE audit_verify_fast")
    if result is None:
        return None
    expected_seq, head_hash, last_id = result
    head_seq = expected_seq - 1
    if any(seq > head_seq for seq in marks):
        return None  # a signed head beyond the end of the chain: its entries are gone
    return head_seq - from_seq + 1, head_seq, head_hash, last_id


def _fast_stream(raw, marks: dict, from_seq: int, prev: str, last_id: int) -> tuple[int, str, int] | None:
    """The hot loop of the fast pass: (next seq, head hash, last sealed entry id), or None at the first fault."""
    sha256 = hashlib.sha256
    expected_seq = from_seq
    unsealed = False
    link = None
    fetch = f"FETCH {_FAST_BATCH} FROM audit_verify_fast"
    with raw.pipeline():
        # Server-side binding (what pipelines need); _FAST_AHEAD FETCHes queued ahead of the one being hashed.
        cursors = [psycopg.Cursor(raw) for _ in range(_FAST_AHEAD + 1)]
        for cursor in cursors[:-1]:
            cursor.execute(fetch)
        turn = 0
        while True:
            cursors[(turn - 1) % len(cursors)].execute(fetch)
            rows = cursors[turn].fetchall()
            if not rows:
                break
            for seq, link_text, chain, same, content in rows:
                if seq is None:  # not sealed yet: from here on, nothing may be
                    unsealed = True
                    continue
                if (unsealed or seq != expected_seq or not same or not link_text.startswith(prev)
                        or sha256(content.encode()).hexdigest() != link_text[-64:]
                        or sha256(link_text.encode()).hexdigest() != chain
                        or (expected_seq in marks and marks[expected_seq] != chain)):
                    return None
                prev, link = chain, link_text
                expected_seq += 1
            turn = (turn + 1) % len(cursors)
    if link is not None:
        last_id = int(link.split("|")[2])
    return expected_seq, prev, last_id


def _entry_stream(cursor, chunk: int):
    while True:
        cursor.execute(f"FETCH {int(chunk)} FROM audit_verify_entries")
        rows = cursor.fetchall()
        if not rows:
            return
        yield from rows


def _verify_rows(cursor, entries_cursor, chunk: int, tracker: _DigestTracker, from_seq: int, prev: str,
                 last_id: int):
    """The thorough loop. Returns (count, head seq, head hash, last entry id).

    Walks the seals in seq order and the entries in id order side by side. An entry the walk passes
    without a seal asking for it is kept aside (only tampering produces one: a reordered chain asks for
    it later, an inserted one is reported by the caller's check for unsealed entries below the head).
    """
    sha256 = hashlib.sha256
    stream = _entry_stream(entries_cursor, chunk)
    ahead = next(stream, None)
    aside: dict = {}
    digests = tracker.pending
    expected = from_seq
    tracker.close_through(from_seq - 1, prev, None)  # empty digests that end just before the start
    next_close = digests[0].last_seq if digests else None
    while True:
        cursor.execute(f"FETCH {int(chunk)} FROM audit_verify_cur")
        rows = cursor.fetchall()
        if not rows:
            break
        for seq, entry_id, seal_hash, prev_hash, stored_chain in rows:
            if seq != expected:
                raise _Bad(f"chain position {expected} is missing (next is seq {seq}, entry {entry_id})",
                           entry_id, expected)
            while ahead is not None and ahead[0] < entry_id:
                aside[ahead[0]] = ahead
                ahead = next(stream, None)
            if ahead is not None and ahead[0] == entry_id:
                row, ahead = ahead, next(stream, None)
            else:
                row = aside.pop(entry_id, None)
                if row is None:
                    raise _Bad(f"entry {entry_id} (seq {seq}) was deleted", entry_id, seq)
            if entry_id <= last_id:
                raise _Bad(f"entry {entry_id} (seq {seq}) is out of order: it comes after entry {last_id} in the chain",
                           entry_id, seq)
            _, content, stored_hash = row
            if sha256(content.encode()).hexdigest() != seal_hash or stored_hash != seal_hash:
                raise _Bad(f"entry {entry_id} (seq {seq}) was altered", entry_id, seq)
            if prev_hash != prev or sha256(f"{prev}|{seq}|{entry_id}|{seal_hash}".encode()).hexdigest() != stored_chain:
                raise _Bad(f"chain broken at entry {entry_id} (seq {seq})", entry_id, seq)
            prev = stored_chain
            last_id = entry_id
            expected += 1
            if next_close is not None:
                tracker.leaf(seal_hash)
                if seq >= next_close:
                    tracker.close_through(seq, prev, entry_id)
                    next_close = digests[0].last_seq if digests else None
    return expected - from_seq, expected - 1, prev, last_id


# --------------------------------------------------------------------------------------------- scheduled check
def chain_check(*, full: bool = False, actor="system") -> AuditCheck:
    """Seal, then verify from the last good check (or everything); record the run; raise the alarm on failure.

    The incremental run trusts nothing but what it saw itself: it re-reads the chain hash at the seq where
    the last good run stopped and refuses to go on if it changed (or the chain got shorter). The daily
    full run (`full=True`) is the thorough pass with the digests' Merkle roots re-computed: it runs in the
    background, where twice the time costs nothing.
    """
    seal()
    last = None if full else AuditCheck.objects.filter(ok=True).order_by("-at", "-id").first()
    start_seq, start_hash, start_entry = 1, GENESIS, 0
    problem = None
    if last is not None and last.to_seq > 0:
        anchor = AuditSeal.objects.filter(seq=last.to_seq).values("chain_hash", "entry_id").first()
        if anchor is None or anchor["chain_hash"] != last.to_chain_hash:
            problem = VerifyResult(False, 0, f"the chain at seq {last.to_seq}, verified at {last.at.isoformat()}, "
                                             "is gone or changed since", anchor["entry_id"] if anchor else None,
                                   last.to_seq)
        else:
            start_seq, start_hash, start_entry = last.to_seq + 1, last.to_chain_hash, anchor["entry_id"]
    result = problem or verify(from_seq=start_seq, prev_hash=start_hash, prev_entry_id=start_entry, roots=full)
    with transaction.atomic():
        check = AuditCheck.objects.create(
            full=last is None, from_seq=start_seq, to_seq=result.head_seq if result.ok else (result.bad_seq or 0),
            to_chain_hash=result.head_hash if result.ok else "", ok=result.ok, checked=result.count,
            problem=result.problem, bad_entry_id=result.bad_entry_id)
        if not result.ok:
            _raise_alarm(result, actor=actor)
    return check


def _raise_alarm(result: VerifyResult, *, actor) -> None:
    from config.errors import Codes
    from exceptions_queue.services import exception_open_system

    log.error("audit chain broken", extra={"problem": result.problem, "bad_entry_id": result.bad_entry_id,
                                            "bad_seq": result.bad_seq})
    exception_open_system(code=Codes.AUDIT_CHAIN_BROKEN, message=f"Audit chain broken: {result.problem}",
                          actor=actor)
