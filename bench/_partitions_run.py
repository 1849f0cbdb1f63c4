"""In-process helper of bench/partitions.py: times single-event receives (the lean statement) and batches of
events through `billing_sync.services` on the bench database as it is migrated now; prints one JSON line."""
import json
import os
import sys
import time
import uuid

import django

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.prod")
django.setup()

from billing_sync import services  # noqa: E402
from billing_sync.services import processing  # noqa: E402

processing.events_schedule = lambda ids: None  # receiving only: nothing handed to processing


def _event(tag: str, n: int) -> dict:
    return {"schema_version": "1", "source_system": "bench", "event_id": f"{tag}-{n}", "type": "customer.upserted",
            "entity": "US01", "occurred_at": "2026-11-02T10:00:00Z",
            "data": {"customer_id": f"cus_{tag}_{n}", "name": "Bench Co", "email": "ap@bench.test", "country": "US",
                     "version": 1}}


def main(singles: int, batches: int) -> None:
    tag = uuid.uuid4().hex[:8]
    started = time.perf_counter()
    for n in range(singles):
        answer = services.event_receive(body=json.dumps(_event(tag, n)).encode(), user=None, headers={})
        assert answer.status == 202, answer.body
    single = singles / (time.perf_counter() - started)
    started = time.perf_counter()
    for b in range(batches):
        body = json.dumps({"events": [_event(f"{tag}b{b}", n) for n in range(1000)]}).encode()
        answer = services.event_batch_receive(body=body, user=None, headers={})
        assert answer.status == 200
    batch = batches * 1000 / (time.perf_counter() - started)
    print(json.dumps({"single_per_s": round(single, 1), "batch_per_s": round(batch, 1)}))


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]))
