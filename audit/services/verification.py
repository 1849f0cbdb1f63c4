"""Verification of the audit log (the tables' database guarantees, entry hashes, the chain, the signed
digests), streamed in constant memory; it returns a `VerifyResult` naming the first bad entry and
changes nothing."""
import hashlib
from dataclasses import dataclass

import psycopg
from django.db import connection, transaction

from audit import digests as digest_mod
from audit import merkle
from audit.models import AuditDigest, AuditSeal
from audit.services.partitions import chain_resume_day
from audit.services.sealing import GENESIS


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


def chain_verify(*, chunk: int = 10_000, from_digest: AuditDigest | None = None, from_seq: int = 1,
           prev_hash: str = GENESIS, prev_entry_id: int = 0, check_digests: bool = True,
           roots: bool = False) -> VerifyResult:
    """Re-check sealed entries and the chain in seq order, streamed (constant memory). Names the first bad entry.

    From the start (default), from a signed digest (its range onwards, starting from the head it signs
    before it), or from a seq whose predecessor's chain hash and entry id the caller vouches for (the
    scheduled incremental run); once audit entries were archived, "from the start" is the signed digest after
    them. What it proves: the audit tables still carry their database guarantees;
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
    tree = None
    if from_digest is None and from_seq == 1:
        # Audit entries of archived months are gone from the database (their signed packs hold them):
        # "from the start" is then the first signed digest after them (`partition_detach`).
        resume = chain_resume_day()
        if resume is not None:
            from_digest = AuditDigest.objects.filter(day=resume).first()
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

