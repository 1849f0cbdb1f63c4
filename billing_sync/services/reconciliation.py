"""Reconciliation runs and their breaks: start a run (one running per entity, refused by the database), execute
it (`billing_sync.reconciliation`: open a break and its `reconciliation` exception per new discrepancy, update
the ones found again, resolve the ones it no longer finds within what it checked "resolved by run N", set the
marks whose status changed; a failed run is recorded `failed` and changes nothing else), and act on a break:
re-run for its object, re-post a journal the ERP lacks (look-up-before-send), raise an adjusting manual journal
(to approval), accept the difference with a reason (controllers); all audited, ARCHITECTURE.md has the notes."""
import datetime
import json
from decimal import Decimal

import structlog
from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.utils import timezone

from audit import services as audit
from billing_sync import tasks
from billing_sync.models import ReconciliationBreak, ReconciliationRun
from billing_sync.reconciliation import billing as billing_checks
from billing_sync.reconciliation import erp as erp_checks
from billing_sync.reconciliation.context import DOC_TYPES, context_for, month_bounds, subject_problem
from billing_sync.reconciliation.tables import scope_sql, temp_tables
from config import roles
from config.errors import ApiError, Codes, Conflict, NotFound, PermissionRefused
from exceptions_queue import services as queue
from ledger import connectors
from ledger import services as ledger
from ledger.models import Entity, Journal, Period

log = structlog.get_logger("tieout.reconciliation")
Code = ReconciliationBreak.Code
RUN_LOCK = "tieout.reconciliation.run"


# ------------------------------------------------------------------------------------------------ ranges
def default_range(entity: Entity, today: datetime.date | None = None) -> tuple[datetime.date, datetime.date]:
    """The range a scheduled run (and `manage.py reconcile` without --from/--to) covers: from the first day of
    the earliest open month among the last TIEOUT_RECONCILIATION_OPEN_MONTHS (a month without a closed
    period), or of the current month when every one of them is closed, to today."""
    today = today or timezone.localdate()
    months, first = [], today.replace(day=1)
    for _ in range(max(settings.TIEOUT_RECONCILIATION_OPEN_MONTHS, 1)):
        months.append(first)
        first = (first - datetime.timedelta(days=1)).replace(day=1)
    closed = set(Period.objects.filter(entity=entity, status=Period.Status.CLOSED).values_list("year", "month"))
    open_months = [m for m in months if (m.year, m.month) not in closed]
    return (min(open_months) if open_months else today.replace(day=1)), today


def _previous_start(entity: Entity) -> datetime.datetime | None:
    """When the entity's last finished range run started: an incremental run reads what changed since."""
    return (ReconciliationRun.objects.filter(entity=entity, subject="", status=ReconciliationRun.Status.FINISHED)
            .order_by("-started_at").values_list("started_at", flat=True).first())


def _executing(run_id: int) -> bool:
    """Whether some session is executing the run right now (it holds the run's advisory lock)."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_try_advisory_lock(hashtext(%s), %s)", [RUN_LOCK, run_id % 2_147_483_647])
        if not cursor.fetchone()[0]:
            return True
        cursor.execute("SELECT pg_advisory_unlock(hashtext(%s), %s)", [RUN_LOCK, run_id % 2_147_483_647])
    return False


def _abandon_stale(entity: Entity) -> None:
    """A run left `running` long ago by a worker that died blocks the entity: record it failed."""
    cutoff = timezone.now() - datetime.timedelta(seconds=settings.TIEOUT_RECONCILIATION_STALE_SECONDS)
    for run in ReconciliationRun.objects.select_for_update(skip_locked=True).filter(
            entity=entity, status=ReconciliationRun.Status.RUNNING, started_at__lt=cutoff):
        if not _executing(run.pk):
            _fail_locked(run, "abandoned: no worker finished the run", actor="system")


# ------------------------------------------------------------------------------------------------ runs
@transaction.atomic
def reconciliation_run_start(*, entity: Entity, date_from: datetime.date, date_to: datetime.date,
                             full: bool = False, actor, subject: str = "") -> ReconciliationRun:
    """Record a new run (status `running`); `reconciliation_run_execute` does the work.

    Refused with `reconciliation_running` (409) while another run of the entity is running (a partial unique
    index decides, whichever process asks), `invalid_request` (422) for a range that ends before it starts or
    a subject that names nothing a run can check. An incremental run (`full` False) remembers when the last
    finished range run started: it reads back only what the ERP changed since then.
    """
    if date_from > date_to:
        raise ApiError("the range ends before it starts", code=Codes.INVALID_REQUEST, status=422,
                       errors=[{"field": "to", "message": "Must be on or after from."}])
    problem = subject_problem(subject) if subject else None
    if problem:
        raise ApiError(problem, code=Codes.INVALID_REQUEST, status=422,
                       errors=[{"field": "subject", "message": problem}])
    _abandon_stale(entity)
    since = None if (full or subject) else _previous_start(entity)
    try:
        with transaction.atomic():
            run = ReconciliationRun.objects.create(entity=entity, date_from=date_from, date_to=date_to, full=full,
                                                   subject=subject, requested_by=audit.actor_label(actor),
                                                   erp_modified_since=since)
    except IntegrityError:
        running = ReconciliationRun.objects.filter(entity=entity, status=ReconciliationRun.Status.RUNNING).first()
        raise Conflict(f"run {running.pk if running else '?'} of {entity.code} is still running; try again when it "
                       "has finished", code=Codes.RECONCILIATION_RUNNING) from None
    audit.record(actor=actor, action="reconciliation.started", object_type="reconciliation_run", object_id=run.pk,
                 after=_run_snapshot(run))
    return run


def _run_snapshot(run: ReconciliationRun) -> dict:
    return {"entity": run.entity.code, "from": run.date_from, "to": run.date_to, "full": run.full,
            "subject": run.subject, "status": run.status, "erp_modified_since": run.erp_modified_since,
            "matched": run.matched, "breaks": run.breaks, "resolved": run.resolved, "erp_requests": run.erp_requests,
            "erp_documents": run.erp_documents, "error": run.error or None}


def reconciliation_run_execute(*, run_id, connector=None, progress=None) -> ReconciliationRun:
    """Execute a started run: the ERP read back, every check, breaks, exceptions and marks; finishes or fails it.

    Safe to call twice (a redelivered task): a run no longer `running`, or one another session is executing,
    is returned as it is. `connector` (any `ledger.connectors.base.Connector`) replaces the entity's own, e.g.
    in tests; `progress(step, count=None)` hears how far it got (the command's progress bar).
    """
    run = ReconciliationRun.objects.select_related("entity").get(pk=run_id)
    if run.status != ReconciliationRun.Status.RUNNING:
        return run
    key = [RUN_LOCK, run.pk % 2_147_483_647]
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_try_advisory_lock(hashtext(%s), %s)", key)
        if not cursor.fetchone()[0]:
            return run  # another worker has it
    # A second session sees only what is committed: checks run beside this one only when no outer transaction
    # holds uncommitted rows (the task and the command call this outside any).
    parallel = settings.TIEOUT_RECONCILIATION_PARALLEL and not connection.in_atomic_block
    try:
        connector = connector or connectors.get_connector(run.entity)
        with temp_tables():
            ctx = context_for(run)
            ctx.parallel = parallel
            ctx.erp_names = getattr(connector, "erp_account_names", True)
            documents = 0
            if ctx.plan.erp or ctx.plan.balance:
                documents = erp_checks.stage(ctx, connector, progress)
            with transaction.atomic():
                run = ReconciliationRun.objects.select_for_update(of=("self",)).select_related("entity").get(pk=run_id)
                if run.status != ReconciliationRun.Status.RUNNING:
                    return run
                # Set-based checks over a million rows sort and hash in the server: room to do it in memory
                # (bounded, server-side, for this transaction only) instead of spilling to disk.
                with connection.cursor() as cursor:
                    cursor.execute(f"SET LOCAL work_mem = '{billing_checks.WORK_MEM}'")
                billing_checks.check(ctx, progress)
                erp_checks.compare(ctx, progress)
                outcome = _apply(ctx, run, progress)
                run.status = ReconciliationRun.Status.FINISHED
                run.finished_at = timezone.now()
                run.matched = outcome["matched"]
                run.breaks = outcome["breaks"]
                run.resolved = outcome["resolved"]
                run.erp_requests = connector.requests_made
                run.erp_documents = documents
                run.save()
                audit.record(actor="system", action="reconciliation.finished", object_type="reconciliation_run",
                             object_id=run.pk, before={"status": "running"},
                             after={**_run_snapshot(run), "marks_changed": outcome["marks_changed"]})
    except Exception as exc:  # the run is recorded failed, whatever went wrong; nothing it found is kept
        if not isinstance(exc, connectors.base.ConnectorError):
            log.exception("reconciliation.run_failed", run=run_id)
        requests = getattr(connector, "requests_made", 0) if connector is not None else 0
        run = _fail(run_id, _error_text(exc), requests=requests)
    finally:
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_unlock(hashtext(%s), %s)", key)
    return run


def _error_text(exc: Exception) -> str:
    erp = getattr(exc, "erp_message", "")
    text = f"{type(exc).__name__}: {exc}"
    return f"{text} ({erp})" if erp and erp != str(exc) else text


def _fail(run_id, error: str, *, requests: int = 0) -> ReconciliationRun:
    with transaction.atomic():
        run = ReconciliationRun.objects.select_for_update(of=("self",)).select_related("entity").get(pk=run_id)
        if run.status == ReconciliationRun.Status.RUNNING:
            run.erp_requests = requests
            _fail_locked(run, error, actor="system")
    return run


def _fail_locked(run: ReconciliationRun, error: str, *, actor) -> None:
    run.status = ReconciliationRun.Status.FAILED
    run.finished_at = timezone.now()
    run.error = error[:4000]
    run.save()
    audit.record(actor=actor, action="reconciliation.failed", object_type="reconciliation_run", object_id=run.pk,
                 before={"status": "running"}, after=_run_snapshot(run))


def reconciliation_run(*, entity: Entity, date_from: datetime.date, date_to: datetime.date, full: bool = False,
                       actor, subject: str = "", connector=None, progress=None) -> ReconciliationRun:
    """Start a run and execute it here (the command, tests); the API and the schedule queue the execution."""
    run = reconciliation_run_start(entity=entity, date_from=date_from, date_to=date_to, full=full, actor=actor,
                                   subject=subject)
    return reconciliation_run_execute(run_id=run.pk, connector=connector, progress=progress)


def reconciliation_run_schedule(*, full: bool, actor="system") -> list[int]:
    """The beat's fan-out: start a run per entity over its open months (full or incremental) and queue it; an
    entity whose previous run is still running is skipped (its next tick catches up)."""
    started = []
    for entity in Entity.objects.order_by("code"):
        date_from, date_to = default_range(entity)
        try:
            with transaction.atomic():
                run = reconciliation_run_start(entity=entity, date_from=date_from, date_to=date_to, full=full,
                                               actor=actor)
                transaction.on_commit(lambda run_id=run.pk: _queue(run_id))
        except Conflict:
            log.info("reconciliation.skipped", entity=entity.code, reason="a run is still running")
            continue
        started.append(run.pk)
    return started


def _queue(run_id: int) -> None:
    try:
        tasks.reconcile.apply_async(args=[run_id], queue="reconciliation")
    except Exception as exc:  # broker down: the run stays `running` until it is abandoned and the next tick runs
        log.warning("reconciliation.queue_failed", run=run_id, error=str(exc))


def reconciliation_run_request(*, entity: Entity, date_from, date_to, full: bool, actor) -> ReconciliationRun:
    """A person asked for a run (the API): start it and queue its execution once the request commits."""
    with transaction.atomic():
        if roles.has_role(actor, *roles.STAFF) and not roles.may_see_entity(actor, entity.code):
            raise NotFound(f"no entity {entity.code}")
        run = reconciliation_run_start(entity=entity, date_from=date_from, date_to=date_to, full=full, actor=actor)
        transaction.on_commit(lambda: _queue(run.pk))
    return run


# ------------------------------------------------------------------------------------------------ breaks
def _fmt_lines(lines) -> str:
    return ", ".join(f"{account} Dr {v['debit']} Cr {v['credit']}" for account, v in sorted((lines or {}).items()))


def _message(row: dict) -> str:
    """What the break's exception says, in a finance person's words."""
    e, a, code = row["expected"], row["actual"], row["code"]
    doc, ref, journal = row["document"], row["erp_document_ref"], row["journal_id"]
    if code == Code.MISSING_JOURNAL:
        return f"{doc} has no {e.get('journal_kind')} journal in the ledger (its posting rule gives {e.get('amount')})"
    if code == Code.JOURNAL_AMOUNT_MISMATCH:
        return f"{doc}: its journals book {a.get('amount')}, its posting rule gives {e.get('amount')}"
    if code == Code.LEDGER_OPEN_AMOUNT_MISMATCH:
        if e.get("invoice") is False:
            return (f"{doc}: receivable balance {a.get('receivable_balance')} in the ledger for an invoice billing "
                    "does not have")
        return f"{doc}: open amount {e.get('open_amount')} in billing, {a.get('receivable_balance')} in the ledger"
    if code == Code.AR_CONTROL_MISMATCH:
        return (f"Receivable control account {row['account']} holds {a.get('balance')}; open invoices sum to "
                f"{e.get('amount')}")
    if code == Code.UNAPPLIED_CASH_MISMATCH:
        return (f"Unapplied cash account {row['account']} holds {a.get('balance')}; payments' unapplied amounts sum "
                f"to {e.get('amount')}")
    what = f"journal {journal}" if journal else "batch document"
    if code == Code.MISSING_IN_ERP:
        return f"The ERP has no document {ref} for {what}"
    if code == Code.ERP_DOCUMENT_CANCELLED:
        return f"ERP document {ref} of {what} is {a.get('status')}"
    if code == Code.ERP_AMOUNT_MISMATCH:
        return (f"ERP document {ref} differs from {what}: ledger {_fmt_lines(e.get('lines'))}; "
                f"ERP {_fmt_lines(a.get('lines'))}")
    if code == Code.ERP_DATE_MISMATCH:
        return f"ERP document {ref} is dated {a.get('posting_date')}, {what} {e.get('posting_date')}"
    if code == Code.UNEXPECTED_IN_ERP:
        if journal:
            return (f"ERP document {ref} is a second document for journal {journal} "
                    f"(which lives in {e.get('erp_document_ref')})")
        return f"ERP document {ref} carries our reference {a.get('our_ref')!r}, which no journal of ours has"
    if code == Code.ERP_BALANCE_MISMATCH:
        return (f"Account {row['account']} in {row['period']}: the ERP moved Dr {a.get('debit')} Cr {a.get('credit')}, "
                f"the ledger Dr {e.get('debit')} Cr {e.get('credit')}")
    return code


def _break_snapshot(brk: ReconciliationBreak) -> dict:
    return {"key": brk.key, "code": brk.code, "status": brk.status, "account": brk.account, "period": brk.period,
            "journal": str(brk.journal_id) if brk.journal_id else None, "erp_document_ref": brk.erp_document_ref,
            "document": brk.document, "expected": brk.expected, "actual": brk.actual,
            "exception": str(brk.exception_id) if brk.exception_id else None}


def break_subject(brk: ReconciliationBreak) -> str:
    """The subject a run about this break checks (the "re-run for this object" action)."""
    if brk.code in (Code.MISSING_JOURNAL, Code.JOURNAL_AMOUNT_MISMATCH, Code.LEDGER_OPEN_AMOUNT_MISMATCH):
        return brk.document
    if brk.code in (Code.AR_CONTROL_MISMATCH, Code.UNAPPLIED_CASH_MISMATCH):
        return f"account:{brk.account}"
    if brk.code == Code.ERP_BALANCE_MISMATCH:
        return f"account:{brk.account}:{brk.period}"
    if brk.code == Code.UNEXPECTED_IN_ERP or not brk.journal_id:
        return f"erp:{brk.erp_document_ref}"
    return f"journal:{brk.journal_id}"


FOUND_FIELDS = ("key", "code", "account", "period", "journal_id", "erp_document_ref", "document", "expected",
                "actual", "amount", "source_ref")


def _apply(ctx, run: ReconciliationRun, progress=None) -> dict:
    """Turn what the run found into breaks, exceptions and marks (inside the run's transaction)."""
    entity = run.entity
    actor = "system"
    now = timezone.now()
    resolution = f"resolved by run {run.pk}"
    with connection.cursor() as cursor:
        cursor.execute(f"UPDATE recon_found f SET scope = {scope_sql('f')}")
        cursor.execute("UPDATE recon_found SET key = code || '|' || %s || '|' || scope", [entity.code])
        cursor.execute("DELETE FROM recon_found a USING recon_found b WHERE a.key = b.key AND a.ctid > b.ctid")
        # A difference a controller accepted stays accepted while its figures stay the same.
        cursor.execute("""
            DELETE FROM recon_found f USING (
                SELECT DISTINCT ON (key) key, expected, actual, accepted_by FROM billing_sync_reconciliationbreak
                WHERE entity_id = %s AND key IN (SELECT key FROM recon_found) ORDER BY key, id DESC) last
            WHERE last.key = f.key AND last.accepted_by <> '' AND last.expected = f.expected
              AND last.actual = f.actual""", [entity.pk])
        # Found again: the open break saw this run (one statement, however many there are).
        cursor.execute("""
            UPDATE billing_sync_reconciliationbreak b SET last_seen_run_id = %s
            FROM recon_found f WHERE b.entity_id = %s AND b.status = 'open' AND b.key = f.key""",
                       [run.pk, entity.pk])
        cursor.execute("""
            SELECT b.id, f.expected, f.actual, f.amount FROM billing_sync_reconciliationbreak b
            JOIN recon_found f ON f.key = b.key
            WHERE b.entity_id = %s AND b.status = 'open' AND (b.expected <> f.expected OR b.actual <> f.actual)""",
                       [entity.pk])
        changed = [(pk, _json(expected), _json(actual), amount) for pk, expected, actual, amount in cursor.fetchall()]
        cursor.execute(f"""
            SELECT {", ".join("f." + name for name in FOUND_FIELDS)} FROM recon_found f
            WHERE NOT EXISTS (SELECT 1 FROM billing_sync_reconciliationbreak b
                              WHERE b.entity_id = %s AND b.status = 'open' AND b.key = f.key)
            ORDER BY f.code, f.key""", [entity.pk])
        new = [dict(zip(FOUND_FIELDS, row)) for row in cursor.fetchall()]
        for row in new:
            row["expected"], row["actual"] = _json(row["expected"]), _json(row["actual"])
        # Open breaks the run checked and did not find again. A billing ↔ ledger break's scope is its document:
        # checked when it is in recon_docs or marked `billing` in recon_checked (a million rows or more, so the
        # few open breaks are the hashed side of that join).
        cursor.execute(f"""
            WITH open AS MATERIALIZED (
                SELECT b.id, b.code, b.document, {scope_sql('b')} AS scope FROM billing_sync_reconciliationbreak b
                WHERE b.entity_id = %(entity)s AND b.status = 'open'
                  AND NOT EXISTS (SELECT 1 FROM recon_found f WHERE f.key = b.key)
            ), docs AS (
                SELECT id, document FROM open
                WHERE code IN ('missing_journal', 'journal_amount_mismatch', 'ledger_open_amount_mismatch')
            )
            SELECT id FROM open WHERE scope IN (SELECT scope FROM recon_scope)
            UNION SELECT o.id FROM docs o JOIN recon_checked c ON c.billing AND c.subject = o.document
            UNION SELECT o.id FROM docs o JOIN recon_docs d
                ON o.document = d.doc_type || ':' || d.source_system || ':' || d.doc_id
            ORDER BY 1""", {"entity": entity.pk})
        gone = [row[0] for row in cursor.fetchall()]
        cursor.execute("SELECT code, count(*) FROM recon_found GROUP BY code ORDER BY code")
        counts = {code: n for code, n in cursor.fetchall()}
    for break_id, expected, actual, amount in changed:
        brk = ReconciliationBreak.objects.select_for_update().get(pk=break_id)
        before = _break_snapshot(brk)
        brk.expected, brk.actual = expected, actual
        brk.save(update_fields=["expected", "actual"])
        audit.record(actor=actor, action="reconciliation_break.updated", object_type="reconciliation_break",
                     object_id=brk.pk, before=before, after={**_break_snapshot(brk), "run": run.pk})
        if brk.exception_id:
            row = {**{name: getattr(brk, name, None) for name in FOUND_FIELDS}, "journal_id": brk.journal_id}
            queue.exception_update_for_reconciliation(exception_id=brk.exception_id, message=_message(row),
                                                      amount=_amount(amount), actor=actor)
    for row in new:
        brk = ReconciliationBreak.objects.create(
            key=row["key"], code=row["code"], entity=entity, account=row["account"], period=row["period"],
            journal_id=row["journal_id"], erp_document_ref=row["erp_document_ref"] or "", document=row["document"],
            expected=row["expected"], actual=row["actual"], opened_by_run=run, last_seen_run=run, opened_at=now)
        exc = queue.exception_open_for_reconciliation(
            entity_code=entity.code, code=row["code"], message=_message(row), amount=_amount(row["amount"]),
            source_ref=row["source_ref"] or row["document"] or row["erp_document_ref"] or "", actor=actor)
        brk.exception = exc
        brk.save(update_fields=["exception"])
        audit.record(actor=actor, action="reconciliation_break.opened", object_type="reconciliation_break",
                     object_id=brk.pk, after={**_break_snapshot(brk), "run": run.pk})
    resolved_subjects = []
    for break_id in gone:
        brk = ReconciliationBreak.objects.select_for_update().get(pk=break_id)
        _resolve_break(brk, resolution=resolution, actor=actor, run=run)
        resolved_subjects += _subjects_of(brk)
    if progress:
        progress("breaks")
    marks = _mark(entity, run, extra_subjects=resolved_subjects)
    if progress:
        progress("marks")
    return {"matched": marks["matched"], "breaks": counts, "resolved": len(gone), "marks_changed": marks["changed"]}


def _json(value):
    """A jsonb column as a raw cursor returns it (Django leaves its decoding to JSONField): decoded."""
    return json.loads(value) if isinstance(value, str) else value


def _amount(value) -> Decimal | None:
    return None if value is None else Decimal(value)


def _subjects_of(brk: ReconciliationBreak) -> list[str]:
    """The marks a break holds at `break`: its document and journal, or for a batch document's break every journal
    the batch carries and their documents."""
    out = [brk.document] if brk.document else []
    if brk.journal_id:
        out.append(f"journal:{brk.journal_id}")
    elif brk.erp_document_ref and brk.code in BATCH_CODES:
        with connection.cursor() as cursor:
            cursor.execute(f"""
                SELECT 'journal:' || j.id::text, {erp_checks.DOC_EXPR} FROM ledger_journal j
                JOIN ledger_erpbatch eb ON eb.id = j.erp_batch_id
                WHERE eb.entity_id = %s AND eb.erp_document_ref = %s""", [brk.entity_id, brk.erp_document_ref])
            for journal, document in cursor.fetchall():
                out += [journal] + ([document] if document else [])
    return out


def _resolve_break(brk: ReconciliationBreak, *, resolution: str, actor, run: ReconciliationRun | None = None,
                   accepted_by: str = "") -> None:
    before = _break_snapshot(brk)
    brk.status = ReconciliationBreak.Status.RESOLVED
    brk.resolved_at = timezone.now()
    brk.resolved_by = audit.actor_label(actor)
    brk.resolution = resolution
    brk.resolved_by_run = run
    brk.accepted_by = accepted_by
    brk.save(update_fields=["status", "resolved_at", "resolved_by", "resolution", "resolved_by_run", "accepted_by"])
    audit.record(actor=actor, action="reconciliation_break.accepted" if accepted_by else "reconciliation_break.resolved",
                 object_type="reconciliation_break", object_id=brk.pk, before=before,
                 after={**_break_snapshot(brk), "resolution": resolution, "run": run.pk if run else None})
    if brk.exception_id:
        queue.exception_resolve_for_reconciliation(exception_id=brk.exception_id, resolution=resolution, actor=actor)


# The breaks of a batch document (no journal of their own): they hold every journal the batch carries.
BATCH_CODES = (Code.MISSING_IN_ERP, Code.ERP_DOCUMENT_CANCELLED, Code.ERP_AMOUNT_MISMATCH, Code.ERP_DATE_MISMATCH)
# The subjects with an open break: a document or journal it names, and the journals a batch document carries with
# their documents (a payment posted in a batch whose ERP document was edited is as broken as one posted alone).
BROKEN_SQL = f"""
SELECT document FROM billing_sync_reconciliationbreak WHERE entity_id = %(entity)s AND status = 'open' AND document <> ''
UNION SELECT 'journal:' || journal_id::text FROM billing_sync_reconciliationbreak
    WHERE entity_id = %(entity)s AND status = 'open' AND journal_id IS NOT NULL
UNION SELECT unnest(ARRAY['journal:' || j.id::text, {erp_checks.DOC_EXPR}]) FROM billing_sync_reconciliationbreak b
    JOIN ledger_erpbatch eb ON eb.entity_id = b.entity_id AND eb.erp_document_ref = b.erp_document_ref
    JOIN ledger_journal j ON j.erp_batch_id = eb.id
    WHERE b.entity_id = %(entity)s AND b.status = 'open' AND b.journal_id IS NULL AND b.erp_document_ref <> ''
      AND b.code IN ({", ".join(f"'{code}'" for code in BATCH_CODES)})
"""

# The marks of what the run checked, in one statement: each distinct subject (recon_docs' are distinct already:
# only the others, usually few, are made distinct, so a million documents are not hashed once more) with its
# status now and its mark's status before (one join with the marks), then an UPDATE of the marks whose status changed (by key: few) and a
# plain INSERT of the new ones, sorted by key so that a first run's million marks append to the key's index
# instead of landing all over it (data-modifying CTEs share one snapshot, so the two never meet).
MARKS_SQL = f"""
WITH broken AS ({BROKEN_SQL}),
status AS MATERIALIZED (
    SELECT c.subject, CASE WHEN x.document IS NULL THEN 'matched' ELSE 'break' END AS status, m.status AS before
    FROM (SELECT doc_type || ':' || source_system || ':' || doc_id AS subject FROM recon_docs
          UNION ALL (SELECT subject FROM recon_checked WHERE subject <> ''
                     EXCEPT SELECT c.subject FROM recon_docs d
                     JOIN recon_checked c ON c.subject = d.doc_type || ':' || d.source_system || ':' || d.doc_id)) c
    LEFT JOIN broken x ON x.document = c.subject
    LEFT JOIN billing_sync_reconciliationmark m ON m.subject = c.subject
), changed AS (
    UPDATE billing_sync_reconciliationmark m SET status = s.status, checked_at = %(now)s, run_id = %(run)s,
        entity_id = %(entity)s
    FROM (SELECT subject, status FROM status WHERE before <> status) s WHERE m.subject = s.subject
    RETURNING 1
), added AS (
    INSERT INTO billing_sync_reconciliationmark (subject, entity_id, status, checked_at, run_id)
    SELECT subject, %(entity)s, status, %(now)s, %(run)s FROM status WHERE before IS NULL ORDER BY subject
    RETURNING 1
)
SELECT count(*) FILTER (WHERE status = 'matched'), count(*) FILTER (WHERE status = 'break'),
       (SELECT count(*) FROM changed) + (SELECT count(*) FROM added)
FROM status
"""


def _mark(entity: Entity, run: ReconciliationRun, *, extra_subjects=()) -> dict:
    """Set the marks of what the run checked (only those whose status changed, or new, are written)."""
    with connection.cursor() as cursor:
        cursor.execute("""INSERT INTO recon_checked (subject)
                          SELECT document FROM recon_found WHERE document <> ''
                          UNION ALL SELECT 'journal:' || journal_id::text FROM recon_found
                          WHERE journal_id IS NOT NULL""")
        if extra_subjects:
            cursor.executemany("INSERT INTO recon_checked (subject) VALUES (%s)", [(s,) for s in extra_subjects])
        cursor.execute("ANALYZE recon_checked")  # its size decides which side of MARKS_SQL's joins is hashed
        cursor.execute(MARKS_SQL, {"entity": entity.pk, "now": timezone.now(), "run": run.pk})
        matched, broken, changed = cursor.fetchone()
    return {"matched": matched, "break": broken, "changed": changed}


def _remark(brk: ReconciliationBreak) -> None:
    """After a break was resolved outside a run: its objects are matched unless another break is open on them."""
    subjects = _subjects_of(brk)
    if not subjects:
        return
    with connection.cursor() as cursor:
        cursor.execute(f"""
            WITH broken AS ({BROKEN_SQL})
            UPDATE billing_sync_reconciliationmark m SET status = 'matched', checked_at = %(now)s
            WHERE m.subject = ANY(%(subjects)s) AND m.status = 'break'
              AND NOT EXISTS (SELECT 1 FROM broken x WHERE x.document = m.subject)""",
                       {"entity": brk.entity_id, "now": timezone.now(), "subjects": subjects})


# ------------------------------------------------------------------------------------------------ actions
def _break_for(break_id, actor, *, allowed=roles.WORKERS, lock=True) -> ReconciliationBreak:
    """The break, for an action by `actor`: people act only on their entities' breaks, with a role that may."""
    qs = ReconciliationBreak.objects.select_related("entity")
    brk = (qs.select_for_update(of=("self",)) if lock else qs).filter(pk=break_id).first()
    if brk is None:
        raise NotFound(f"no reconciliation break {break_id}")
    if getattr(actor, "is_authenticated", False):
        if not roles.may_see_entity(actor, brk.entity.code):
            raise NotFound(f"no reconciliation break {break_id}")
        if not roles.has_role(actor, *allowed):
            raise PermissionRefused("your role may not do this to a reconciliation break")
    if brk.status != ReconciliationBreak.Status.OPEN:
        raise Conflict(f"break {brk.pk} is resolved ({brk.resolution})", code=Codes.BREAK_RESOLVED)
    return brk


def _rerun_range(brk: ReconciliationBreak) -> tuple[datetime.date, datetime.date]:
    if brk.period:
        first = datetime.date.fromisoformat(f"{brk.period}-01")
        return month_bounds(first, first)
    run = brk.last_seen_run
    return run.date_from, run.date_to


@transaction.atomic
def reconciliation_break_rerun(*, break_id, actor) -> ReconciliationRun:
    """Re-run the reconciliation for the break's object (its document, journal, ERP document, account or
    account-month); the run executes after commit. A run that finds it matched resolves it."""
    brk = _break_for(break_id, actor)
    date_from, date_to = _rerun_range(brk)
    run = reconciliation_run_start(entity=brk.entity, date_from=date_from, date_to=date_to, actor=actor,
                                   subject=break_subject(brk))
    audit.record(actor=actor, action="reconciliation_break.rerun", object_type="reconciliation_break",
                 object_id=brk.pk, after={"run": run.pk, "subject": run.subject})
    transaction.on_commit(lambda: _queue(run.pk))
    return run


def reconciliation_break_repost(*, break_id, actor) -> ReconciliationRun:
    """Send the journal of a `missing_in_erp` or `erp_document_cancelled` break to the ERP again.

    Through the ledger's look-up-before-send (`journal_repost`): a live ERP document carrying the journal's
    reference is only linked, never duplicated. Then a run for the journal is queued: finding it matched
    resolves the break. Refused with `break_action_not_applicable` for other breaks and batch documents.
    """
    with transaction.atomic():
        brk = _break_for(break_id, actor)
        if brk.code not in (Code.MISSING_IN_ERP, Code.ERP_DOCUMENT_CANCELLED) or not brk.journal_id:
            raise Conflict(f"break {brk.pk} ({brk.code}) is not about a journal the ERP does not have",
                           code=Codes.BREAK_ACTION_NOT_APPLICABLE)
        journal_id = brk.journal_id
    # The ERP is called outside any transaction (the ledger records the outcome in its own).
    result = ledger.journal_repost(journal_id=journal_id, actor=actor, reason=f"reconciliation break {break_id}")
    with transaction.atomic():
        brk = _break_for(break_id, actor)
        audit.record(actor=actor, action="reconciliation_break.reposted", object_type="reconciliation_break",
                     object_id=brk.pk, after={"journal": str(journal_id), "erp_document_ref": result.erp_document_ref,
                                              "linked": result.already_existed})
        date_from, date_to = _rerun_range(brk)
        run = reconciliation_run_start(entity=brk.entity, date_from=date_from, date_to=date_to, actor=actor,
                                       subject=f"journal:{journal_id}")
        transaction.on_commit(lambda: _queue(run.pk))
    return run


@transaction.atomic
def reconciliation_break_adjust(*, break_id, accounting_date: datetime.date, lines, description: str, user,
                                request_key: str | None = None) -> Journal:
    """Raise an adjusting manual journal for the break (the queue's manual journal: checked, and waiting for
    approval under the entity's policy), linked to the break. The break stays open until a run finds the
    object matched. The same request (or the break itself, without a key) never raises two."""
    brk = _break_for(break_id, user)
    journal = queue.manual_journal_create(
        entity=brk.entity, accounting_date=accounting_date, lines=lines, description=description, user=user,
        reason=f"Adjusts reconciliation break {brk.pk} ({brk.code}): {description}",
        request_key=request_key or f"reconciliation-break-{brk.pk}")
    if brk.adjusting_journal_id != journal.pk:
        before = _break_snapshot(brk)
        brk.adjusting_journal = journal
        brk.save(update_fields=["adjusting_journal"])
        audit.record(actor=user, action="reconciliation_break.adjusted", object_type="reconciliation_break",
                     object_id=brk.pk, before=before,
                     after={**_break_snapshot(brk), "adjusting_journal": str(journal.pk)})
    return journal


@transaction.atomic
def reconciliation_break_accept(*, break_id, reason: str, user) -> ReconciliationBreak:
    """A controller accepts the difference, with a reason: the break and its exception are resolved, and a later
    run that finds the same figures for the same key does not open it again (other figures open a new one)."""
    reason = (reason or "").strip()
    if not reason:
        raise ApiError("a reason is required to accept a difference", code=Codes.INVALID_REQUEST, status=422,
                       errors=[{"field": "reason", "message": "This field is required."}])
    brk = _break_for(break_id, user, allowed=roles.DECIDERS)
    label = audit.actor_label(user)
    _resolve_break(brk, resolution=f"accepted by {label}: {reason}", actor=user, accepted_by=label)
    _remark(brk)
    return brk


def reconciliation_breaks_resolve_for_exception(*, exception, actor) -> int:
    """A break's exception was resolved in the queue by a person: the break is resolved with it (a later run that
    still finds the difference opens a new one)."""
    count = 0
    for brk in ReconciliationBreak.objects.select_for_update().filter(exception_id=exception.pk,
                                                                      status=ReconciliationBreak.Status.OPEN):
        _resolve_break(brk, resolution=f"resolved in the exception queue: {exception.resolution}", actor=actor)
        _remark(brk)
        count += 1
    return count


def reconciliation_exception_retry(*, exception, actor) -> None:
    """The queue's retry of a reconciliation exception: re-run the reconciliation for its break's object."""
    brk = ReconciliationBreak.objects.filter(exception_id=exception.pk, status=ReconciliationBreak.Status.OPEN).first()
    if brk is not None:
        reconciliation_break_rerun(break_id=brk.pk, actor=actor)


__all__ = ["DOC_TYPES", "break_subject", "default_range", "reconciliation_break_accept", "reconciliation_break_adjust",
           "reconciliation_break_repost", "reconciliation_break_rerun", "reconciliation_breaks_resolve_for_exception",
           "reconciliation_exception_retry", "reconciliation_run", "reconciliation_run_execute",
           "reconciliation_run_request", "reconciliation_run_schedule", "reconciliation_run_start"]
