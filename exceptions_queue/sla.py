"""Service levels of the exception queue: hours each code may wait (SLA) and an exception's age against it:
under half is `ok`, under all `warn`, past it `bad`. Defaults put what blocks the close first (an ERP-refused
journal, a closed period) and let a document waiting for another clear itself; TIEOUT_SLA_HOURS (setting or
environment, JSON such as ``{"posting_failed": 2, "default": 48}``) overrides hours per code. Age buckets are
fixed filter values in the API and the UI: ``<1h``, ``1-24h``, ``1-7d``, ``>7d``."""
import datetime
import json
import os
from dataclasses import dataclass

from django.conf import settings
from django.utils import timezone

from config.errors import Codes

DEFAULT_HOURS = 24
SLA_HOURS = {
    Codes.POSTING_FAILED: 4,
    Codes.PERIOD_CLOSED: 8,
    Codes.NO_ACCOUNT_MAPPING: 8,
    Codes.UNKNOWN_ENTITY: 8,
    Codes.CURRENCY_MISMATCH: 24,
    Codes.OVER_APPLICATION: 24,
    Codes.OVER_REFUND: 24,
    Codes.OVER_CREDIT: 24,
    Codes.OVER_WRITE_OFF: 24,
    Codes.AMENDMENT_BELOW_APPLIED: 24,
    Codes.VOID_WITH_APPLICATIONS: 24,
    Codes.DOCUMENT_CONFLICT: 24,
    Codes.UNKNOWN_CUSTOMER: 24,
    Codes.UNKNOWN_INVOICE: 24,
    Codes.UNKNOWN_PAYMENT: 24,
    Codes.CALLBACK_FAILED: 24,
    Codes.AWAITING_DEPENDENCY: 72,
    # Reconciliation breaks: the ERP lacking or disagreeing with a posted journal blocks the close first;
    # aggregate differences usually follow one of those and clear with it.
    Codes.MISSING_IN_ERP: 8,
    Codes.ERP_DOCUMENT_CANCELLED: 8,
    Codes.ERP_AMOUNT_MISMATCH: 8,
    Codes.ERP_DATE_MISMATCH: 24,
    Codes.UNEXPECTED_IN_ERP: 8,
    Codes.ERP_BALANCE_MISMATCH: 24,
    Codes.MISSING_JOURNAL: 8,
    Codes.JOURNAL_AMOUNT_MISMATCH: 8,
    Codes.LEDGER_OPEN_AMOUNT_MISMATCH: 24,
    Codes.AR_CONTROL_MISMATCH: 24,
    Codes.UNAPPLIED_CASH_MISMATCH: 24,
}

HOUR = datetime.timedelta(hours=1)
DAY = datetime.timedelta(days=1)
# bucket -> (at least this old, younger than this); None is unbounded.
BUCKETS = {
    "<1h": (None, HOUR),
    "1-24h": (HOUR, DAY),
    "1-7d": (DAY, 7 * DAY),
    ">7d": (7 * DAY, None),
}
# Spellings without < and > for hand-typed URLs.
BUCKET_ALIASES = {"lt1h": "<1h", "gt7d": ">7d"}


def _overrides() -> dict:
    value = getattr(settings, "TIEOUT_SLA_HOURS", None)
    if value is None:
        value = os.environ.get("TIEOUT_SLA_HOURS") or {}
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return {}  # a typo in the environment must not take the queue down; defaults apply
    return value if isinstance(value, dict) else {}


def hours_for(code: str) -> float:
    overrides = _overrides()
    if code in overrides:
        return float(overrides[code])
    if code in SLA_HOURS:
        return float(SLA_HOURS[code])
    return float(overrides.get("default", DEFAULT_HOURS))


def bucket_of(age: datetime.timedelta) -> str:
    for name, (low, high) in BUCKETS.items():
        if (low is None or age >= low) and (high is None or age < high):
            return name
    return ">7d"


def normalise_bucket(value: str) -> str | None:
    value = BUCKET_ALIASES.get(value, value)
    return value if value in BUCKETS else None


def created_range(bucket: str, now: datetime.datetime | None = None) -> dict:
    """Filter keywords on `created_at` for the exceptions whose age is in `bucket`."""
    now = now or timezone.now()
    low, high = BUCKETS[bucket]
    out = {}
    if low is not None:
        out["created_at__lte"] = now - low
    if high is not None:
        out["created_at__gt"] = now - high
    return out


def _short(hours: float) -> str:
    if hours < 1:
        return f"{max(int(hours * 60), 0)}m"
    if hours < 48:
        return f"{int(hours)}h"
    return f"{int(hours // 24)}d"


@dataclass(frozen=True)
class Age:
    bucket: str
    level: str  # ok | warn | bad
    text: str  # e.g. "3h / SLA 24h"
    sla_hours: float
    late: bool

    @property
    def css(self) -> str:
        return f"age-{self.level}"

    @property
    def label(self) -> str:
        return {"ok": "within SLA", "warn": "near SLA", "bad": "past SLA"}[self.level]


def age_of(exc, now: datetime.datetime | None = None) -> Age:
    """The age of an unresolved exception (or how long a resolved one took) against its code's SLA."""
    end = exc.resolved_at or now or timezone.now()
    age = max(end - exc.created_at, datetime.timedelta(0))
    hours = age.total_seconds() / 3600
    sla = hours_for(exc.code)
    ratio = hours / sla if sla > 0 else float("inf")
    level = "ok" if ratio < 0.5 else "warn" if ratio < 1 else "bad"
    return Age(bucket=bucket_of(age), level=level, text=f"{_short(hours)} / SLA {_short(sla)}", sla_hours=sla,
               late=ratio >= 1)
