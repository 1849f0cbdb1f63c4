"""The ERP token bucket (ledger.connectors.ratelimit) on real Redis, shared by two OS processes: together they get
the configured rate (plus one burst), and a pause (a 429's Retry-After) stops both of them."""
import multiprocessing
import time
import uuid

import pytest

from ledger.connectors.ratelimit import TokenBucket, configured_rate

RATE = 20.0
BURST = 4.0
SECONDS = 2.0


def _taker(key: str, until: float, out, pause_at: float | None, pause_for: float) -> None:
    """In a forked process: take one token at a time until `until` (wall clock), reporting each grant's time;
    pause the bucket once at `pause_at`."""
    bucket = TokenBucket(key, rate=RATE, burst=BURST)
    grants, paused = [], None
    while time.time() < until:
        if pause_at is not None and paused is None and time.time() >= pause_at:
            bucket.pause(pause_for)
            paused = time.time()
        granted, wait = bucket.take(1)
        if granted:
            grants.append(time.time())
        else:
            time.sleep(min(wait, 0.05))
    out.put((grants, paused))


def _run_two(key: str, *, pause_at=None, pause_for=0.0, seconds=SECONDS):
    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()
    until = time.time() + seconds
    processes = [ctx.Process(target=_taker, args=(key, until, out, pause_at if i == 0 else None, pause_for))
                 for i in range(2)]
    for process in processes:
        process.start()
    results = [out.get(timeout=seconds + 10) for _ in processes]
    for process in processes:
        process.join(timeout=10)
    return results


def _max_in_window(stamps: list[float], window: float) -> int:
    stamps = sorted(stamps)
    best, start = 0, 0
    for end, stamp in enumerate(stamps):
        while stamp - stamps[start] > window:
            start += 1
        best = max(best, end - start + 1)
    return best


def test_two_processes_together_stay_at_the_rate():
    key = f"test:{uuid.uuid4().hex}"
    started = time.time()
    results = _run_two(key)
    grants = [stamp for process_grants, _ in results for stamp in process_grants]
    assert all(process_grants for process_grants, _ in results), "both processes got tokens"
    elapsed = max(grants) - started
    # One burst, then the rate: never more, and not much less (the two processes compete for every token).
    assert len(grants) <= BURST + RATE * elapsed + 1, (len(grants), elapsed)
    assert len(grants) >= 0.8 * RATE * SECONDS, len(grants)
    assert _max_in_window(grants, 1.0) <= BURST + RATE + 1


def test_a_pause_stops_every_process_for_its_length():
    key = f"test:{uuid.uuid4().hex}"
    pause_for = 1.0
    results = _run_two(key, pause_at=time.time() + 0.5, pause_for=pause_for, seconds=2.5)
    paused = next(p for _, p in results if p is not None)
    grants = [stamp for process_grants, _ in results for stamp in process_grants]
    during = [stamp for stamp in grants if paused + 0.02 < stamp < paused + pause_for - 0.02]
    assert not during, f"tokens granted during the pause: {[round(s - paused, 3) for s in during]}"
    assert any(stamp < paused for stamp in grants) and any(stamp > paused + pause_for for stamp in grants)
    # After the pause the bucket refills from empty: no burst of pent-up tokens.
    after = [stamp for stamp in grants if stamp >= paused + pause_for]
    assert _max_in_window(after, 0.5) <= RATE * 0.5 + 2


def test_give_back_returns_unused_tokens():
    bucket = TokenBucket(f"test:{uuid.uuid4().hex}", rate=1.0, burst=5.0)
    assert bucket.take(5)[0] == 5
    assert bucket.take(1)[0] == 0
    bucket.give_back(3)
    assert bucket.take(5)[0] == 3


@pytest.mark.parametrize("erp_settings,expected", [({}, 50.0), ({"requests_per_second": "7"}, 7.0)])
def test_the_rate_is_the_entitys_else_the_connectors(settings, erp_settings, expected):
    settings.TIEOUT_ERP_REQUESTS_PER_SECOND = "erpnext=50,netsuite=10,*=30"
    assert configured_rate("erpnext", erp_settings) == expected
    assert configured_rate("odoo", {}) == 30.0
