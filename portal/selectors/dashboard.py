"""Operations figures for the dashboard and /metrics: every figure is a time-windowed or status-bounded query
on an indexed column, never a whole-table scan, to answer well under half a second on millions of rows.
`figures(user)` scopes to the user's entities (config.roles.entity_codes) and caches per scope for
TIEOUT_DASHBOARD_CACHE_SECONDS (15 s default; stale served while one request refreshes; event series older
than 24 h kept 5 minutes). `compute(codes)` is the reading itself, which /metrics calls for all entities.
Times are UTC."""
from __future__ import annotations

import datetime
import hashlib
import logging

from django.conf import settings
from django.core.cache import cache
from django.db import connection
from django.utils import timezone

from config import roles
from exceptions_queue import sla
from ledger.models import Entity

log = logging.getLogger(__name__)

CACHE_VERSION = 1
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
    }
