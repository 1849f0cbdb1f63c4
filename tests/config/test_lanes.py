"""Event lanes (config/lanes.py): a stable hash of the route key picks one of TIEOUT_LANES queues, the same in
every process; a worker of the default queue consumes every lane unless pinned, and the Celery start-up hook
adds them to the queues `-Q` selected."""
import subprocess
import sys
import types
import zlib
from pathlib import Path

import pytest
from celery import Celery
from django.core.exceptions import ImproperlyConfigured

from config import lanes
from config.celery import _add_event_lanes

BASE_DIR = Path(__file__).resolve().parent.parent.parent


def test_the_lane_is_crc32_of_the_route_key_modulo_the_lane_count(settings):
    settings.TIEOUT_LANES = 8
    key = "customer:billing-prod:cus_1"
    assert lanes.lane_of(key) == zlib.crc32(key.encode()) % 8
    assert lanes.lane_of(key, 3) == zlib.crc32(key.encode()) % 3
    assert {lanes.lane_of(f"customer:s:c{n}") for n in range(200)} == set(range(8))  # every lane gets work


def test_the_lane_is_the_same_in_another_process_whatever_its_hash_seed(settings):
    """Web and worker machines must agree: Python's hash() of a str changes with PYTHONHASHSEED, CRC-32 does not."""
    settings.TIEOUT_LANES = 8
    key = "customer:billing-prod:cus_42"
    code = f"from config.lanes import lane_of; print(lane_of({key!r}, 8))"
    answers = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=BASE_DIR,
                              env={"PYTHONHASHSEED": str(seed)}).stdout.strip() for seed in (1, 2, 3)}
    assert answers == {str(lanes.lane_of(key))}


def test_queue_names(settings):
    settings.TIEOUT_LANES = 4
    assert lanes.queue_name(3) == "events.3"
    assert lanes.all_queues() == ["events.0", "events.1", "events.2", "events.3"]


@pytest.mark.parametrize(("spec", "expected"), [
    ("", [0, 1, 2, 3, 4, 5, 6, 7]), ("all", [0, 1, 2, 3, 4, 5, 6, 7]), ("none", []), ("3", [3]),
    ("0-3", [0, 1, 2, 3]), ("6, 0-1", [0, 1, 6]), ("2-2,2", [2]),
])
def test_worker_lane_specs(settings, spec, expected):
    settings.TIEOUT_LANES = 8
    assert lanes.parse(spec) == expected


@pytest.mark.parametrize("spec", ["8", "5-9", "x", "3-1", "-1"])
def test_a_lane_outside_the_count_or_not_a_number_is_refused(settings, spec):
    settings.TIEOUT_LANES = 8
    with pytest.raises(ImproperlyConfigured, match="TIEOUT_WORKER_LANES"):
        lanes.parse(spec)


def test_which_lanes_a_worker_adds(settings):
    settings.TIEOUT_LANES = 4
    every = ["events.0", "events.1", "events.2", "events.3"]
    assert lanes.worker_queues(["celery", "posting", "callbacks"], {}) == every  # the default worker: all
    assert lanes.worker_queues(["posting"], {}) == []  # a posting-only worker processes no events
    assert lanes.worker_queues(["celery", "events.1"], {}) == []  # pinned in -Q: just those
    assert lanes.worker_queues(["celery"], {"TIEOUT_WORKER_LANES": "2-3"}) == ["events.2", "events.3"]
    assert lanes.worker_queues(["posting"], {"TIEOUT_WORKER_LANES": "0"}) == ["events.0"]
    assert lanes.worker_queues(["celery"], {"TIEOUT_WORKER_LANES": "none"}) == []


def _worker_with(queues):
    app = Celery("lanes-test", set_as_current=False)
    app.amqp.queues.select(queues)
    return types.SimpleNamespace(app=app)


def test_the_start_up_hook_adds_the_lanes_to_the_selected_queues(settings, monkeypatch):
    settings.TIEOUT_LANES = 3
    monkeypatch.delenv("TIEOUT_WORKER_LANES", raising=False)
    worker = _worker_with(["celery", "posting"])
    _add_event_lanes(sender="w@h", instance=worker)
    assert sorted(worker.app.amqp.queues.consume_from) == ["celery", "events.0", "events.1", "events.2", "posting"]

    monkeypatch.setenv("TIEOUT_WORKER_LANES", "1")
    pinned = _worker_with(["celery"])
    _add_event_lanes(sender="w@h", instance=pinned)
    assert sorted(pinned.app.amqp.queues.consume_from) == ["celery", "events.1"]
