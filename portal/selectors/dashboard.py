"""Operations figures for the dashboard and /metrics: every figure is a time-windowed or status-bounded query
on an indexed column, never a whole-table scan, to answer well under half a second on millions of rows (the
slow-moving month-scale figures, below, are read every 5 minutes). `figures(user)` scopes to the user's
entities (config.roles.entity_codes) and caches per scope for TIEOUT_DASHBOARD_CACHE_SECONDS (15 s default;
stale served while one request refreshes; event series older than 24 h kept 5 minutes). `compute(codes)` is
the reading itself, which /metrics calls for all entities. Close and reconciliation: open reconciliation
breaks by code and age, each entity's close status for the current month and the six before it with the close
cycle time (month end to close), and, kept 5 minutes (`month_figures`): exception resolution time p50/p95 by
process, breaks opened and resolved per month, and unapplied cash by age per currency. Times are UTC."""
from __future__ import annotations

import datetime
import hashlib
import logging
from decimal import Decimal

from django.conf import settings
from django.core.cache import cache
from django.db import connection
from django.utils import timezone

from config import roles
from exceptions_queue import sla
from ledger.models import Entity

log = logging.getLogger(__name__)

CACHE_VERSION = 2
STALE_FACTOR = 4  # stale figures are served this many freshness periods at most, while one refreshes
HISTORY_SECONDS = 300  # the event series before the last 24 hours
HOUR = datetime.timedelta(hours=1)
DAY = datetime.timedelta(days=1)

# Age buckets of open exceptions: {key: (at least this old, younger than this)}, the keys being the queue's
# ?age= filter values. exceptions_queue/sla.py owns them; these are the same, for when it lacks them.
_BUCKETS = {"<1h": (None, HOUR), "1-24h": (HOUR, DAY), "1-7d": (DAY, 7 * DAY), ">7d": (7 * DAY, None)}
_ALIASES = {"lt1h": "<1h", "gt7d": ">7d"}
BUCKET_LABELS = {"<1h": "< 1 h", "1-24h": "1–24 h", "1-7d": "1–7 days", ">7d": "> 7 days"}
UNPOSTED_STATUSES = ("pending_approval", "ready", "posting", "failed")
FAILED_EVENT_STATUSES = ("exception", "rejected")
FAILED_ATTEMPT_OUTCOMES = ("transient", "permanent", "ambiguous", "abandoned")
# Open reconciliation breaks by age (days old: at least, younger than), and unapplied cash by the age of the
# payment (days since it was received), as AR aging counts them.
BREAK_AGES = (("<1d", 0, 1), ("1-7d", 1, 7), ("7-30d", 7, 30), (">30d", 30, None))
CASH_AGES = (("0-30", 0, 31), ("31-60", 31, 61), ("61-90", 61, 91), ("90+", 91, None))
CLOSE_MONTHS = 7  # the current month and the six before it
KPI_DAYS = 90
BREAK_MONTHS = 6


def _age_buckets() -> list[dict]:
    """[{key, param, label, upper}] youngest first; `param` is the URL spelling (no < or >)."""
    try:
        buckets, aliases = dict(sla.BUCKETS), dict(getattr(sla, "BUCKET_ALIASES", {}))
    except (AttributeError, TypeError, ValueError):
        buckets, aliases = _BUCKETS, _ALIASES
    spelling = {key: alias for alias, key in aliases.items()}
    return [{"key": key, "param": spelling.get(key, key), "label": BUCKET_LABELS.get(key, key), "upper": upper}
            for key, (_lower, upper) in buckets.items()]


def cache_seconds() -> float:
    return float(getattr(settings, "TIEOUT_DASHBOARD_CACHE_SECONDS", 15))


def _scope_key(codes) -> str:
    if codes is None:
        return "all"
    return hashlib.sha256(",".join(sorted(codes)).encode()).hexdigest()[:16]


def figures(user) -> dict:
    """The dashboard's figures for `user`'s entities, from the cache when fresh enough.

    Figures are kept for STALE_FACTOR times their freshness: once stale, the one request that takes the
    refresh lock recomputes them while every other request keeps getting the stale ones, so a busy room
    never recomputes the same figures many times at once (no dogpile when they expire).
    """
    codes = roles.entity_codes(user)
    seconds = cache_seconds()
    if seconds <= 0:
        return compute(codes)
    key = f"dashboard:v{CACHE_VERSION}:{_scope_key(codes)}"
    now = timezone.now()
    try:
        cached = cache.get(key)
        if cached is not None and (cached["computed_at"] + datetime.timedelta(seconds=seconds) > now
                                   or not cache.add(f"{key}:refresh", 1, timeout=max(seconds, 30))):
            return cached
    except Exception:  # noqa: BLE001 - the cache is an optimisation: Redis down means compute
        log.warning("dashboard cache unavailable; computing figures", exc_info=True)
        return compute(codes)
    result = compute(codes)
    try:
        cache.set(key, result, timeout=seconds * STALE_FACTOR)
        cache.delete(f"{key}:refresh")
    except Exception:  # noqa: BLE001
        log.warning("dashboard cache unavailable; figures not kept", exc_info=True)
    return result


def _cache_get(key):
    try:
        return cache.get(key)
    except Exception:  # noqa: BLE001
        return None


def _cache_set(key, value, seconds) -> None:
    try:
        cache.set(key, value, timeout=seconds)
    except Exception:  # noqa: BLE001
        log.warning("dashboard cache unavailable; figures not kept", exc_info=True)


def _events_per_hour(event_scope: str, params: dict) -> dict:
    """{hour: (received, posted, failed)} for events received in [since, until): index-only on received_at."""
    until = "" if params.get("until") is None else " AND received_at < %(until)s"
    return {_hour(hour): (received, posted, failed) for hour, received, posted, failed in _rows(
        "SELECT date_trunc('hour', received_at), count(*),"
        " count(*) FILTER (WHERE status = 'posted'),"
        " count(*) FILTER (WHERE status IN ('exception', 'rejected'))"
        " FROM billing_sync_event WHERE received_at >= %(since)s" + until + event_scope + " GROUP BY 1", params)}


def _rows(sql: str, params: dict) -> list[tuple]:
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchall()


def _entity_ids(codes) -> list[int] | None:
    if codes is None:
        return None
    return list(Entity.objects.filter(code__in=codes).values_list("id", flat=True))


def _hour(value: datetime.datetime) -> datetime.datetime:
    return value.astimezone(datetime.UTC).replace(minute=0, second=0, microsecond=0)


def compute(codes, *, now: datetime.datetime | None = None, history: bool = True) -> dict:
    """Every figure for the entities `codes` (None = all), read now. Money-free: counts and seconds.

    `history=False` leaves out the 14-day event series (the largest read; /metrics has no use for it).
    """
    now = now or timezone.now()
    this_hour = _hour(now)
    today = this_hour.replace(hour=0)
    since_24h = this_hour - 23 * HOUR  # 24 hourly bars, the current (partial) hour last
    since_14d = today - 13 * DAY  # 14 daily bars, today last
    code_list = sorted(codes) if codes is not None else None
    entity_ids = _entity_ids(codes)
    params = {"now": now, "since_24h": since_24h, "since_14d": since_14d, "day_ago": now - DAY,
              "hour_ago": now - HOUR, "codes": code_list, "ids": entity_ids}
    event_scope = "" if codes is None else " AND entity_code = ANY(%(codes)s)"
    journal_scope = "" if codes is None else " AND j.entity_id = ANY(%(ids)s)"

    # Events: received per hour over 14 days (index range on received_at, covering status and entity),
    # with how many of them are posted or failed by now (before the last 24 hours: as of a few minutes ago).
    hourly = _events_per_hour(event_scope, dict(params, since=since_24h, until=None))
    if history:
        # The 13 days before the last 24 hours change slowly (only late postings and failures move them):
        # they are kept HISTORY_SECONDS, keyed by their window, so that a refresh reads one day, not 14.
        key = f"dashboard:v{CACHE_VERSION}:history:{_scope_key(codes)}:{since_24h.isoformat()}"
        older = _cache_get(key) if cache_seconds() > 0 else None
        if older is None:
            older = _events_per_hour(event_scope, dict(params, since=since_14d, until=since_24h))
            if cache_seconds() > 0:
                _cache_set(key, older, HISTORY_SECONDS)
        hourly.update(older)
    events_hourly = []
    for i in range(24):
        start = since_24h + i * HOUR
        received, posted, failed = hourly.get(start, (0, 0, 0))
        events_hourly.append({"start": start, "label": start.strftime("%H:00"), "received": received,
                              "posted": posted, "failed": failed})
    events_daily = []
    for i in range(14 if history else 0):
        start = since_14d + i * DAY
        received = posted = failed = 0
        for h in range(24):
            r, p, f = hourly.get(start + h * HOUR, (0, 0, 0))
            received, posted, failed = received + r, posted + p, failed + f
        events_daily.append({"start": start, "label": start.strftime("%d %b"), "received": received,
                             "posted": posted, "failed": failed})
    events_24h = {k: sum(row[k] for row in events_hourly) for k in ("received", "posted", "failed")}
    events_last_hour = _rows(
        "SELECT count(*) FROM billing_sync_event WHERE received_at >= %(hour_ago)s" + event_scope, params)[0][0]

    # Open exceptions (unresolved, as the queue's status=unresolved): a small part of the table, by code
    # and age, read index-only from exception_open_dash_idx (code, created_at, entity_code, retry_count).
    buckets = _age_buckets()
    case = ["CASE"]
    for index, bucket in enumerate(buckets[:-1]):
        params[f"edge_{index}"] = now - bucket["upper"]
        case.append(f" WHEN created_at > %(edge_{index})s THEN {index}")  # age < upper edge
    case.append(f" ELSE {len(buckets) - 1} END")
    by_code: dict[str, dict] = {}
    by_age = [{"key": b["key"], "param": b["param"], "label": b["label"], "count": 0} for b in buckets]
    open_total = open_retries = 0
    oldest_open = None
    for code, bucket, count, retries, oldest in _rows(
        "SELECT code, " + "".join(case) + ", count(*), coalesce(sum(retry_count), 0), min(created_at)"
        " FROM exceptions_queue_exceptionrecord WHERE status <> 'resolved'" + event_scope +
        " GROUP BY 1, 2", params):
        row = by_code.setdefault(code, {"code": code, "count": 0, "retries": 0, "ages": [0] * len(buckets)})
        row["count"] += count
        row["retries"] += retries
        row["ages"][bucket] += count
        by_age[bucket]["count"] += count
        open_total += count
        open_retries += retries
        oldest_open = oldest if oldest_open is None or oldest < oldest_open else oldest_open
    exceptions_by_code = sorted(by_code.values(), key=lambda r: (-r["count"], r["code"]))
    for row in exceptions_by_code:
        row["ages"] = [{"key": b["key"], "param": b["param"], "count": n} for b, n in zip(buckets, row["ages"])]

    # Journals: retried (partial index on posting_attempts > 1), ERP attempts failed in the last 24 h.
    retried = dict(_rows(
        "SELECT j.status, count(*) FROM ledger_journal j WHERE j.posting_attempts > 1" + journal_scope +
        " GROUP BY 1", params))
    attempts_failed = _rows(
        "SELECT count(*) FROM ledger_postingattempt a"
        + ("" if codes is None else " JOIN ledger_journal j ON j.id = a.journal_id") +
        " WHERE a.started_at >= %(day_ago)s AND a.outcome IN ('transient', 'permanent', 'ambiguous', 'abandoned')"
        + journal_scope, params)[0][0]

    # Source-to-posted latency (event received -> journal posted), over journals posted in the window.
    (posted_24h, p50_24h, p95_24h, posted_1h, p50_1h, p95_1h), = _rows(
        "SELECT count(*),"
        " percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM j.posted_at - e.received_at)),"
        " percentile_cont(0.95) WITHIN GROUP (ORDER BY extract(epoch FROM j.posted_at - e.received_at)),"
        " count(*) FILTER (WHERE j.posted_at >= %(hour_ago)s),"
        " percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM j.posted_at - e.received_at))"
        "   FILTER (WHERE j.posted_at >= %(hour_ago)s),"
        " percentile_cont(0.95) WITHIN GROUP (ORDER BY extract(epoch FROM j.posted_at - e.received_at))"
        "   FILTER (WHERE j.posted_at >= %(hour_ago)s)"
        " FROM ledger_journal j JOIN billing_sync_event e ON e.id = j.event_id"
        " WHERE j.status = 'posted' AND j.posted_at >= %(day_ago)s" + journal_scope, params)

    # Throughput: journals posted per hour (every posted journal, with or without an event).
    per_hour = {_hour(h): n for h, n in _rows(
        "SELECT date_trunc('hour', j.posted_at), count(*) FROM ledger_journal j"
        " WHERE j.status = 'posted' AND j.posted_at >= %(since_24h)s" + journal_scope + " GROUP BY 1", params)}
    throughput = [{"start": since_24h + i * HOUR, "label": (since_24h + i * HOUR).strftime("%H:00"),
                   "posted": per_hour.get(since_24h + i * HOUR, 0)} for i in range(24)]
    journals_posted_last_hour = _rows(
        "SELECT count(*) FROM ledger_journal j WHERE j.status = 'posted' AND j.posted_at >= %(hour_ago)s"
        + journal_scope, params)[0][0]

    # Unposted journals (partial index on created_at for the unposted statuses): how many, the oldest.
    unposted = dict(_rows(
        "SELECT j.status, count(*) FROM ledger_journal j"
        " WHERE j.status IN ('pending_approval', 'ready', 'posting', 'failed')" + journal_scope + " GROUP BY 1",
        params))
    oldest = _rows(
        "SELECT j.id, j.status, j.kind, j.created_at, e.code FROM ledger_journal j"
        " JOIN ledger_entity e ON e.id = j.entity_id"
        " WHERE j.status IN ('pending_approval', 'ready', 'posting', 'failed')" + journal_scope +
        " ORDER BY j.created_at LIMIT 1", params)
    oldest_unposted = None
    if oldest:
        journal_id, status, kind, created_at, entity_code = oldest[0]
        oldest_unposted = {"id": str(journal_id), "status": status, "kind": kind, "created_at": created_at,
                           "entity": entity_code, "age_seconds": max((now - created_at).total_seconds(), 0.0)}

    pending_approvals = _rows(
        "SELECT count(*) FROM exceptions_queue_approval j WHERE j.status = 'pending'" + journal_scope,
        params)[0][0]

    reconciliation = _open_breaks(params, "" if codes is None else " AND b.entity_id = ANY(%(ids)s)")
    close = _close_status(params, codes, now)
    months = _month_figures_cached(codes, now) if history else None

    return {
        "computed_at": now,
        "scope": None if codes is None else code_list,
        "events_hourly": events_hourly,
        "events_daily": events_daily,
        "events_24h": events_24h,
        "events_last_hour": events_last_hour,
        "open_exceptions": {"total": open_total, "retries": open_retries, "by_code": exceptions_by_code,
                            "by_age": by_age, "oldest_created_at": oldest_open},
        "retries": {"open_exception_retries": open_retries, "journals_retried": sum(retried.values()),
                    "journals_retried_unposted": sum(n for s, n in retried.items() if s in UNPOSTED_STATUSES),
                    "erp_attempts_failed_24h": attempts_failed},
        "latency": {"posted_24h": posted_24h, "p50_24h": p50_24h, "p95_24h": p95_24h,
                    "posted_1h": posted_1h, "p50_1h": p50_1h, "p95_1h": p95_1h},
        "throughput": throughput,
        "journals_posted_24h": sum(row["posted"] for row in throughput),
        "journals_posted_last_hour": journals_posted_last_hour,
        "unposted": {"total": sum(unposted.values()), "by_status": unposted, "oldest": oldest_unposted},
        "pending_approvals": pending_approvals,
        "reconciliation": reconciliation,
        "close": close,
        "months": months,
    }


def _months_key(codes) -> str:
    return f"dashboard:v{CACHE_VERSION}:months:{_scope_key(codes)}"


def month_figures_refresh(codes=None) -> dict:
    """Read the month figures of `codes` (None: every entity) now and keep them: the beat runs this for every
    entity every few minutes (portal.tasks), so that the dashboard of whoever sees every entity never reads
    them itself."""
    result = month_figures(codes)
    if cache_seconds() > 0:
        _cache_set(_months_key(codes), result, HISTORY_SECONDS * STALE_FACTOR)
    return result


def _month_figures_cached(codes, now: datetime.datetime) -> dict:
    """`month_figures`, kept HISTORY_SECONDS and then served stale (up to STALE_FACTOR times that) while the
    one request that takes the refresh lock reads them again: the larger month-scale reads (exception
    resolution percentiles sort every exception resolved in the window) never run on every refresh of the
    dashboard, nor on many at once."""
    if cache_seconds() <= 0:
        return month_figures(codes, now=now)
    key = _months_key(codes)
    cached = _cache_get(key)
    try:
        if cached is not None and (cached["computed_at"] + datetime.timedelta(seconds=HISTORY_SECONDS) > now
                                   or not cache.add(f"{key}:refresh", 1, timeout=HISTORY_SECONDS)):
            return cached
    except Exception:  # noqa: BLE001 - the cache is an optimisation
        log.warning("dashboard cache unavailable; computing month figures", exc_info=True)
    result = month_figures(codes, now=now)
    _cache_set(key, result, HISTORY_SECONDS * STALE_FACTOR)
    try:
        cache.delete(f"{key}:refresh")
    except Exception:  # noqa: BLE001
        pass
    return result


def _age_case(column: str, ages, params: dict, now: datetime.datetime, prefix: str) -> str:
    """A CASE giving the index of the age bucket `column` (a time) falls in, youngest first."""
    case = ["CASE"]
    for index, (_key, _low, high) in enumerate(ages[:-1]):
        params[f"{prefix}_{index}"] = now - high * DAY
        case.append(f" WHEN {column} > %({prefix}_{index})s THEN {index}")
    case.append(f" ELSE {len(ages) - 1} END")
    return "".join(case)


def _open_breaks(params: dict, scope: str) -> dict:
    """Open reconciliation breaks by code and age: the open rows only (the partial unique index on open
    breaks' keys, or (entity, status, code) when scoped)."""
    case = _age_case("b.opened_at", BREAK_AGES, params, params["now"], "break_edge")
    by_code: dict[str, dict] = {}
    by_age = [{"key": key, "count": 0} for key, _, _ in BREAK_AGES]
    total = 0
    oldest = None
    for code, bucket, count, first in _rows(
            "SELECT b.code, " + case + ", count(*), min(b.opened_at) FROM billing_sync_reconciliationbreak b"
            " WHERE b.status = 'open'" + scope + " GROUP BY 1, 2", params):
        row = by_code.setdefault(code, {"code": code, "count": 0, "ages": [0] * len(BREAK_AGES)})
        row["count"] += count
        row["ages"][bucket] += count
        by_age[bucket]["count"] += count
        total += count
        oldest = first if oldest is None or first < oldest else oldest
    rows = sorted(by_code.values(), key=lambda r: (-r["count"], r["code"]))
    for row in rows:
        row["ages"] = [{"key": key, "count": n} for (key, _, _), n in zip(BREAK_AGES, row["ages"])]
    return {"total": total, "by_code": rows, "by_age": by_age, "oldest_opened_at": oldest}


def _months_back(now: datetime.datetime, count: int) -> list[tuple[int, int]]:
    """The current month (UTC) and the `count - 1` before it, newest first."""
    year, month = now.astimezone(datetime.UTC).year, now.astimezone(datetime.UTC).month
    out = []
    for _ in range(count):
        out.append((year, month))
        year, month = (year, month - 1) if month > 1 else (year - 1, 12)
    return out


def _close_status(params: dict, codes, now: datetime.datetime) -> dict:
    """Each entity's period status for the last CLOSE_MONTHS months (a month without a row is open), the
    pending close and reopen requests, and the close cycle time: month end (the first instant of the next
    month, UTC) to the close, per closed period, with its median and p95 over the months shown."""
    months = _months_back(now, CLOSE_MONTHS)
    oldest_year, oldest_month = months[-1]
    params = dict(params, close_from=oldest_year * 100 + oldest_month)
    entity_scope = "" if codes is None else " AND e.code = ANY(%(codes)s)"
    entities = [code for (code,) in _rows("SELECT e.code FROM ledger_entity e WHERE true" + entity_scope +
                                          " ORDER BY e.code", params)]
    cycle_sql = ("extract(epoch FROM p.closed_at - (make_date(p.year, p.month, 1) + interval '1 month')"
                 "::timestamp AT TIME ZONE 'UTC')")
    periods = {}
    for code, year, month, status, closed_at, closed_by, approved_by, cycle in _rows(
            "SELECT e.code, p.year, p.month, p.status, p.closed_at, p.closed_by, p.close_approved_by, " + cycle_sql +
            " FROM ledger_period p JOIN ledger_entity e ON e.id = p.entity_id"
            " WHERE p.year * 100 + p.month >= %(close_from)s" + entity_scope, params):
        closed = status == "closed"
        periods[(code, year, month)] = {"status": status, "closed_at": closed_at if closed else None,
                                        "closed_by": closed_by if closed else "",
                                        "override": closed and bool(approved_by),
                                        "cycle_seconds": float(cycle) if closed and cycle is not None else None}
    (closed_count, p50, p95), = _rows(
        "SELECT count(*), percentile_cont(0.5) WITHIN GROUP (ORDER BY " + cycle_sql + "),"
        " percentile_cont(0.95) WITHIN GROUP (ORDER BY " + cycle_sql + ")"
        " FROM ledger_period p JOIN ledger_entity e ON e.id = p.entity_id"
        " WHERE p.status = 'closed' AND p.year * 100 + p.month >= %(close_from)s" + entity_scope, params)
    pending = {}
    for subject, kind in _rows(
            "SELECT a.subject, a.kind FROM exceptions_queue_approval a WHERE a.status = 'pending'"
            " AND a.kind IN ('period_close', 'period_reopen')", params):
        pending[subject] = kind
    rows = []
    for code in entities:
        cells = []
        for year, month in months:
            label = f"{year}-{month:02d}"
            cell = periods.get((code, year, month), {"status": "open", "closed_at": None, "closed_by": "",
                                                     "override": False, "cycle_seconds": None})
            cells.append({"label": label, **cell, "pending": pending.get(f"period:{code}:{label}")})
        rows.append({"entity": code, "cells": cells})
    return {"months": [f"{y}-{m:02d}" for y, m in months], "entities": rows,
            "cycle": {"closed": closed_count, "p50": p50, "p95": p95}}


def month_figures(codes, *, now: datetime.datetime | None = None) -> dict:
    """The month-scale figures (kept HISTORY_SECONDS by `compute`): exception resolution time by process,
    reconciliation breaks opened and resolved per month, unapplied cash by age per currency.

    Exceptions: those opened in the last KPI_DAYS days and resolved since, created_at to resolved_at
    (exception_status_created_idx: status, created_at). Breaks: opened per month on recon_break_opened_idx;
    resolved per month reads the resolved breaks since the window's start (no index on resolved_at yet: the
    reconciliation tables' owner may add one). Unapplied cash: the payments not fully applied (no index yet
    either: the receivables reports' owner may add a partial one); money stays Decimal, per currency.
    """
    now = now or timezone.now()
    ids = _entity_ids(codes)
    months = list(reversed(_months_back(now, BREAK_MONTHS)))
    first_year, first_month = months[0]
    params = {"codes": sorted(codes) if codes is not None else None, "ids": ids,
              "since_kpi": now - KPI_DAYS * DAY,
              "since_months": datetime.datetime(first_year, first_month, 1, tzinfo=datetime.UTC)}

    exception_scope = "" if codes is None else " AND entity_code = ANY(%(codes)s)"
    # Both percentiles from one sort of each process's durations (an array of fractions).
    resolution = [{"process": process, "count": count, "p50": quantiles[0], "p95": quantiles[1]}
                  for process, count, quantiles in _rows(
                      "SELECT process, count(*), percentile_cont(ARRAY[0.5, 0.95]) WITHIN GROUP"
                      " (ORDER BY extract(epoch FROM resolved_at - created_at))"
                      " FROM exceptions_queue_exceptionrecord"
                      " WHERE status = 'resolved' AND created_at >= %(since_kpi)s" + exception_scope +
                      " GROUP BY process ORDER BY process", params)]

    break_scope = "" if codes is None else " AND entity_id = ANY(%(ids)s)"
    opened = {(d.year, d.month): n for d, n in _rows(
        "SELECT date_trunc('month', opened_at), count(*) FROM billing_sync_reconciliationbreak"
        " WHERE opened_at >= %(since_months)s" + break_scope + " GROUP BY 1", params)}
    resolved = {(d.year, d.month): n for d, n in _rows(
        "SELECT date_trunc('month', resolved_at), count(*) FROM billing_sync_reconciliationbreak"
        " WHERE status = 'resolved' AND resolved_at >= %(since_months)s" + break_scope + " GROUP BY 1", params)}
    breaks_monthly = [{"month": f"{y}-{m:02d}", "opened": opened.get((y, m), 0), "resolved": resolved.get((y, m), 0)}
                      for y, m in months]

    case = _age_case("p.received_at", CASH_AGES, params, now, "cash_edge")
    cash: dict[str, dict] = {}
    for currency, bucket, count, amount in _rows(
            "SELECT p.currency, " + case + ", count(*), sum(p.amount - p.allocated_total - p.refunded_unapplied_total)"
            " FROM billing_sync_payment p WHERE p.amount > p.allocated_total + p.refunded_unapplied_total"
            + ("" if codes is None else " AND p.entity_id = ANY(%(ids)s)") + " GROUP BY 1, 2", params):
        row = cash.setdefault(currency, {"currency": currency, "count": 0, "total": Decimal("0"),
                                         "ages": [{"key": key, "count": 0, "amount": Decimal("0")}
                                                  for key, _, _ in CASH_AGES]})
        row["count"] += count
        row["total"] += amount
        row["ages"][bucket]["count"] += count
        row["ages"][bucket]["amount"] += amount
    return {"computed_at": now, "kpi_days": KPI_DAYS, "exception_resolution": resolution,
            "breaks_monthly": breaks_monthly, "unapplied_cash": [cash[c] for c in sorted(cash)]}
