"""Concurrent per-journal posting (ledger.services.drain) on real infrastructure: a real prefork worker of two
processes on a private Redis, the ERPNext stand-in, events in through the real API (the harness of conftest.py).

1. Many journals in flight against a hostile ERP (429 storms, 500s, commit-then-502, commit-then-hang, commit-then-
   reset): every journal posted, no ERP document created twice (not even sent twice), the books tie out.
2. The shared token bucket: the ERP sees at most the configured rate from both processes together, and nothing
   for the Retry-After of a 429 while in-flight journals keep coming.
3. A SIGKILL of the whole worker while a drain has many journals in flight: nothing posted twice, and everything
   posted after the restart (the journals it held are looked up first, one at a time).
"""
import threading
import time

import pytest

from ledger.models import Journal, PostingAttempt
from tests import factories as f
from tests.faults.test_posting_faults import all_in, assert_books, describe, setup_customers
from tests.helpers import send_accepted

pytestmark = [pytest.mark.worker, pytest.mark.slow]


def _invoices(customers, count):
    return [f.invoice(customer_id=customers[n % len(customers)], lines=[(f"{100 + n}.00", "1.00")])
            for n in range(count)]


def _max_overlap(intervals) -> int:
    points = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    best = current = 0
    for _, step in points:
        current += step
        best = max(best, current)
    return best


def _max_in_window(stamps, window: float) -> int:
    stamps = sorted(stamps)
    best, start = 0, 0
    for end, stamp in enumerate(stamps):
        while stamp - stamps[start] > window:
            start += 1
        best = max(best, end - start + 1)
    return best


def _configure(erp, **extra) -> None:
    from ledger import services as ledger  # noqa: PLC0415 - the entity as the `erp` fixture set it up, plus extra
    entity = erp.entity
    entity.refresh_from_db()
    ledger.entity_configure_erp(entity=entity, connector="erpnext", actor="test",
                                erp_settings={**entity.erp_settings, **extra})


# 1. Hostile ERP, many in flight -------------------------------------------------------------------------


def test_concurrent_posting_against_a_hostile_erp_creates_nothing_twice(harness, workers, erp, source):
    erp.latency = 0.02
    workers.start(TIEOUT_POSTING_IN_FLIGHT=8, TIEOUT_POSTING_MAX_RETRIES=20, TIEOUT_POSTING_MAX_DELIVERIES=25)
    customers = setup_customers(source, harness, 4)
    for kind in ["rate_limit", "commit_then_502", "error_500", "commit_then_timeout", "rate_limit", "rate_limit",
                 "commit_then_reset", "error_503", "commit_then_502", "rate_limit", "commit_then_timeout",
                 "error_500", "rate_limit", "commit_then_502"]:
        erp.faults.add(kind)
        erp.faults.add("none", 2)  # a few good answers between the bad ones (an unknown kind is no fault)
    event_ids = [send_accepted(source, payload)["id"] for payload in _invoices(customers, 48)]
    took = harness.wait_until(all_in(event_ids, {"posted"}), timeout=150, what="every invoice posted",
                              diagnose=describe(event_ids))
    attempts = list(PostingAttempt.objects.exclude(started_at=None).exclude(finished_at=None)
                    .values_list("started_at", "finished_at"))
    overlap = _max_overlap(attempts)
    print(f"\n[hostile] {len(event_ids)} journals posted in {took:.1f}s; at most {overlap} attempts at once; "
          f"{len(erp.rate_limited_at)} 429s")
    assert overlap > 2, "journals were posted concurrently"
    assert erp.faults.take() is None, "every scripted fault was met"
    assert max(erp.creates.values()) == 1, "no journal was sent to the ERP twice"
    ambiguous = PostingAttempt.objects.filter(outcome=PostingAttempt.Outcome.AMBIGUOUS).values_list("journal_id")
    assert ambiguous.count() >= 5  # the commit-then-* answers ...
    assert set(PostingAttempt.objects.filter(journal_id__in=ambiguous, outcome=PostingAttempt.Outcome.ALREADY_POSTED)
               .values_list("journal_id", flat=True)) == {j for (j,) in ambiguous}  # ... found by their look-up
    assert PostingAttempt.objects.filter(outcome=PostingAttempt.Outcome.TRANSIENT, message__contains="429").exists()
    assert_books(erp)


# 2. The shared token bucket ----------------------------------------------------------------------------


def test_both_processes_together_keep_to_the_erps_rate_and_pause_on_retry_after(harness, workers, erp, source):
    rate, retry_after = 8, 2
    _configure(erp, requests_per_second=rate, burst=2)
    erp.retry_after = str(retry_after)
    workers.start(TIEOUT_POSTING_IN_FLIGHT=8, TIEOUT_POSTING_DRAINERS=2)
    customers = setup_customers(source, harness, 4)
    erp.faults.add("none", 12)
    erp.faults.add("rate_limit")  # the 13th create is told to wait `retry_after` seconds
    started = time.monotonic()
    event_ids = [send_accepted(source, payload)["id"] for payload in _invoices(customers, 32)]
    harness.wait_until(all_in(event_ids, {"posted"}), timeout=90, what="every invoice posted",
                       diagnose=describe(event_ids))
    stamps = [at for at, method, path in erp.arrivals if at >= started and method in ("POST", "PUT", "GET")
              and "Journal" in path]
    [limited] = erp.rate_limited_at
    paused = [at for at in stamps if limited + 0.25 < at < limited + retry_after - 0.1]
    window = _max_in_window(stamps, 1.0)
    print(f"\n[bucket] {len(stamps)} ERP requests in {max(stamps) - min(stamps):.1f}s; at most {window} in any "
          f"second (rate {rate}/s, burst 2); {len(paused)} during the {retry_after}s Retry-After")
    assert window <= rate + 2 + 1, "the two processes together kept to the rate (one burst at most)"
    assert not paused, "nothing was sent while the ERP's Retry-After ran (beyond requests already in flight)"
    assert len(stamps) / (max(stamps) - min(stamps)) <= rate * 1.2
    assert max(erp.creates.values()) == 1
    assert_books(erp)


# 3. SIGKILL with many journals in flight ----------------------------------------------------------------


def test_sigkill_mid_drain_posts_nothing_twice_and_everything_after_recovery(harness, workers, erp, source,
                                                                            settings):
    erp.latency = 0.5  # slower than events arrive: journals pile up in flight
    # The dead drainer's doorbell expires after this (the test process's sweep rings it too).
    settings.TIEOUT_POSTING_WAKE_TTL = 5
    workers.start(TIEOUT_POSTING_IN_FLIGHT=8, TIEOUT_POSTING_WAKE_TTL=5)
    customers = setup_customers(source, harness, 4)
    killed = threading.Event()
    committed = []

    def kill_mid_drain(doc) -> bool:
        # The ERP has stored this entry; with a dozen stored and others in flight, the whole worker dies.
        committed.append(doc["cheque_no"])
        if len(committed) == 12 and not killed.is_set():
            killed.set()
            workers.current.kill()
            return True
        return False

    erp.on_commit_hook = kill_mid_drain
    # One batch: the invoices are processed in chunks and their journals are ready together, so the drain has
    # its eight in flight whatever the machine's load (sent one by one, a slow worker let them trickle in).
    response = source.post("/api/v1/events/batch", {"events": _invoices(customers, 40)}, format="json")
    assert response.status_code == 200, response.content
    assert {r["status"] for r in response.json()["results"]} == {202}, response.content
    event_ids = [r["body"]["id"] for r in response.json()["results"]]
    harness.wait_until(killed.is_set, timeout=60, what="the worker killed mid-drain", restart=False, sweep=False,
                       diagnose=describe(event_ids))
    victim = workers.current
    victim.reap()
    erp.on_commit_hook = None
    held = list(Journal.objects.filter(status=Journal.Status.POSTING).values_list("pk", flat=True))
    in_erp_unacknowledged = [pk for pk in held if erp.by_cheque(str(pk))]
    print(f"\n[sigkill drain] {len(held)} journals held by the dead drains, {len(in_erp_unacknowledged)} of them "
          f"already in the ERP")
    assert len(held) > 1, "the drain had several journals in flight"
    assert in_erp_unacknowledged, "at least the last one reached the ERP without its answer being stored"

    workers.start()
    took = harness.wait_until(all_in(event_ids, {"posted"}), timeout=90, what="every invoice posted",
                              diagnose=describe(event_ids))
    print(f"[sigkill drain] everything posted {took:.1f}s after the restart")
    assert max(erp.creates.values()) == 1, "no journal was sent to the ERP twice"
    for pk in in_erp_unacknowledged:
        last = Journal.objects.get(pk=pk).attempts.order_by("started_at").last()
        assert last.outcome == PostingAttempt.Outcome.ALREADY_POSTED
    assert not PostingAttempt.objects.filter(outcome=PostingAttempt.Outcome.IN_PROGRESS).exists()
    assert_books(erp)
