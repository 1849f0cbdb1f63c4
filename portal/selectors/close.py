"""The period close's checks, live, per entity and month: every event of the month processed, every journal
posted, no approval pending and no exception open on its documents, a full reconciliation run that started
after the month's last posting with no open break dated in it, and an audit chain verified since then. Each
check has a stable id, a title, `ok`, a count and a detail, the link of the filtered page that lists what
fails and (for one month) the first few failing objects with their own links. Read-only; every query is
bounded by the entity and the months asked for, grouped by month (set-based, not one query per month). A
document's date is the accounting date its journals carry; for an event not booked yet, the date the
posting rules would give it (POSTING_RULES.md: `issue_date` for invoices, the date of `received_at` for
payments, the date of `occurred_at` otherwise, each as the source wrote it; an invoice amendment touches both
its issue month and the month of `occurred_at`)."""
from __future__ import annotations

import datetime
from urllib.parse import urlencode

from django.db import connection
from django.urls import reverse
from django.utils import timezone

from audit.models import AuditCheck
from billing_sync import selectors as billing_selectors
from config.errors import Codes
from exceptions_queue.models import Approval, ExceptionRecord
from ledger.models import Entity, Period

ITEMS = 20  # failing objects listed per check on a month's page
UNPOSTED = ("pending_approval", "ready", "posting", "failed")
UNPROCESSED = ("accepted", "exception")
PERIOD_KINDS = (Approval.Kind.PERIOD_CLOSE, Approval.Kind.PERIOD_REOPEN)

# (id, title): the ids are stable (API, stored close records); the order is the page's.
CHECKS = (
    ("events_processed", "Every event of the month is processed"),
    ("journals_posted", "Every journal of the month is posted"),
    ("approvals_decided", "No approval is pending for a document of the month"),
    ("exceptions_resolved", "No exception is open on a document of the month"),
    ("reconciliation_run", "A full reconciliation ran after the month's last posting"),
    ("reconciliation_breaks", "No reconciliation break is open in the month"),
    ("audit_chain_verified", "The audit chain is verified since the month's last posting"),
)
TITLES = dict(CHECKS)
# Column headings of the overview.
SHORT = {"events_processed": "Events", "journals_posted": "Journals", "approvals_decided": "Approvals",
         "exceptions_resolved": "Exceptions", "reconciliation_run": "Reconciled", "reconciliation_breaks": "Breaks",
         "audit_chain_verified": "Audit chain"}

# Events not turned into journals yet: accepted (waiting for a worker, or held behind an earlier one) or
# stuck in the exception queue (both a small part of the table: the pending events' index), one row per date
# their documents have (see the module's docstring) inside the months asked for. The dates are the payload's
# text, cast only when well-formed (a CASE, so that no malformed text is ever cast).
_EVENTS_CTE = r"""
ev AS (
    SELECT s.id, s.event_id, s.type, s.status, s.received_at, s.day FROM (
        SELECT t.*, CASE WHEN t.txt ~ '^\d{4}-\d{2}-\d{2}$' THEN t.txt::date END AS day FROM (
            SELECT e.id, e.event_id, e.type, e.status, e.received_at, unnest(ARRAY[
                CASE WHEN e.type IN ('invoice.issued', 'invoice.amended') THEN e.payload->'data'->>'issue_date' END,
                CASE WHEN e.type = 'payment.received' THEN left(e.payload->'data'->>'received_at', 10) END,
                CASE WHEN e.type NOT IN ('invoice.issued', 'payment.received') THEN left(e.payload->>'occurred_at', 10)
                END]) AS txt
            FROM billing_sync_event e
            WHERE e.entity_code = %(code)s AND e.status IN ('accepted', 'exception')
        ) t
    ) s
    WHERE s.day BETWEEN %(first)s AND %(last)s
)"""

# Every journal of the months, by month and status: the unposted ones and the last posting.
_JOURNALS_SQL = """
SELECT date_trunc('month', j.accounting_date)::date, j.status, count(*), max(j.posted_at)
FROM ledger_journal j
WHERE j.entity_id = %(entity)s AND j.accounting_date BETWEEN %(first)s AND %(last)s
  AND j.status IN ('pending_approval', 'ready', 'posting', 'failed', 'posted')
GROUP BY 1, 2
"""
_JOURNAL_ITEMS_SQL = """
SELECT j.id, j.kind, j.status, j.document_id, j.accounting_date FROM ledger_journal j
WHERE j.entity_id = %(entity)s AND j.accounting_date BETWEEN %(first)s AND %(last)s
  AND j.status IN ('pending_approval', 'ready', 'posting', 'failed')
ORDER BY j.accounting_date, j.created_at LIMIT %(limit)s
"""

# Pending approvals of journals dated in the months (a period close's own request has no journal).
_APPROVALS_SQL = """
SELECT date_trunc('month', j.accounting_date)::date, a.id, a.kind, a.document_id, a.created_at
FROM exceptions_queue_approval a JOIN ledger_journal j ON j.id = a.journal_id
WHERE a.status = 'pending' AND a.entity_id = %(entity)s AND j.accounting_date BETWEEN %(first)s AND %(last)s
ORDER BY a.created_at, a.id
"""

# Unresolved exceptions (a small part of the table: exception_unresolved_idx) on the month's documents. An
# event with an open exception is in status `exception` (its status is derived so), or `accepted` again when
# woken: so those about events are the ones on the events above, dated as they are (an event's journals carry
# its documents' dates). Those about a journal alone (a manual journal's posting) take the journal's date.
# Reconciliation breaks have their own check; Tieout's own alarms (audit) too.
_EXCEPTIONS_CTE = _EVENTS_CTE + r""",
xd AS (
    SELECT x.id, x.code, x.source_ref, x.created_at, ev.day
    FROM ev CROSS JOIN LATERAL (  -- one probe of the one-open-exception-per-event index per event
        SELECT x.id, x.code, x.source_ref, x.created_at FROM exceptions_queue_exceptionrecord x
        WHERE x.event_id = ev.id AND x.status <> 'resolved' AND x.process NOT IN ('reconciliation', 'system')
    ) x
    UNION ALL
    SELECT x.id, x.code, x.source_ref, x.created_at, j.accounting_date
    FROM exceptions_queue_exceptionrecord x JOIN ledger_journal j ON j.id = x.journal_id
    WHERE x.status <> 'resolved' AND x.event_id IS NULL AND x.entity_code = %(code)s
      AND x.process NOT IN ('reconciliation', 'system') AND j.accounting_date BETWEEN %(first)s AND %(last)s
)"""
# Both checks from one reading of the events (the CTE is computed once): counts by month and status (events)
# or code (exceptions); and, for one month's page, the first few of each.
_EVENTS_EXCEPTIONS_SQL = "WITH " + _EXCEPTIONS_CTE + """
SELECT 'event', date_trunc('month', ev.day)::date, ev.status, count(DISTINCT ev.id) FROM ev GROUP BY 2, 3
UNION ALL
SELECT 'exception', date_trunc('month', xd.day)::date, xd.code, count(DISTINCT xd.id) FROM xd GROUP BY 2, 3
"""
_EVENTS_EXCEPTIONS_ITEMS_SQL = "WITH " + _EXCEPTIONS_CTE + """
(SELECT DISTINCT 'event', ev.id, ev.event_id, ev.type, ev.status, ev.received_at FROM ev
 ORDER BY ev.received_at, ev.id LIMIT %(limit)s)
UNION ALL
(SELECT DISTINCT 'exception', xd.id, xd.code, xd.source_ref, '', xd.created_at FROM xd
 ORDER BY xd.created_at, xd.id LIMIT %(limit)s)
"""


def month_bounds(year: int, month: int) -> tuple[datetime.date, datetime.date]:
    first = datetime.date(year, month, 1)
    return first, _next_month(first) - datetime.timedelta(days=1)


def _next_month(day: datetime.date) -> datetime.date:
    return datetime.date(day.year + day.month // 12, day.month % 12 + 1, 1)


def default_months(today: datetime.date | None = None, count: int = 7) -> list[tuple[int, int]]:
    """The current month and the `count - 1` before it, newest first."""
    today = today or timezone.now().astimezone(datetime.UTC).date()
    year, month = today.year, today.month
    out = []
    for _ in range(count):
        out.append((year, month))
        year, month = (year, month - 1) if month > 1 else (year - 1, 12)
    return out


def parse_month(text: str) -> tuple[int, int] | None:
    """(year, month) from YYYY-MM, or None."""
    try:
        year, month = (int(part) for part in str(text).split("-"))
        datetime.date(year, month, 1)
    except (TypeError, ValueError):
        return None
    return (year, month) if len(str(text)) == 7 else None


def subject_of(entity_code: str, year: int, month: int) -> str:
    """The subject of a period's close and reopen approvals."""
    return f"period:{entity_code}:{year}-{month:02d}"


def _rows(sql: str, params: dict) -> list[tuple]:
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchall()


def _month_of(day: datetime.date) -> tuple[int, int]:
    return day.year, day.month


def _plural(n: int, word: str, plural: str | None = None) -> str:
    return f"{n:,} {word if n == 1 else (plural or word + 's')}"


def _at(value: datetime.datetime | None) -> str:
    return value.astimezone(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC") if value else "—"


# Links to the pages that list what fails ---------------------------------------------------------------
def _admin(name: str, **params) -> str:
    return f"{reverse(f'admin:{name}')}?{urlencode(params)}"


def _queue(**params) -> str:
    return f"{reverse('web-exception-list')}?{urlencode(params)}"


def _approvals(**params) -> str:
    return f"{reverse('web-approvals')}?{urlencode(params)}"


def reconciliation_breaks_url(entity_code: str) -> str:
    """Where the entity's open breaks are worked: the queue's reconciliation exceptions."""
    return _queue(status="unresolved", entity=entity_code, process="reconciliation")


def _check(check_id: str, ok: bool, count: int, detail: str, link: str | None, items=None) -> dict:
    out = {"check": check_id, "title": TITLES[check_id], "ok": ok, "count": count, "detail": detail, "link": link,
           "short": SHORT[check_id]}
    if items is not None:
        out["items"] = items
    return out


# The checks ------------------------------------------------------------------------------------------
def checks_by_month(entity: Entity, months, *, items: bool = False) -> dict[tuple[int, int], list[dict]]:
    """Every close check of `entity` for each of `months` ((year, month) pairs), read now.

    With `items`, each check also lists (as `items`: [{label, url}]) the first ITEMS failing objects: for the
    one month a page shows, not for an overview of many.
    """
    months = sorted(set(months))
    if not months:
        return {}
    first, last = month_bounds(*months[0])[0], month_bounds(*months[-1])[1]
    params = {"entity": entity.pk, "code": entity.code, "first": first, "last": last, "limit": ITEMS}

    events: dict = {}
    exceptions: dict = {}
    for what, start, key, count in _rows(_EVENTS_EXCEPTIONS_SQL, params):
        (events if what == "event" else exceptions).setdefault(_month_of(start), {})[key] = count
    journals: dict = {}
    last_posted: dict = {}
    for start, status, count, posted in _rows(_JOURNALS_SQL, params):
        if status == "posted":
            last_posted[_month_of(start)] = posted
        else:
            journals.setdefault(_month_of(start), {})[status] = count
    approvals: dict = {}
    for start, approval_id, kind, document_id, created_at in _rows(_APPROVALS_SQL, params):
        approvals.setdefault(_month_of(start), []).append((approval_id, kind, document_id))
    reconciliation = billing_selectors.reconciliation_close_status(entity=entity, months=months)
    audit_check = AuditCheck.objects.order_by("-at", "-id").values("at", "ok", "problem", "to_seq").first()
    audit_alarm = ExceptionRecord.objects.filter(code=Codes.AUDIT_CHAIN_BROKEN).exclude(
        status=ExceptionRecord.Status.RESOLVED).order_by("created_at").values_list("pk", flat=True).first()

    out = {}
    for year, month in months:
        key = (year, month)
        m_first, m_last = month_bounds(year, month)
        month_params = dict(params, first=m_first, last=m_last)
        period = f"{year}-{month:02d}"
        posted_at = last_posted.get(key)
        listed = _event_exception_items(month_params) if items else {"event": None, "exception": None}
        out[key] = [
            _events_check(entity, events.get(key, {}), listed["event"]),
            _journals_check(entity, journals.get(key, {}), m_first, m_last,
                            _journal_items(month_params) if items else None),
            _approvals_check(entity, period, approvals.get(key, []), items),
            _exceptions_check(entity, exceptions.get(key, {}), listed["exception"]),
            _run_check(reconciliation[key]["run"], posted_at),
            _breaks_check(entity, reconciliation[key], items),
            _audit_check(audit_check, audit_alarm, posted_at),
        ]
    return out


def checks(entity: Entity, year: int, month: int, *, items: bool = False) -> list[dict]:
    """The close checks of one month of `entity`, read now."""
    return checks_by_month(entity, [(year, month)], items=items)[(year, month)]


def all_ok(result: list[dict]) -> bool:
    return all(c["ok"] for c in result)


def stored(result: list[dict]) -> list[dict]:
    """The checks as a close records them (Period.close_checks): no links or item lists, which age."""
    return [{"check": c["check"], "title": c["title"], "ok": c["ok"], "count": c["count"], "detail": c["detail"]}
            for c in result]


def _event_exception_items(params) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {"event": [], "exception": []}
    for what, pk, first, second, status, _at in _rows(_EVENTS_EXCEPTIONS_ITEMS_SQL, params):
        if what == "event":  # first: the source's event id, second: its type
            out["event"].append({"label": f"{first} ({second}, {status})",
                                 "url": reverse("web-trace-event", args=[pk])})
        else:  # first: the code, second: the source document
            out["exception"].append({"label": f"{first} {second}".strip(),
                                     "url": reverse("web-exception-detail", args=[pk])})
    return out


def _journal_items(params) -> list[dict]:
    return [{"label": f"{kind} {document_id or pk} dated {day:%Y-%m-%d} ({status})",
             "url": reverse("web-trace-journal", args=[pk])}
            for pk, kind, status, document_id, day in _rows(_JOURNAL_ITEMS_SQL, params)]


def _events_check(entity, by_status: dict, items) -> dict:
    accepted, stuck = by_status.get("accepted", 0), by_status.get("exception", 0)
    count = accepted + stuck
    if not count:
        detail = "No event dated in the month is waiting to be processed or stuck in the exception queue."
    else:
        parts = [f"{accepted:,} accepted, not processed yet" if accepted else "",
                 f"{stuck:,} in the exception queue" if stuck else ""]
        detail = f"{_plural(count, 'event')} of the month not turned into journals: " + "; ".join(p for p in parts if p)
    link = _admin("billing_sync_event_changelist", entity_code=entity.code, status__in=",".join(UNPROCESSED))
    return _check("events_processed", not count, count, detail, link, items)


def _journals_check(entity, by_status: dict, first, last, items) -> dict:
    count = sum(by_status.values())
    if not count:
        detail = "Every journal dated in the month is posted to the ERP."
    else:
        detail = f"{_plural(count, 'journal')} dated in the month not posted: " + ", ".join(
            f"{by_status[s]:,} {s.replace('_', ' ')}" for s in UNPOSTED if by_status.get(s))
    link = _admin("ledger_journal_changelist", entity__id__exact=entity.pk, unposted="yes",
                  accounting_date__gte=first.isoformat(), accounting_date__lte=last.isoformat())
    return _check("journals_posted", not count, count, detail, link, items)


def _approvals_check(entity, period: str, rows: list, items: bool) -> dict:
    count = len(rows)
    detail = ("No credit note, write-off or manual journal of the month waits for approval." if not count else
              f"{_plural(count, 'approval')} pending for documents dated in the month.")
    listed = [{"label": f"{kind.replace('_', ' ')} {document_id}", "url": reverse("web-approval", args=[pk])}
              for pk, kind, document_id in rows[:ITEMS]] if items else None
    return _check("approvals_decided", not count, count, detail,
                  _approvals(status="pending", entity=entity.code, period=period), listed)


def _exceptions_check(entity, codes: dict, items) -> dict:
    count = sum(codes.values())
    if not count:
        detail = "No exception is open on an event or journal of the month."
    else:
        detail = f"{_plural(count, 'open exception')}: " + ", ".join(
            f"{n:,} {code}" for code, n in sorted(codes.items(), key=lambda kv: (-kv[1], kv[0])))
    return _check("exceptions_resolved", not count, count, detail, _queue(status="unresolved", entity=entity.code),
                  items)


def _run_check(run: dict | None, posted_at) -> dict:
    if run is None:
        return _check("reconciliation_run", False, 1, "No finished full reconciliation run covers the whole month.",
                      None)
    link = f"/api/v1/reconciliation/runs/{run['id']}"
    what = (f"Full run {run['id']} ({run['date_from']:%Y-%m-%d} to {run['date_to']:%Y-%m-%d}) started "
            f"{_at(run['started_at'])}")
    if posted_at is not None and run["started_at"] < posted_at:
        return _check("reconciliation_run", False, 1,
                      f"{what}, before the month's last posting at {_at(posted_at)}: run it again.", link)
    after = f", after the month's last posting at {_at(posted_at)}" if posted_at else " (nothing posted in the month)"
    return _check("reconciliation_run", True, 0, f"{what}{after}; finished {_at(run['finished_at'])}.", link)


def _breaks_check(entity, status: dict, items: bool) -> dict:
    count = status["open_breaks"]
    if not count:
        detail = "No reconciliation break dated in the month is open."
    else:
        detail = f"{_plural(count, 'open break')}: " + ", ".join(
            f"{n:,} {code}" for code, n in sorted(status["by_code"].items(), key=lambda kv: (-kv[1], kv[0])))
    listed = None
    if items:
        listed = []
        for b in status["breaks"]:
            what = b["document"] or b["erp_document_ref"] or b["account"] or b["period"] or f"break {b['id']}"
            url = (reverse("web-exception-detail", args=[b["exception"]]) if b["exception"]
                   else f"/api/v1/reconciliation/breaks?{urlencode({'entity': entity.code, 'status': 'open'})}")
            listed.append({"label": f"{b['code']} {what}", "url": url})
    return _check("reconciliation_breaks", not count, count, detail, reconciliation_breaks_url(entity.code), listed)


def _audit_check(check: dict | None, alarm, posted_at) -> dict:
    link = _queue(status="unresolved", code=Codes.AUDIT_CHAIN_BROKEN)
    if alarm is not None:
        return _check("audit_chain_verified", False, 1, "The audit chain is broken: an audit_chain_broken alarm is "
                      "open.", reverse("web-exception-detail", args=[alarm]))
    if check is None:
        return {**_check("audit_chain_verified", False, 1, "The audit chain has never been verified.", link),
                "stale": True}
    if not check["ok"]:
        return _check("audit_chain_verified", False, 1, f"The last verification failed: {check['problem']}", link)
    if posted_at is not None and check["at"] < posted_at:
        return {**_check("audit_chain_verified", False, 1, f"Last verified {_at(check['at'])}, before the month's "
                         f"last posting at {_at(posted_at)}; closing verifies it again.", link), "stale": True}
    return _check("audit_chain_verified", True, 0,
                  f"Verified {_at(check['at'])} up to entry {check['to_seq']:,} of the chain.", link)


def closable(result: list[dict]) -> bool:
    """All checks pass, but for an audit verification that is only out of date (closing verifies it again)."""
    return all(c["ok"] or c.get("stale") for c in result)


# The period itself ------------------------------------------------------------------------------------
def pending_requests(entity_code: str, months) -> dict[tuple[int, int], list[Approval]]:
    """The pending close and reopen requests of the months, by month."""
    subjects = {subject_of(entity_code, y, m): (y, m) for y, m in months}
    out: dict = {}
    for approval in Approval.objects.filter(status=Approval.Status.PENDING, kind__in=PERIOD_KINDS,
                                            subject__in=list(subjects)).order_by("created_at"):
        out.setdefault(subjects[approval.subject], []).append(approval)
    return out


def periods(entity: Entity, months) -> dict[tuple[int, int], Period]:
    """The Period rows of the months (a month without a row is open)."""
    rows = Period.objects.filter(entity=entity, year__in={y for y, _ in months}, month__in={m for _, m in months})
    wanted = set(months)
    return {(p.year, p.month): p for p in rows if (p.year, p.month) in wanted}


def _approval_body(approval: Approval) -> dict:
    return {"id": str(approval.pk), "kind": approval.kind, "status": approval.status,
            "requested_by": approval.requested_by_label, "reason": approval.reason,
            "created_at": approval.created_at, "url": reverse("web-approval", args=[approval.pk])}


def period_resource(entity: Entity, year: int, month: int, *, result: list[dict] | None = None) -> dict:
    """The API's and the page's view of one period: its status and close record, the live checks and the
    pending requests."""
    period = periods(entity, [(year, month)]).get((year, month))
    result = checks(entity, year, month) if result is None else result
    closed = period is not None and period.status == Period.Status.CLOSED
    return {
        "entity": entity.code, "period": f"{year}-{month:02d}", "status": "closed" if closed else "open",
        "closed_at": period.closed_at if closed else None, "closed_by": (period.closed_by or None) if closed else None,
        "close_reason": period.close_reason if closed else "",
        "close_approved_by": (period.close_approved_by or None) if closed else None,
        "close_checks": period.close_checks if closed else [],
        "reopened_at": period.reopened_at if period else None,
        "reopened_by": (period.reopened_by or None) if period else None,
        "ready": all_ok(result),
        "checks": [{k: v for k, v in c.items() if k not in ("items", "short")} for c in result],
        "pending": [_approval_body(a) for a in pending_requests(entity.code, [(year, month)]).get((year, month), [])],
    }


def overview(entity: Entity, months) -> list[dict]:
    """One row per month (newest first): status, close record, pending requests and the live checks."""
    by_month = checks_by_month(entity, months)
    rows_by_month = periods(entity, months)
    pending = pending_requests(entity.code, months)
    out = []
    for year, month in sorted(set(months), reverse=True):
        period = rows_by_month.get((year, month))
        closed = period is not None and period.status == Period.Status.CLOSED
        result = by_month[(year, month)]
        out.append({"year": year, "month": month, "label": f"{year}-{month:02d}",
                    "status": "closed" if closed else "open", "period": period,
                    "override": closed and any(not c.get("ok") for c in period.close_checks),
                    "checks": result, "failing": sum(1 for c in result if not c["ok"]), "ready": all_ok(result),
                    "pending": pending.get((year, month), [])})
    return out
