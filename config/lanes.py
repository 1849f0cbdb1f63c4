"""Event lanes: the processing queue is partitioned into `TIEOUT_LANES` Celery queues `events.0` ...
`events.<N-1>`, and an event goes to the lane of a stable hash (CRC-32, the same in every process and on
every machine, unlike Python's salted `hash()`) of its route key, so that the events of one customer and its
documents travel together. A worker consuming the default `celery` queue consumes every lane unless it is
pinned (`TIEOUT_WORKER_LANES=0-3`, or naming lanes in `-Q`); `config.celery` applies this at worker start.
Lanes are for throughput and locality: per-document order is enforced under the event's row lock
(`billing_sync.ordering`) whichever lane, process or machine takes an event."""
from __future__ import annotations

import zlib

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

PREFIX = "events."
DEFAULT_QUEUE = "celery"  # a worker consuming this queue consumes the lanes too, unless pinned
WORKER_LANES_ENV = "TIEOUT_WORKER_LANES"


def count() -> int:
    return max(1, int(settings.TIEOUT_LANES))


def lane_of(route_key: str, lanes: int | None = None) -> int:
    return zlib.crc32(route_key.encode()) % (lanes or count())


def queue_name(lane: int) -> str:
    return f"{PREFIX}{lane}"


def all_queues(lanes: int | None = None) -> list[str]:
    return [queue_name(lane) for lane in range(lanes or count())]


def parse(spec: str, lanes: int | None = None) -> list[int]:
    """Lane numbers from `all`, `none`, or a list of numbers and ranges (`0-3,6`); refused if out of range."""
    total = lanes or count()
    spec = (spec or "").strip().lower()
    if spec in ("", "all", "*"):
        return list(range(total))
    if spec == "none":
        return []
    chosen: set[int] = set()
    for part in spec.split(","):
        first, sep, last = part.strip().partition("-")
        try:
            low, high = int(first), int(last if sep else first)
        except ValueError:
            raise ImproperlyConfigured(f"{WORKER_LANES_ENV}: {part!r} is not a lane number or range") from None
        if not 0 <= low <= high < total:
            raise ImproperlyConfigured(f"{WORKER_LANES_ENV}: {part!r} is outside lanes 0-{total - 1} (TIEOUT_LANES)")
        chosen.update(range(low, high + 1))
    return sorted(chosen)


def worker_queues(consumed: list[str], environ) -> list[str]:
    """The lane queues a worker adds to those it consumes (`-Q`).

    `TIEOUT_WORKER_LANES` decides when set. Otherwise a worker that names lanes in `-Q` keeps just those,
    and a worker of the default queue takes every lane (a `-Q posting` worker takes none).
    """
    spec = environ.get(WORKER_LANES_ENV)
    if spec is not None:
        return [queue_name(lane) for lane in parse(spec)]
    if any(name.startswith(PREFIX) for name in consumed) or DEFAULT_QUEUE not in consumed:
        return []
    return all_queues()
