"""Staff web UI response times with 1,000,000 events and 1,000,000 exceptions in the database.

A dedicated bench database (migrated, entities US01, GB01 and DE01, a finance_ops user with a password
and three more as exception owners) is seeded set-based by `_ui_seed.py` (a few minutes at most on two
cores), vacuumed and analysed. gunicorn with production settings then serves it, and one signed-in
session (the real login page: GET for the CSRF token, POST username and password) requests, one at a
time on a keep-alive connection, after a warm-up:

* `/exceptions/` (the queue's first page), `/exceptions/?code=over_application&entity=US01` (a filtered
  page) and `/exceptions/<id>/` (an exception's trace): goal p95 < 300 ms each;
* `/` (the dashboard) as most requests find it (figures cached for a few seconds), as the request that
  refreshes them finds it (the figures deleted before every request, the 14-day history still cached)
  and cold (everything deleted, so each request reads all of it): goal p95 < 500 ms;
* for information, with no goal: the period close pages (every entity's months, one month with its failing
  objects; their checks are read live), the admin's event and exception lists (estimated counts) and /metrics.

It prints p50/p95/max per page and whether the goal is met. A page that does not exist yet (404) is
reported and skipped. Knobs: BENCH_UI_EVENTS (1,000,000), BENCH_UI_REQUESTS (50), BENCH_UI_WARMUP (5),
and the common ones (BENCH_PG_URL, BENCH_KEEP, WEB_CONCURRENCY, ...); BENCH_DB defaults to tieout_bench_ui
and BENCH_REDIS_URL to Redis database 8 here.
"""
from __future__ import annotations

import http.client
import os
import re
import secrets
import time
from urllib.parse import urlencode

import redis

# A database and Redis database of its own (before _common reads them), so that it never meets another
# script's run on the same machine.
os.environ.setdefault("BENCH_DB", "tieout_bench_ui")
os.environ.setdefault("BENCH_REDIS_URL", "redis://127.0.0.1:6379/8")

import _common as c  # noqa: E402
import _ui_seed  # noqa: E402

EVENTS = int(os.environ.get("BENCH_UI_EVENTS", "1000000"))
REQUESTS = int(os.environ.get("BENCH_UI_REQUESTS", "50"))
WARMUP = int(os.environ.get("BENCH_UI_WARMUP", "5"))
USERNAME = "bench-ops"
# Bounded: the whole measuring phase stops after this many seconds whatever the server does.
MEASURE_BUDGET = float(os.environ.get("BENCH_UI_BUDGET", "600"))


class Session:
    """One keep-alive connection carrying a browser's cookies (session and CSRF)."""

    def __init__(self, port: int):
        self.port = port
        self.cookies: dict[str, str] = {}
        self.conn = http.client.HTTPConnection(c.HOST, port, timeout=60)

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
        headers = dict(headers or {})
        if self.cookies:
            headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        for attempt in (1, 2):
            try:
                self.conn.request(method, path, body=body, headers=headers)
                response = self.conn.getresponse()
                data = response.read()
                break
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                # gunicorn recycles a worker now and then (max_requests): reconnect once.
                self.conn.close()
                self.conn = http.client.HTTPConnection(c.HOST, self.port, timeout=60)
                if attempt == 2:
                    raise
        for name, value in response.getheaders():
            if name.lower() == "set-cookie":
                key, _, rest = value.partition("=")
                self.cookies[key.strip()] = rest.split(";", 1)[0]
        return response.status, dict((k.lower(), v) for k, v in response.getheaders()), data

    def get(self, path: str):
        return self.request("GET", path)

    def sign_in(self, username: str, password: str) -> None:
        status, _headers, page = self.get("/accounts/login/")
        if status != 200:
            raise SystemExit(f"bench: /accounts/login/ answered {status}")
        token = re.search(rb'name="csrfmiddlewaretoken" value="([^"]+)"', page).group(1).decode()
        body = urlencode({"csrfmiddlewaretoken": token, "username": username, "password": password,
                          "next": "/"}).encode()
        status, headers, _ = self.request("POST", "/accounts/login/", body, {
            "Content-Type": "application/x-www-form-urlencoded", "Referer": f"http://{c.HOST}:{self.port}/accounts/login/"})
        if status != 302 or "sessionid" not in self.cookies:
            raise SystemExit(f"bench: sign-in failed ({status}, {headers.get('location')})")


def _flush_dashboard_cache(*, history: bool = True) -> None:
    """Delete the cached dashboard figures (and the cached 14-day history unless history=False)."""
    client = redis.Redis.from_url(c.REDIS_URL)
    try:
        keys = [k for k in client.scan_iter(match="*dashboard:*") if history or b":history:" not in k]
        if keys:
            client.delete(*keys)
    finally:
        client.close()


def _flush_figures() -> None:
    _flush_dashboard_cache(history=False)


def _last_month() -> str:
    today = time.gmtime()
    year, month = (today.tm_year, today.tm_mon - 1) if today.tm_mon > 1 else (today.tm_year - 1, 12)
    return f"{year}-{month:02d}"


def measure(session: Session, path: str, *, before=None, deadline: float) -> dict | None:
    status, _h, _b = session.get(path)
    if status == 404:
        return None
    if status != 200:
        raise SystemExit(f"bench: GET {path} answered {status}")
    for _ in range(WARMUP):
        session.get(path)
    times = []
    for _ in range(REQUESTS):
        if time.monotonic() > deadline:
            break
        if before:
            before()
        started = time.perf_counter()
        status, _h, _b = session.get(path)
        times.append((time.perf_counter() - started) * 1000)
        if status != 200:
            raise SystemExit(f"bench: GET {path} answered {status}")
    return {"n": len(times), "p50": c.percentile(times, 50), "p95": c.percentile(times, 95), "max": max(times)}


def main() -> None:
    c.say(f"bench/ui.py: staff pages over {EVENTS:,} events and {EVENTS:,} exceptions")
    c.say(c.machine())
    password = secrets.token_urlsafe(18)
    env = c.bench_env(BENCH_UI_PASSWORD=password)
    c.prepare(env)
    for code, currency in (("GB01", "GBP"), ("DE01", "EUR")):
        c.manage("setup_entity", code, "--currency", currency, env=env)
    c.manage("issue_token", USERNAME, "--role", "finance_ops", "--password-env", "BENCH_UI_PASSWORD", env=env)
    for n in (1, 2, 3):
        c.manage("issue_token", f"bench-owner-{n}", "--role", "finance_ops", env=env)
    owners = [row[0] for row in c.psql("SELECT id FROM auth_user WHERE username LIKE 'bench-%' ORDER BY id",
                                      db=c.DB_NAME)]
    c.say("seeding (set-based SQL):")
    seeded = _ui_seed.seed(c.database_url(), events=EVENTS, owner_ids=owners, say=c.say)
    c.say(f"  {seeded['unresolved']:,} unresolved exceptions; {seeded['journals']:,} journals")

    _server, port = c.start_gunicorn(env)
    session = Session(port)
    session.sign_in(USERNAME, password)
    c.say(f"signed in as {USERNAME} (finance_ops) through /accounts/login/; {REQUESTS} requests per page after "
          f"{WARMUP} warm-up, one at a time on one keep-alive connection")
    c.say("")
    pages = [
        ("queue, first page", "/exceptions/", 300, None),
        ("queue, filtered", "/exceptions/?code=over_application&entity=US01", 300, None),
        ("exception trace", f"/exceptions/{seeded['open_exception_id']}/", 300, None),
        ("dashboard", "/", 500, None),
        ("dashboard, refresh (history cached)", "/", 500, _flush_figures),
        ("dashboard, cold (nothing cached)", "/", 500, _flush_dashboard_cache),
        ("close: every entity's months (live checks)", "/close/", None, None),
        ("close: one month (live checks, failing objects)", f"/close/US01/{_last_month()}/", None, None),
        ("admin: events", "/admin/billing_sync/event/", None, None),
        ("admin: exceptions", "/admin/exceptions_queue/exceptionrecord/", None, None),
        ("admin: events, failed in the last 24 h", "/admin/billing_sync/event/?received=24h&outcome=failed",
         None, None),
        ("metrics", "/metrics", None, None),
    ]
    deadline = time.monotonic() + MEASURE_BUDGET
    c.say(f"{'page':<42} {'n':>4} {'p50 ms':>8} {'p95 ms':>8} {'max ms':>8}  goal")
    for name, path, goal, before in pages:
        result = measure(session, path, before=before, deadline=deadline)
        if result is None:
            c.say(f"{name:<42} (404: page not there yet, skipped)")
            continue
        verdict = "—" if goal is None else (f"p95 < {goal} ms: {'met' if result['p95'] < goal else 'NOT met'}")
        c.say(f"{name:<42} {result['n']:>4} {result['p50']:>8.1f} {result['p95']:>8.1f} {result['max']:>8.1f}  "
              f"{verdict}")
    c.say("")
    c.say(f"load average {c.load():.2f} at the end")


if __name__ == "__main__":
    main()
