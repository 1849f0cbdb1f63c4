"""What the period close's tests need of reconciliation: `reconciled(...)` writes a finished full run covering
a month (and the breaks it found) straight into billing_sync's tables, as the reconciliation engine leaves
them, with the times and breaks a test chooses (a run started before the last posting, a break dated by its
period, journal or document, one resolved last month). It is the one place that does so; the tests that run
the engine itself (`billing_sync.services.reconciliation_run`) are in tests/portal/test_close_services.py.
"""
from __future__ import annotations

import datetime

from django.utils import timezone

from billing_sync.models import ReconciliationBreak, ReconciliationRun
from portal.selectors.close import month_bounds


def reconciled(entity, year: int, month: int, *, started_at: datetime.datetime | None = None,
               breaks: tuple[dict, ...] = (), full: bool = True) -> ReconciliationRun:
    """A finished full reconciliation run of `entity` over the whole month, started at `started_at` (default
    now), with `breaks` opened by it: dicts of ReconciliationBreak fields (`code` and what it names: `period`,
    `journal`, `document`, `account`, ...; `opened_at` defaults to the run's start; a break given
    `resolved_at` is resolved, as a later run that found it matched leaves it)."""
    started_at = started_at or timezone.now()
    first, last = month_bounds(year, month)
    run = ReconciliationRun.objects.create(
        entity=entity, date_from=first, date_to=last, full=full, status=ReconciliationRun.Status.FINISHED,
        requested_by="test", started_at=started_at, finished_at=started_at + datetime.timedelta(seconds=5),
        breaks={b["code"]: 1 for b in breaks})
    for index, spec in enumerate(breaks):
        spec = dict(spec)
        key = spec.pop("key", f"{spec['code']}:{run.pk}:{index}")
        if spec.get("resolved_at"):
            spec.setdefault("status", ReconciliationBreak.Status.RESOLVED)
            spec.setdefault("resolution", "matched by a later run")
            spec.setdefault("resolved_by_run", run)
        ReconciliationBreak.objects.create(**{"entity": entity, "key": key, "opened_by_run": run, "last_seen_run": run,
                                              "opened_at": started_at, "expected": {"amount": "1.00"},
                                              "actual": {"amount": "0.00"}, **spec})
    return run
