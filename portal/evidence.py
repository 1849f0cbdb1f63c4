"""Evidence packs: one entity's period as a zip an auditor verifies offline with the script inside.
`export_evidence(...)` streams into any binary file from one REPEATABLE READ read-only snapshot via
server-side cursors, CSV row by row (flat memory): the entity's events, receipts, journals, lines, approvals,
exceptions and audit entries; chain.csv (the global chain over whole signed days, other entities' content left
out); signed digests, public key, README, `verify_evidence.py` (stdlib only) and a signed SHA-256 manifest.
Each CSV is a row of a table (`ENTITY_FILES`, then `CHAIN_FILE`)."""
from __future__ import annotations

import base64
import csv
import datetime
import hashlib
import io
import json
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from django.db import connection, transaction
from django.utils import timezone

from audit import digests as digest_mod
from audit import services, verify_evidence
from audit.models import AuditDigest, AuditEntry, AuditSeal
from billing_sync.models import Event, Receipt
from exceptions_queue.models import Approval, ApprovalDecision, ExceptionRecord
from ledger.models import Account, Entity, Journal, JournalLine

FORMAT = "tieout-evidence/1"
_CHUNK = 10_000
# The standalone verifier travels in the pack as it is in the audit app (standard library only).
VERIFIER_PATH = Path(verify_evidence.__file__)


@dataclass
class PackSummary:
    entity: str
    date_from: datetime.date
    date_to: datetime.date
    rows: dict
    first_seq: int
    last_seq: int
    digests: int


class _CsvMember:
    """A CSV file inside the zip, hashed while written; rows buffered so the zip sees big writes."""

    def __init__(self, zf: zipfile.ZipFile, name: str, header: list[str]):
        self.name = name
        self.raw = zf.open(name, "w", force_zip64=True)
        self.hash = hashlib.sha256()
        self.rows = 0
        self.buffer = io.StringIO()
        self.writer = csv.writer(self.buffer, lineterminator="\n")
        self.writer.writerow(header)

    def _flush(self):
        data = self.buffer.getvalue().encode()
        self.hash.update(data)
        self.raw.write(data)
        self.buffer.seek(0)
        self.buffer.truncate()

    def write_rows(self, rows):
        self.writer.writerows(rows)
        self.rows += len(rows)
        if self.buffer.tell() > 1 << 20:
            self._flush()

    def close(self):
        self._flush()
        self.raw.close()


def _stream(cursor, sql: str, params, name: str):
    cursor.execute(f"DECLARE {name} NO SCROLL CURSOR FOR {sql}", params)
    try:
        while True:
            cursor.execute(f"FETCH {_CHUNK} FROM {name}")
            rows = cursor.fetchall()
            if not rows:
                return
            yield rows
    finally:
        cursor.execute(f"CLOSE {name}")


def _iso(value):
    if value is None:
        return ""
    if isinstance(value, datetime.datetime):
        return value.astimezone(datetime.UTC).isoformat()
    return value.isoformat()


def _json(value) -> str:
    """Canonical JSON text. Django's psycopg setup hands jsonb over as text: parse it first."""
    if isinstance(value, str):
        value = json.loads(value)
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _as_is(value):
    return value


def _blank_if_null(value):
    return "" if value is None else value


def _decimal(value) -> str:
    return str(value)


def _decimal_or_blank(value) -> str:
    return "" if value is None else str(value)


def _base64(value) -> str:
    return base64.b64encode(bytes(value)).decode()


def _cells(*writers: Callable) -> Callable[[tuple], list]:
    """A row writer from one writer per selected column, in order."""
    def write(row) -> list:
        return [w(v) for w, v in zip(writers, row, strict=True)]
    return write


def _entry_row(r) -> list:
    """One audit_entries.csv row: the columns, with before/after taken from the hashed content itself."""
    document = json.loads(r[8])
    return [r[0], r[1], _iso(r[2]), r[3], r[4], r[5], r[6], r[7] or "", _json(document.get("before")),
            _json(document.get("after")), r[9], r[10], r[11]]


@dataclass(frozen=True)
class PackFile:
    """One CSV file of the pack: its name, its header, the query that reads its rows in order, and how a
    fetched row becomes the CSV row. The query names tables in braces ({event}: `TABLES`) and the export's
    parameters as %(name)s: the period (start, end), the entity (code, entity_id, prefix for object ids
    "<code>:..."), and for the chain its seq range (first_seq, last_seq)."""

    name: str
    columns: tuple[str, ...]
    query: str
    row: Callable[[tuple], list]

    def sql(self) -> str:
        return self.query.format(**TABLES, entity_entries=ENTITY_ENTRIES.format(**TABLES),
                                 journals_of_period=JOURNALS_OF_PERIOD.format(**TABLES))


TABLES = {key: model._meta.db_table for key, model in {
    "event": Event, "receipt": Receipt, "approval": Approval, "decision": ApprovalDecision,
    "exception": ExceptionRecord, "account": Account, "entity": Entity, "journal": Journal, "line": JournalLine,
    "entry": AuditEntry, "seal": AuditSeal}.items()}

# The entity's audit entries of the period, plus the journal.created entry of every journal in the pack
# (`e` is the entry).
ENTITY_ENTRIES = """(
      (e.at >= %(start)s AND e.at < %(end)s AND (
          e.event_id IN (SELECT id FROM {event} WHERE entity_code = %(code)s)
          OR (e.object_type = 'journal' AND e.object_id IN (SELECT id::text FROM {journal}
                                                            WHERE entity_id = %(entity_id)s))
          OR (e.object_type = 'exception' AND e.object_id IN (SELECT id::text FROM {exception}
                                                              WHERE entity_code = %(code)s))
          OR (e.object_type = 'approval' AND e.object_id IN (SELECT id::text FROM {approval}
                                                             WHERE entity_id = %(entity_id)s))
          OR e.object_id = %(code)s OR e.object_id LIKE %(prefix)s))
      OR (e.object_type = 'journal' AND e.action = 'journal.created' AND e.object_id IN (
          SELECT id::text FROM {journal} WHERE entity_id = %(entity_id)s
          AND created_at >= %(start)s AND created_at < %(end)s)))"""
# The entity's journals created in the period (`j`).
JOURNALS_OF_PERIOD = ("FROM {journal} j WHERE j.entity_id = %(entity_id)s "
                      "AND j.created_at >= %(start)s AND j.created_at < %(end)s")

# The entity's files, in the pack's order.
ENTITY_FILES = (
    PackFile(
        "events.csv",
        ("id", "source_system", "event_id", "type", "entity_code", "occurred_at", "received_at", "status",
         "payload_hash", "idempotency_key", "correlation_id", "receipt_id", "payload"),
        """SELECT id::text, source_system, event_id, type, entity_code, occurred_at, received_at,
                  status, payload_hash, coalesce(idempotency_key, ''), correlation_id, receipt_id, payload::text
           FROM {event} WHERE entity_code = %(code)s AND received_at >= %(start)s
           AND received_at < %(end)s ORDER BY received_at, id""",
        _cells(_as_is, _as_is, _as_is, _as_is, _as_is, _iso, _iso, _as_is, _as_is, _as_is, _as_is,
               _blank_if_null, _as_is)),
    PackFile(
        "receipts.csv",
        ("id", "received_at", "endpoint", "client", "sha256", "outcome", "status_code", "correlation_id",
         "body_base64"),
        """SELECT r.id, r.received_at, r.endpoint, r.client, r.sha256, r.outcome, r.status_code,
                  r.correlation_id, r.body FROM {receipt} r
           WHERE r.id IN (SELECT receipt_id FROM {event} WHERE entity_code = %(code)s
                          AND received_at >= %(start)s AND received_at < %(end)s)
           ORDER BY r.id""",
        _cells(_as_is, _iso, _as_is, _as_is, _as_is, _as_is, _as_is, _as_is, _base64)),
    PackFile(
        "journals.csv",
        ("id", "entity", "kind", "status", "accounting_date", "event_id", "reverses", "source_system",
         "document_type", "document_id", "document_version", "description", "erp_document_ref", "posted_at",
         "created_at", "created_by", "correlation_id"),
        """SELECT j.id::text, %(code)s, j.kind, j.status, j.accounting_date, j.event_id::text,
                  j.reverses_id::text, j.source_system, j.document_type, j.document_id,
                  j.document_version, j.description, j.erp_document_ref, j.posted_at,
                  j.created_at, j.created_by, j.correlation_id {journals_of_period}
           ORDER BY j.created_at, j.id""",
        _cells(_as_is, _as_is, _as_is, _as_is, _iso, _blank_if_null, _blank_if_null, _as_is, _as_is, _as_is,
               _blank_if_null, _as_is, _blank_if_null, _iso, _iso, _as_is, _as_is)),
    PackFile(
        "journal_lines.csv",
        ("journal_id", "line_no", "account", "debit", "credit", "customer_id", "invoice_id", "payment_id",
         "jurisdiction", "memo"),
        """SELECT l.journal_id::text, l.line_no, a.code, l.debit, l.credit, l.customer_id,
                  l.invoice_id, l.payment_id, l.jurisdiction, l.memo
           FROM {line} l JOIN {account} a ON a.id = l.account_id
           WHERE l.journal_id IN (SELECT j.id {journals_of_period})
           ORDER BY l.journal_id, l.line_no""",
        _cells(_as_is, _as_is, _as_is, _decimal, _decimal, _as_is, _as_is, _as_is, _as_is, _as_is)),
    PackFile(
        "approvals.csv",
        ("id", "kind", "status", "journal_id", "event_id", "document_id", "subject", "amount", "currency",
         "requested_by", "required_approvals", "reason", "created_at", "decided_at", "decisions"),
        """SELECT a.id::text, a.kind, a.status, a.journal_id::text, a.event_id::text, a.document_id, a.subject,
                  a.amount, a.currency, a.requested_by_label, a.required_approvals, a.reason,
                  a.created_at, a.decided_at,
                  (SELECT coalesce(jsonb_agg(jsonb_build_object(
                      'user', u.username, 'decision', d.decision, 'comment', d.comment,
                      'at', d.at) ORDER BY d.at, d.id), '[]'::jsonb)
                   FROM {decision} d JOIN auth_user u ON u.id = d.user_id
                   WHERE d.approval_id = a.id)::text
           FROM {approval} a WHERE a.entity_id = %(entity_id)s
           AND a.created_at >= %(start)s AND a.created_at < %(end)s
           ORDER BY a.created_at, a.id""",
        _cells(_as_is, _as_is, _as_is, _blank_if_null, _blank_if_null, _as_is, _as_is, _decimal, _as_is, _as_is,
               _as_is, _as_is, _iso, _iso, _as_is)),
    PackFile(
        "exceptions.csv",
        ("id", "code", "status", "process", "event_id", "journal_id", "message", "amount", "created_at",
         "resolved_at", "resolved_by", "resolution"),
        """SELECT x.id::text, x.code, x.status, x.process, x.event_id::text, x.journal_id::text,
                  x.message, x.amount, x.created_at, x.resolved_at, x.resolved_by, x.resolution
           FROM {exception} x WHERE x.entity_code = %(code)s
           AND x.created_at >= %(start)s AND x.created_at < %(end)s
           ORDER BY x.created_at, x.id""",
        _cells(_as_is, _as_is, _as_is, _as_is, _blank_if_null, _blank_if_null, _as_is, _decimal_or_blank, _iso,
               _iso, _as_is, _as_is)),
    PackFile(
        "audit_entries.csv",
        ("id", "seq", "at", "actor", "action", "object_type", "object_id", "event_id", "before", "after",
         "correlation_id", "entry_hash", "chain_hash"),
        # before and after both come from `content` (read once): the verifier re-hashes the entry from them.
        """SELECT e.id, s.seq, e.at, e.actor, e.action, e.object_type, e.object_id,
                  e.event_id::text, e.content, e.correlation_id, e.entry_hash, s.chain_hash
           FROM {entry} e JOIN {seal} s ON s.entry_id = e.id
           WHERE {entity_entries} ORDER BY s.seq""",
        _entry_row),
)
# Every link of the global chain over the pack's seq range (other entities' entries as hashes only).
CHAIN_FILE = PackFile(
    "chain.csv",
    ("seq", "entry_id", "entry_hash", "chain_hash"),
    "SELECT seq, entry_id, entry_hash, chain_hash FROM {seal} WHERE seq BETWEEN %(first_seq)s AND %(last_seq)s "
    "ORDER BY seq",
    list)


def _chain_range(cursor, params: dict, date_from, date_to) -> tuple[int, int]:
    cursor.execute("SELECT min(s.seq), max(s.seq) FROM {entry} e JOIN {seal} s ON s.entry_id = e.id "
                   "WHERE {entity_entries}".format(**TABLES, entity_entries=ENTITY_ENTRIES.format(**TABLES)), params)
    smin, smax = cursor.fetchone()
    days = AuditDigest.objects.filter(day__gte=date_from, day__lte=date_to, count__gt=0)
    bounds = [v for v in (smin, days.order_by("first_seq").values_list("first_seq", flat=True).first()) if v]
    ends = [v for v in (smax, days.order_by("-last_seq").values_list("last_seq", flat=True).first()) if v]
    if not bounds:
        return 1, 0
    start, end = min(bounds), max(ends)
    # Whole signed days at both ends, so every digest in the pack can be recomputed from it.
    covering = AuditDigest.objects.filter(first_seq__lte=start, last_seq__gte=start, count__gt=0).first()
    if covering:
        start = covering.first_seq
    covering = AuditDigest.objects.filter(first_seq__lte=end, last_seq__gte=end, count__gt=0).first()
    if covering:
        end = covering.last_seq
    return start, end


README = """Tieout evidence pack: entity {entity}, {date_from} to {date_to} (UTC days, inclusive)
Generated {generated} by Tieout; signing key id {key_id}.

HOW TO CHECK IT (no access to Tieout needed, Python 3.9+ standard library only):

    python3 verify_evidence.py {name} --public-key THE_KEY_TIEOUT_GAVE_YOU.pem [--digests DIGESTS_YOU_KEPT.json]

It prints "OK: the pack is complete and unaltered" and exits 0, or names every problem and exits 1.
Pin the key with --public-key (a key obtained separately from the pack): without it the verifier can
only check that the pack agrees with the key inside it. Pass --digests with a digest export you kept
earlier (manage.py audit_digest export) to prove that nothing signed before has changed since.

WHAT IS IN IT
  events.csv, receipts.csv    the entity's events received in the period and their receipts; a receipt
                              carries the raw bytes received (body_base64) and their SHA-256
  journals.csv, journal_lines.csv  journals created in the period and their lines
  approvals.csv, exceptions.csv    approvals (with every decision; `subject` names what an approval without a
                                   journal decides, e.g. period:US01:2026-11) and exceptions of the period
  audit_entries.csv           the entity's audit entries: content, entry hash, seq and chain hash
  chain.csv                   every link of the audit chain over the pack's seq range
  digests.json                the signed daily digests of that range (and the one just before it)
  public_key.pem              the Ed25519 public key that signs digests and this pack's manifest
  manifest.json, manifest.sig every file's SHA-256, signed
  verify_evidence.py          the verifier

HOW THE CHAIN IS CHECKED WHEN THE PACK HOLDS ONE ENTITY
Tieout keeps one hash chain for all entities. chain.csv holds every link over the pack's seq range
(seq, entry id, entry hash, chain hash) - other entities' entries appear there as hashes only, never
with their content. The range is widened to whole signed days, so each day's Merkle root and chain head
can be recomputed and compared with its signature, and the whole-tree root is folded on from the signed
frontier of the day before. Each of this entity's entries is then re-hashed from its content and found
at its seq in the chain. Entries sealed after the last signed day are chained but not yet signed; the
verifier says so.

WHAT "OK" PROVES
  - no file of the pack was changed after Tieout signed it;
  - the chain over the range is unbroken, in order, without gaps, and is exactly what the daily digests
    signed (so no audit entry of those days was edited, deleted, inserted or reordered since);
  - every audit entry here is the one in the chain;
  - every journal balances and its lines are the ones recorded when it was created;
  - every receipt's raw body is the one whose hash was recorded.
HASHES
  entry hash  SHA-256 of the entry's JSON (keys sorted, no spaces, UTF-8): at, actor, action, object_type,
              object_id, event_id, before, after, correlation_id
  chain hash  SHA-256 of "<previous chain hash>|<seq>|<entry id>|<entry hash>", genesis = 64 zeros
  Merkle      RFC 6962: leaf = SHA-256(0x00 || entry hash bytes), node = SHA-256(0x01 || left || right)
  digest      Ed25519 over "tieout-audit-digest:" + the digest's JSON body (keys sorted, no spaces)
"""


def export_evidence(*, entity_code: str, date_from: datetime.date, date_to: datetime.date, out,
                    name: str = "evidence.zip", actor="system") -> PackSummary:
    """Write the pack into `out` (a writable binary file object). The export itself is audited."""
    if date_to < date_from:
        raise ValueError("the period ends before it starts")
    entity = Entity.objects.get(code=entity_code)
    services.seal()
    key = digest_mod.signing_key()
    raw_public = digest_mod.public_key_bytes(key.public_key())
    start = datetime.datetime.combine(date_from, datetime.time.min, tzinfo=datetime.UTC)
    end = datetime.datetime.combine(date_to + datetime.timedelta(days=1), datetime.time.min, tzinfo=datetime.UTC)
    params = {"start": start, "end": end, "code": entity.code, "entity_id": entity.pk, "prefix": f"{entity.code}:%"}
    files: dict[str, dict] = {}

    outermost = not connection.in_atomic_block
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        with transaction.atomic():
            with connection.cursor() as cursor:
                if outermost:  # one snapshot for every file of the pack (inside a caller's transaction: theirs)
                    cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")

                def csv_file(spec: PackFile, sql_params: dict):
                    member = _CsvMember(zf, spec.name, list(spec.columns))
                    for rows in _stream(cursor, spec.sql(), sql_params, f"pack_{spec.name.split('.')[0]}"):
                        member.write_rows([spec.row(r) for r in rows])
                    member.close()
                    files[spec.name] = {"sha256": member.hash.hexdigest(), "rows": member.rows}

                for spec in ENTITY_FILES:
                    csv_file(spec, params)
                first_seq, last_seq = _chain_range(cursor, params, date_from, date_to)
                cursor.execute("SELECT chain_hash, entry_id FROM {seal} WHERE seq = %s".format(**TABLES),
                               [first_seq - 1])
                before = cursor.fetchone()
                prev_hash, prev_entry = (before[0], before[1]) if before else (services.GENESIS, 0)
                cursor.execute("SELECT chain_hash FROM {seal} WHERE seq = %s".format(**TABLES), [last_seq])
                last = cursor.fetchone()
                last_hash = last[0] if last else prev_hash
                csv_file(CHAIN_FILE, {"first_seq": first_seq, "last_seq": last_seq})

                in_range = list(AuditDigest.objects.filter(first_seq__gte=first_seq, last_seq__lte=last_seq)
                                .order_by("day")) if last_seq >= first_seq else []
                anchor = (AuditDigest.objects.filter(day__lt=in_range[0].day).order_by("-day").first()
                          if in_range else None)
                digests_doc = {
                    "key_id": digest_mod.key_id(raw_public),
                    "digests": [digest_mod.digest_export_item(d) for d in in_range],
                    "anchor": digest_mod.digest_export_item(anchor) if anchor else None,
                    "start_frontier": (anchor.frontier if anchor else {"size": 0, "stack": []}) if in_range else None,
                }
        generated = timezone.now()
        plain = {
            "digests.json": json.dumps(digests_doc, indent=2).encode(),
            "public_key.pem": digest_mod.public_key_pem(key.public_key()).encode(),
            "README.txt": README.format(entity=entity.code, date_from=date_from, date_to=date_to, name=name,
                                        generated=generated.isoformat(), key_id=digest_mod.key_id(raw_public)).encode(),
            "verify_evidence.py": VERIFIER_PATH.read_bytes(),
        }
        for filename, data in plain.items():
            zf.writestr(filename, data)
            files[filename] = {"sha256": hashlib.sha256(data).hexdigest(), "rows": None}
        manifest = {"format": FORMAT, "entity": entity.code, "from": date_from.isoformat(),
                    "to": date_to.isoformat(), "generated_at": generated.isoformat(),
                    "key_id": digest_mod.key_id(raw_public),
                    "chain": {"first_seq": first_seq, "last_seq": last_seq, "prev_hash": prev_hash,
                              "prev_entry_id": prev_entry, "last_hash": last_hash},
                    "files": files}
        manifest_bytes = json.dumps(manifest, indent=2, sort_keys=True).encode()
        zf.writestr("manifest.json", manifest_bytes)
        zf.writestr("manifest.sig", base64.b64encode(key.sign(manifest_bytes)))

    with transaction.atomic():
        services.record(actor=actor, action="audit.evidence_exported", object_type="entity", object_id=entity.code,
                        after={"from": date_from.isoformat(), "to": date_to.isoformat(), "first_seq": first_seq,
                               "last_seq": last_seq, "manifest_sha256": hashlib.sha256(manifest_bytes).hexdigest(),
                               "rows": {k: v["rows"] for k, v in files.items() if v["rows"] is not None}})
    return PackSummary(entity.code, date_from, date_to, {k: v["rows"] for k, v in files.items()}, first_seq,
                       last_seq, len(in_range))
