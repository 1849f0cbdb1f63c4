"""`celery` with PostgreSQL statements counted (run by bench/drain.py instead of the `celery` command).

Patches psycopg's cursor `execute`, `executemany` and `copy` and the connection's `commit` before Celery
starts, so every prefork child inherits the patch; each process adds its counts to Redis hash
`bench:statements` (fields `statements`, `commits`) every 100 statements and from a timer every second,
so the bench reads them while the worker runs. Arguments are the `celery` command's.
"""
import os
import sys
import threading

import psycopg
import redis

REDIS_URL = os.environ["BENCH_COUNT_REDIS_URL"]
KEY = "bench:statements"
_counts = {"statements": 0, "commits": 0}
_lock = threading.Lock()
_client = {"pid": None, "redis": None, "timer": None}


def _flush() -> None:
    with _lock:
        pending = {k: v for k, v in _counts.items() if v}
        for k in pending:
            _counts[k] = 0
    if not pending:
        return
    if _client["pid"] != os.getpid():
        _client.update(pid=os.getpid(), redis=redis.Redis.from_url(REDIS_URL))
    pipe = _client["redis"].pipeline()
    for field, value in pending.items():
        pipe.hincrby(KEY, field, value)
    pipe.execute()


def _tick() -> None:
    while True:
        threading.Event().wait(1.0)
        try:
            _flush()
        except Exception:  # noqa: BLE001 - best effort: a bench counter
            pass


def _count(field: str) -> None:
    with _lock:
        _counts[field] += 1
        due = _counts["statements"] >= 100
        started = _client["timer"] == os.getpid()
    if not started:  # first use in this (forked) process: its own timer thread
        _client["timer"] = os.getpid()
        threading.Thread(target=_tick, daemon=True).start()
    if due:
        _flush()


def _wrap(cls, name: str, field: str) -> None:
    original = getattr(cls, name)

    def counted(self, *args, **kwargs):
        _count(field)
        return original(self, *args, **kwargs)

    setattr(cls, name, counted)


for _name in ("execute", "executemany", "copy"):
    _wrap(psycopg.Cursor, _name, "statements")
_wrap(psycopg.Connection, "commit", "commits")

if __name__ == "__main__":
    from celery.__main__ import main

    sys.argv[0] = "celery"
    sys.exit(main())
