"""Monthly partitions of the large append-mostly tables (audit entries, receipts, events): made ahead of time by
beat (`partitions_ensure`), and detached and dropped one archived month at a time (`partition_detach`, called
by the portal's retention once the month's pack is signed and verified), each step audited."""
import datetime
import logging

from django.conf import settings
from django.db import DatabaseError, connection, transaction
from django.utils import timezone

from audit.models import PartitionArchive
from audit.services.entries import record

log = logging.getLogger(__name__)

# Each partitioned table and its partition key (migrations audit 0006, billing_sync 0013). The audit layer
# keeps the partitions of all three because it owns the chain the archives must keep provable; it touches
# the other tables only through this DDL, never their rows.
PARTITIONED = {"audit_auditentry": "at", "billing_sync_receipt": "received_at", "billing_sync_event": "received_at"}
# Any fixed 64-bit key: partition DDL one process at a time.
PARTITION_LOCK_KEY = 0x7061727469  # "parti"


def month_first(day: datetime.date) -> datetime.date:
    return day.replace(day=1)


def month_add(month: datetime.date, n: int) -> datetime.date:
    index = month.year * 12 + month.month - 1 + n
    return datetime.date(index // 12, index % 12 + 1, 1)


def partition_name(table: str, month: datetime.date) -> str:
    return f"{table}_p{month:%Y%m}"


def partitions_list(table: str) -> list[datetime.date]:
    """The months `table` has a partition of (attached), oldest first; the DEFAULT partition is not one."""
    with connection.cursor() as cursor:
        cursor.execute("""SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
                          WHERE i.inhparent = %s::regclass ORDER BY c.relname""", [table])
        names = [r[0] for r in cursor.fetchall()]
    prefix = f"{table}_p"
    return [datetime.date(int(n[-6:-2]), int(n[-2:]), 1) for n in names
            if n.startswith(prefix) and n[len(prefix):].isdigit()]


def partitions_ensure(*, months_ahead: int | None = None, today: datetime.date | None = None,
                      since: datetime.date | None = None, actor="system") -> list[str]:
    """Create the partitions of this month and the next `months_ahead` (TIEOUT_PARTITIONS_AHEAD) for every
    partitioned table that lacks them (from the month of `since` when given: history loaded later, such as
    a backfill); audited (`partitions.created`) when it made any. Idempotent.

    Made ahead so that rows never land in the DEFAULT partition: a month whose rows sit there can only get
    its partition after they were moved out, so it is skipped (logged and named in the audit entry as
    `blocked`) and the other months are still made.
    """
    months_ahead = settings.TIEOUT_PARTITIONS_AHEAD if months_ahead is None else months_ahead
    current = month_first(today or timezone.now().astimezone(datetime.UTC).date())
    first = month_first(min(since, current)) if since else current
    months = (current.year - first.year) * 12 + current.month - first.month + months_ahead
    created, blocked = [], []
    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [PARTITION_LOCK_KEY])
            for n in range(months + 1):
                for table in PARTITIONED:
                    month = month_add(first, n)
                    try:
                        with transaction.atomic():
                            cursor.execute("SELECT tieout_partition_create(%s, %s)", [table, month])
                            name = cursor.fetchone()[0]
                    except DatabaseError as exc:  # rows of that month in the DEFAULT partition
                        log.warning("partition not created", extra={"table": table, "month": str(month),
                                                                    "error": str(exc)})
                        blocked.append(partition_name(table, month))
                        continue
                    if name:
                        created.append(name)
        if created or blocked:
            record(actor=actor, action="partitions.created", object_type="partitions", object_id=f"{first:%Y-%m}",
                   after={"created": created, "blocked": blocked, "months_ahead": months_ahead})
    budget = partitions_lock_need()
    if not budget["enough"]:  # every month made adds to it: say so while there is time to restart PostgreSQL
        log.warning("PostgreSQL's max_locks_per_transaction is below what a worker transaction may lock",
                    extra=budget)
    return created


# A lock per relation and per lock mode: an unpruned statement on a partitioned table locks the table, every
# partition and every index of each; a worker's transaction reads, row-locks and updates events (three modes).
LOCK_MODES_PER_RELATION = 3
# The ordinary tables one processing or posting transaction touches (documents, journals, lines, outbox, the
# key tables, the exception queue...), measured at about 60 and rounded up.
ORDINARY_RELATIONS = 100


def partitions_lock_need() -> dict:
    """What PostgreSQL's lock table must hold for one worker transaction, against what it allows per session.

    A query on events, receipts or audit entries that cannot prune by month (by id, by document key: most of a
    worker's) locks every attached partition and each of its indexes, so the locks one transaction holds grow
    with every month kept. The shared lock table has `max_locks_per_transaction` × connections slots; when one
    transaction needs more than `max_locks_per_transaction`, enough concurrent ones exhaust it and PostgreSQL
    refuses work with "out of shared memory" (seen in bench/drain.py beside a test run). Returns `relations`
    (partitioned tables, partitions and their indexes), `need` (the locks one transaction may hold, every
    mode), `max_locks_per_transaction` and `enough`."""
    with connection.cursor() as cursor:
        # Before the migrations have made them there is nothing partitioned to count.
        cursor.execute("SELECT t FROM unnest(%s::text[]) AS t WHERE to_regclass(t) IS NOT NULL", [list(PARTITIONED)])
        tables = [row[0] for row in cursor.fetchall()]
        cursor.execute("""
            WITH rels AS (SELECT inhrelid AS oid FROM pg_inherits WHERE inhparent = ANY(%s::regclass[])
                          UNION ALL SELECT unnest(%s::regclass[])::oid)
            SELECT (SELECT count(*) FROM rels) + (SELECT count(*) FROM pg_index x JOIN rels r ON x.indrelid = r.oid),
                   current_setting('max_locks_per_transaction')::int""", [tables, tables])
        relations, allowed = cursor.fetchone()
    need = relations * LOCK_MODES_PER_RELATION + ORDINARY_RELATIONS
    return {"relations": relations, "need": need, "max_locks_per_transaction": allowed,
            "enough": relations == 0 or allowed >= need}


def tables_analyze(*, min_rows: int | None = None, fraction: float | None = None) -> list[str]:
    """ANALYZE each table of the schema (each partition of a partitioned one) that changed by at least `min_rows`
    rows and `fraction` of its rows since its statistics were last taken (TIEOUT_ANALYZE_MIN_ROWS,
    TIEOUT_ANALYZE_FRACTION); returns the tables analysed. Run by beat every half minute (`tables-analyze`).

    Autovacuum analyses a table once a tenth of it has changed and a minute has passed, so a month-end burst
    runs on the statistics of the quiet days before it. On the events partition the planner, told that hardly
    any event is accepted, read the (status, received_at) index entry by entry across the whole backlog
    (tests/billing_sync/test_ordering_plans.py; 16-30 ms a look-up at 200,000 accepted events): one of three
    causes of the 100,000-invoice drain's fall in bench/drain.py (README, Performance). On invoices and payments
    never analysed, a chunk's look-up of its documents by id read every document of the source system through
    another index (27-43 ms a chunk at 20,000 invoices). Statistics are not data: nothing is audited; each run
    is logged.
    """
    min_rows = settings.TIEOUT_ANALYZE_MIN_ROWS if min_rows is None else min_rows
    fraction = settings.TIEOUT_ANALYZE_FRACTION if fraction is None else fraction
    with connection.cursor() as cursor:
        # Tables holding rows (`r`): plain ones and partitions; a partitioned parent holds none of its own.
        cursor.execute("""
            SELECT s.relname FROM pg_stat_user_tables s JOIN pg_class c ON c.oid = s.relid
            WHERE c.relkind = 'r' AND s.schemaname = current_schema() AND s.n_mod_since_analyze >= %s
              AND s.n_mod_since_analyze >= %s * GREATEST(s.n_live_tup, 1)
            ORDER BY s.n_mod_since_analyze DESC""", [max(1, min_rows), fraction])
        names = [row[0] for row in cursor.fetchall()]
        for name in names:
            started = timezone.now()
            cursor.execute(f"ANALYZE {connection.ops.quote_name(name)}")
            log.info("table analysed: %s in %.0f ms", name, (timezone.now() - started).total_seconds() * 1000)
    return names


def partition_rows(table: str, month: datetime.date) -> int:
    with connection.cursor() as cursor:
        cursor.execute(f'SELECT count(*) FROM "{partition_name(table, month)}"')
        return cursor.fetchone()[0]


def partition_detach(*, table: str, month: datetime.date, rows: int, pack_name: str, location: str,
                     pack_sha256: str, actor, first_seq: int | None = None, last_seq: int | None = None,
                     resume_day: datetime.date | None = None) -> PartitionArchive:
    """Detach and drop `table`'s partition of `month`, whose `rows` rows the caller archived and verified
    (`pack_name` at `location`, SHA-256 `pack_sha256`); records where they went (`PartitionArchive`) and
    audits it (`partition.detached`), all in one transaction.

    Refuses (ValueError) when the partition holds another number of rows than the pack: rows written after
    the pack was made would be lost. The detach takes the table's ACCESS EXCLUSIVE lock for an instant.
    """
    if table not in PARTITIONED:
        raise ValueError(f"{table} is not partitioned")
    name = partition_name(table, month)
    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [PARTITION_LOCK_KEY])
            cursor.execute(f'LOCK TABLE "{table}" IN ACCESS EXCLUSIVE MODE')
            found = partition_rows(table, month)
            if found != rows:
                raise ValueError(f"{name} holds {found} rows, the archive {rows}: not detached")
            # Deferred foreign-key checks still pending on its rows (written in this transaction) run now:
            # PostgreSQL drops no table with trigger events pending.
            cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
            cursor.execute(f'ALTER TABLE "{table}" DETACH PARTITION "{name}"')
            cursor.execute(f'DROP TABLE "{name}"')
        archive = PartitionArchive.objects.create(
            table=table, month=month, partition=name, rows=rows, pack_name=pack_name, location=location,
            pack_sha256=pack_sha256, first_seq=first_seq, last_seq=last_seq, resume_day=resume_day,
            actor=str(actor))
        record(actor=actor, action="partition.detached", object_type="partition", object_id=name,
               after={"table": table, "month": f"{month:%Y-%m}", "rows": rows, "pack": pack_name,
                      "location": location, "pack_sha256": pack_sha256, "first_seq": first_seq,
                      "last_seq": last_seq, "resume_day": resume_day.isoformat() if resume_day else None})
    return archive


def chain_resume_day() -> datetime.date | None:
    """The day of the signed digest verification starts from once audit entries were archived, or None."""
    with connection.cursor() as cursor:  # a database migrated back before the table (audit's migration tests)
        cursor.execute("SELECT to_regclass('audit_partitionarchive') IS NOT NULL")
        if not cursor.fetchone()[0]:
            return None
    return (PartitionArchive.objects.filter(table="audit_auditentry", resume_day__isnull=False)
            .order_by("-resume_day").values_list("resume_day", flat=True).first())
