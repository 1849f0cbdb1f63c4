"""Retention (issue 13 item 5): one closed month of receipts, events or audit entries moved out of the database
into a signed archive pack, verified, and only then detached; every step audited, every refusal a stable
`retention_*` code. The pack reuses the evidence pack's form (CSV members, a manifest signed with the audit
key, the public key; `audit.verify_evidence.check_manifest` checks it offline)."""
from __future__ import annotations

import base64
import csv
import datetime
import hashlib
import io
import json
import zipfile
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from audit import digests as digest_mod
from audit import services as audit
from audit import verify_evidence
from audit.models import AuditDigest, AuditSeal, PartitionArchive
from config.errors import ApiError, Codes
from ledger.models import Entity, Period
from portal.models import RetentionPolicy

FORMAT = "tieout-retention/1"
TABLES = {RetentionPolicy.Kind.RECEIPTS: "billing_sync_receipt", RetentionPolicy.Kind.EVENTS: "billing_sync_event",
          RetentionPolicy.Kind.AUDIT_ENTRIES: "audit_auditentry"}
AUDIT_TABLE = "audit_auditentry"


class RetentionRefused(ApiError):
    """Nothing was removed: the month is open, too recent, not partitioned, or its pack did not verify."""

    status = 409
    title = "Retention refused"


@dataclass
class ArchiveOutcome:
    kind: str
    month: datetime.date
    path: Path
    pack_sha256: str
    rows: int
    detached: bool
    resume_day: datetime.date | None = None


def _month(value) -> datetime.date:
    if isinstance(value, str):
        value = datetime.date.fromisoformat(f"{value}-01" if len(value) == 7 else value)
    return value.replace(day=1)


def pack_name(kind: str, month: datetime.date) -> str:
    return f"tieout-retention-{kind}-{month:%Y-%m}.zip"


def _refuse(kind: str, month: datetime.date, code: str, detail: str, actor, entities=None) -> RetentionRefused:
    after = {"code": code, "detail": detail} if entities is None else {"code": code, "detail": detail,
                                                                       "entities": entities}
    with transaction.atomic():
        audit.record(actor=actor, action="retention.refused", object_type="retention",
                     object_id=f"{kind}:{month:%Y-%m}", after=after)
    return RetentionRefused(detail, code=code)


def retention_policy_set(*, kind: str, keep_months: int, location: str = "", entity: str | None = None,
                         actor) -> RetentionPolicy:
    """Set how long `kind` is kept after its month ends: for `entity` (a code), or the kind's default (None),
    which also says where the kind's packs go (a pack holds every entity's rows, so only the default has a
    location); audited (`retention.policy_set`, object `KIND` for the default, `KIND:ENTITY` otherwise)."""
    if kind not in TABLES or keep_months < 0:
        raise ValueError(f"unknown kind {kind!r} or negative months")
    if entity is not None and location:
        raise ValueError("a location is the default policy's only: a pack holds every entity's rows")
    owner = Entity.objects.filter(code=entity).first() if entity is not None else None
    if entity is not None and owner is None:
        raise ValueError(f"no entity {entity!r}")
    with transaction.atomic():
        policy = RetentionPolicy.objects.select_for_update().filter(kind=kind, entity=owner).first()
        before = {"keep_months": policy.keep_months, "location": policy.location} if policy else None
        policy, _ = RetentionPolicy.objects.update_or_create(kind=kind, entity=owner, defaults={
            "keep_months": keep_months, "location": location, "updated_at": timezone.now()})
        audit.record(actor=actor, action="retention.policy_set", object_type="retention_policy",
                     object_id=kind if entity is None else f"{kind}:{entity}", before=before,
                     after={"keep_months": keep_months, "location": location, "entity": entity})
    return policy


def retention_policies(kind: str) -> tuple[RetentionPolicy | None, dict[str, RetentionPolicy]]:
    """`kind`'s default policy (or None) and its policies by entity code."""
    rows = list(RetentionPolicy.objects.filter(kind=kind).select_related("entity"))
    default = next((p for p in rows if p.entity_id is None), None)
    return default, {p.entity.code: p for p in rows if p.entity_id is not None}


def open_entities(month: datetime.date, codes=None) -> list[str]:
    """Entities (of `codes`, or all) whose period `month` is not closed (a month without a period row is open)."""
    closed = Period.objects.filter(year=month.year, month=month.month, status=Period.Status.CLOSED)
    entities = Entity.objects.exclude(pk__in=closed.values("entity_id"))
    if codes is not None:
        entities = entities.filter(code__in=codes)
    return sorted(entities.values_list("code", flat=True))


def entities_with_rows(kind: str, month: datetime.date) -> list[str]:
    """The codes of the entities with rows in `kind`'s partition of `month`. A row no entity can be told from
    counts for every entity: a receipt no event (still in the database) came from, such as a refused request's,
    and every audit entry (the chain of a month is everyone's; entries name no entity)."""
    table = audit.partition_name(TABLES[kind], month)
    every = sorted(Entity.objects.values_list("code", flat=True))
    if kind == RetentionPolicy.Kind.AUDIT_ENTRIES:
        return every
    if kind == RetentionPolicy.Kind.EVENTS:
        sql = f'SELECT DISTINCT entity_code FROM "{table}"'
    else:
        sql = f'SELECT DISTINCT e.entity_code FROM "{table}" r LEFT JOIN billing_sync_event e ON e.receipt_id = r.id'
    with connection.cursor() as cursor:
        cursor.execute(sql)
        codes = {code for (code,) in cursor.fetchall()}
    if None in codes or "" in codes:
        return every
    return sorted(codes)


def _copy_sql(table: str, month: datetime.date) -> str:
    return f'COPY (SELECT * FROM "{audit.partition_name(table, month)}" ORDER BY id) TO STDOUT WITH (FORMAT csv, HEADER)'


def _partition_csv(table: str, month: datetime.date, sink) -> str:
    """Stream the partition as CSV into `sink` (None: only hash it); its SHA-256."""
    digest = hashlib.sha256()
    with connection.cursor() as cursor, cursor.copy(_copy_sql(table, month)) as copy:
        for block in copy:
            data = bytes(block)
            digest.update(data)
            if sink is not None:
                sink.write(data)
    return digest.hexdigest()


def _chain_bounds(month: datetime.date) -> tuple[int | None, int | None, int]:
    """(first seq, last seq, unsealed entries) of the audit entries in `month`'s partition."""
    with connection.cursor() as cursor:
        cursor.execute(f"""SELECT min(s.seq), max(s.seq), count(*) FILTER (WHERE s.seq IS NULL)
                           FROM "{audit.partition_name(AUDIT_TABLE, month)}" e
                           LEFT JOIN audit_auditseal s ON s.entry_id = e.id""")
        return cursor.fetchone()


def _write_pack(path: Path, *, kind: str, table: str, month: datetime.date, rows: int, chain: dict | None) -> str:
    """Write the signed pack to `path`; the manifest's SHA-256 (what the audit entry names)."""
    key = digest_mod.signing_key()
    raw_public = digest_mod.public_key_bytes(key.public_key())
    files: dict[str, dict] = {}
    tmp = path.with_suffix(".partial")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        member = f"{table}.csv"
        with zf.open(member, "w", force_zip64=True) as raw:
            files[member] = {"sha256": _partition_csv(table, month, raw), "rows": rows}
        plain = {"public_key.pem": digest_mod.public_key_pem(key.public_key()).encode()}
        if chain is not None:
            seals = io.StringIO()
            writer = csv.writer(seals, lineterminator="\n")
            writer.writerow(["seq", "entry_id", "entry_hash", "prev_hash", "chain_hash"])
            writer.writerows(AuditSeal.objects.filter(seq__gte=chain["first_seq"], seq__lte=chain["last_seq"])
                             .order_by("seq").values_list("seq", "entry_id", "entry_hash", "prev_hash", "chain_hash"))
            plain["seals.csv"] = seals.getvalue().encode()
            covering = AuditDigest.objects.filter(last_seq__gte=chain["first_seq"],
                                                  first_seq__lte=chain["resume_first_seq"]).order_by("day")
            plain["digests.json"] = json.dumps({"key_id": digest_mod.key_id(raw_public), "digests": [
                digest_mod.digest_export_item(d) for d in covering]}, indent=2).encode()
        for name, data in plain.items():
            zf.writestr(name, data)
            files[name] = {"sha256": hashlib.sha256(data).hexdigest(), "rows": None}
        manifest = {"format": FORMAT, "kind": kind, "table": table, "partition": audit.partition_name(table, month),
                    "month": f"{month:%Y-%m}", "rows": rows, "generated_at": timezone.now().isoformat(),
                    "key_id": digest_mod.key_id(raw_public), "chain": chain, "files": files}
        manifest_bytes = json.dumps(manifest, indent=2, sort_keys=True).encode()
        zf.writestr("manifest.json", manifest_bytes)
        zf.writestr("manifest.sig", base64.b64encode(key.sign(manifest_bytes)))
    tmp.replace(path)
    return hashlib.sha256(manifest_bytes).hexdigest()


def pack_problems(path: Path, *, kind: str, month: datetime.date, rows: int) -> list[str]:
    """Why the pack at `path` is not a verified archive of `kind`'s partition of `month` as it is now ([] when it
    is): its signature by the audit key and every member's SHA-256 (`verify_evidence.check_manifest`), its
    format, month and row count, the table's CSV byte for byte the partition's (hashed afresh) and, for audit
    entries, every entry's content hashing to its sealed hash."""
    table = TABLES[kind]
    report = verify_evidence.Report()
    try:
        with zipfile.ZipFile(path) as pack:
            manifest, _ = verify_evidence.check_manifest(pack, report, digest_mod.public_key_bytes())
            if (manifest.get("format"), manifest.get("table"), manifest.get("month"), manifest.get("rows")) != (
                    FORMAT, table, f"{month:%Y-%m}", rows):
                report.fail(f"the manifest is not that of {kind} {month:%Y-%m} with {rows} rows")
            with pack.open(f"{table}.csv") as raw:
                found = sum(1 for _ in csv.reader(io.TextIOWrapper(raw, encoding="utf-8", newline=""))) - 1
            if found != rows:
                report.fail(f"{table}.csv holds {found} rows, the partition {rows}")
            if manifest["files"].get(f"{table}.csv", {}).get("sha256") != _partition_csv(table, month, None):
                report.fail(f"{table}.csv is not the partition's rows as they are in the database")
            if table == AUDIT_TABLE:
                _check_entries(pack, report)
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as exc:
        report.fail(f"unreadable pack: {exc}")
    return report.failures


def _check_entries(pack, report) -> None:
    sealed = {row["entry_id"]: row["entry_hash"] for row in verify_evidence._rows(pack, "seals.csv")}
    for row in verify_evidence._rows(pack, f"{AUDIT_TABLE}.csv"):
        digest = hashlib.sha256(row["content"].encode()).hexdigest()
        if digest != row["entry_hash"] or sealed.get(row["id"]) != digest:
            report.fail(f"audit entry {row['id']}: its content is not its sealed hash")
            return


def retention_archive(*, kind: str, month, actor="system", pack: str | Path | None = None,
                      detach: bool = True) -> ArchiveOutcome:
    """Archive `kind`'s partition of `month` (receipts, events, audit entries) into a signed pack, verify the
    pack, and only then detach and drop the partition (`audit.partition_detach`).

    The month's partition holds every entity's rows, so every entity with rows in it (`entities_with_rows`)
    must allow it, under its own policy or the kind's default. Refused, with nothing removed, when: it was
    archived already, or has no partition; an entity with rows in it has no policy and there is no default
    (`retention_no_policy`), the month ended less than that entity's `keep_months` ago
    (`retention_too_recent`), or it is not closed for that entity (`retention_month_open`), each naming the
    entities (detail, and `entities` in the audited refusal); an
    audit entry of it is not sealed yet, or no signed digest follows its entries (the chain would not be
    provable from a signed digest once they are gone); or the pack does not verify. `pack` names a pack
    written earlier (by a run with `detach=False`, then copied to where archives are kept): that copy is
    what is verified and recorded. Steps audited: `retention.archived` (pack written), `retention.verified`,
    `partition.detached`, or `retention.refused` with the code.
    """
    month = _month(month)
    if kind not in TABLES:
        raise _refuse(kind, month, Codes.RETENTION_NO_POLICY, f"no retention policy for {kind!r}", actor)
    table = TABLES[kind]
    if PartitionArchive.objects.filter(table=table, month=month).exists():
        raise _refuse(kind, month, Codes.RETENTION_ALREADY_ARCHIVED, f"{kind} of {month:%Y-%m} were archived already", actor)
    if month not in audit.partitions_list(table):
        raise _refuse(kind, month, Codes.RETENTION_NO_PARTITION, f"{table} has no partition of {month:%Y-%m}", actor)
    default, own = retention_policies(kind)
    entities = entities_with_rows(kind, month)
    # Every entity with rows in the month must allow it; an empty partition answers to the default alone.
    governing = {code: own.get(code, default) for code in entities} or {"(default)": default}
    missing = sorted(code for code, policy in governing.items() if policy is None)
    if missing:
        raise _refuse(kind, month, Codes.RETENTION_NO_POLICY, f"no retention policy for {kind} of "
                      f"{', '.join(missing)} (nor a default)", actor, entities=missing)
    today = timezone.now().astimezone(datetime.UTC).date()
    kept = {code: audit.month_add(month, policy.keep_months + 1) for code, policy in governing.items()}
    recent = sorted(code for code, until in kept.items() if until > today)
    if recent:
        raise _refuse(kind, month, Codes.RETENTION_TOO_RECENT, f"{kind} of {month:%Y-%m} are kept for "
                      + ", ".join(f"{code} until {kept[code]} ({governing[code].keep_months} months after the month "
                                  "ends)" for code in recent), actor, entities=recent)
    still_open = open_entities(month, entities)
    if still_open:
        raise _refuse(kind, month, Codes.RETENTION_MONTH_OPEN, f"{month:%Y-%m} is open for {', '.join(still_open)}, "
                      f"which has {kind} in it: nothing is archived from an open month", actor, entities=still_open)

    chain = None
    if table == AUDIT_TABLE:
        audit.chain_seal()
        first_seq, last_seq, unsealed = _chain_bounds(month)
        if unsealed:
            raise _refuse(kind, month, Codes.RETENTION_UNSEALED, f"{unsealed} audit entries of {month:%Y-%m} are not "
                          "sealed yet", actor)
        resume = (AuditDigest.objects.filter(first_seq__gt=last_seq or 0).order_by("day").first())
        if resume is None:
            raise _refuse(kind, month, Codes.RETENTION_NO_DIGEST, "no signed digest follows the audit entries of "
                          f"{month:%Y-%m} yet: the chain would not be provable without them", actor)
        chain = {"first_seq": first_seq, "last_seq": last_seq, "resume_day": resume.day.isoformat(),
                 "resume_first_seq": resume.first_seq}

    rows = audit.partition_rows(table, month)
    location = Path((default.location if default else "") or settings.TIEOUT_RETENTION_DIR)
    if pack is None:
        location.mkdir(parents=True, exist_ok=True)
        path = location / pack_name(kind, month)
        manifest_sha = _write_pack(path, kind=kind, table=table, month=month, rows=rows, chain=chain)
        with transaction.atomic():
            audit.record(actor=actor, action="retention.archived", object_type="retention",
                         object_id=f"{kind}:{month:%Y-%m}",
                         after={"pack": path.name, "location": str(location), "rows": rows,
                                "manifest_sha256": manifest_sha, "chain": chain})
    else:
        path = Path(pack)
    pack_sha = ""
    if path.exists():
        with path.open("rb") as handle:
            pack_sha = hashlib.file_digest(handle, "sha256").hexdigest()
    problems = pack_problems(path, kind=kind, month=month, rows=rows)
    if problems:
        raise _refuse(kind, month, Codes.RETENTION_ARCHIVE_UNVERIFIED, f"the pack {path.name} does not verify: "
                      + "; ".join(problems[:5]), actor)
    resume_day = datetime.date.fromisoformat(chain["resume_day"]) if chain else None
    with transaction.atomic():
        audit.record(actor=actor, action="retention.verified", object_type="retention",
                     object_id=f"{kind}:{month:%Y-%m}", after={"pack": path.name, "pack_sha256": pack_sha,
                                                                "rows": rows})
    if detach:
        try:
            audit.partition_detach(table=table, month=month, rows=rows, pack_name=path.name,
                                   location=str(path.parent), pack_sha256=pack_sha, actor=actor,
                                   first_seq=chain["first_seq"] if chain else None,
                                   last_seq=chain["last_seq"] if chain else None, resume_day=resume_day)
        except ValueError as exc:  # rows written since the pack was made: archive again
            raise _refuse(kind, month, Codes.RETENTION_ARCHIVE_UNVERIFIED, str(exc), actor) from None
    return ArchiveOutcome(kind, month, path, pack_sha, rows, detach, resume_day)
