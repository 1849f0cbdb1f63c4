"""The after-commit dispatcher publishes buffered event ids in batches (a flush's messages in one Redis round trip),
and everything it holds at exit."""
import base64
import json
import threading
import time
import uuid

import kombu.transport.redis
import pytest
import redis

from billing_sync import dispatch, tasks
from config import lanes
from config.celery import app
from tests.conftest import _broker_url, _reset_broker_pools
from tests.helpers import wait_until


def test_buffered_ids_are_published_in_one_batch_by_the_background_thread(monkeypatch):
    published = []
    monkeypatch.setattr(dispatch, "publish", lambda ids, routes=None: published.append(list(ids)))
    dispatcher = dispatch._Dispatcher()
    for n in range(5):
        dispatcher.add([f"e{n}"])
    wait_until(lambda: sum(map(len, published)) >= 5, timeout=2, interval=0.01, message=str(published))
    assert sorted(i for batch in published for i in batch) == [f"e{n}" for n in range(5)]
    assert len(published) <= 2  # a burst travels together


def test_flush_publishes_what_is_held(monkeypatch):
    published = []
    monkeypatch.setattr(dispatch, "publish", lambda ids, routes=None: published.append(list(ids)))
    dispatcher = dispatch._Dispatcher()
    dispatcher.buffer = ["a", "b"]
    dispatcher.flush()
    assert published == [["a", "b"]]
    assert dispatcher.buffer == []


def test_publish_survives_a_broker_outage(monkeypatch):
    def down(*args, **kwargs):
        raise ConnectionError("broker down")

    monkeypatch.setattr(tasks.process_events, "apply_async", down)
    dispatch.publish(["x"])  # logged, not raised: the sweep schedules accepted events again


def test_the_exits_flush_waits_for_the_publish_in_flight(monkeypatch):
    """The background thread has taken the ids out of the buffer and is publishing them when the process exits:
    the exit's flush waits for it (and then publishes what came in meanwhile), so nothing dies with the thread."""
    started, release, published = threading.Event(), threading.Event(), []

    def slow_publish(ids, routes=None):
        if not started.is_set():  # the thread's publish: slow; any later one returns at once
            started.set()
            release.wait(5)
        published.append(list(ids))

    monkeypatch.setattr(dispatch, "publish", slow_publish)
    monkeypatch.setattr(dispatch, "FLUSH_INTERVAL", 0.0)
    dispatcher = dispatch._Dispatcher()
    dispatcher.add(["a", "b"])
    assert started.wait(5)  # the thread holds ["a", "b"], publishing
    dispatcher.buffer.append("c")  # what a request added meanwhile
    exit_flush = threading.Thread(target=dispatcher.flush)
    exit_flush.start()
    exit_flush.join(0.3)
    assert exit_flush.is_alive()  # waiting for the publish in flight, not returning on an empty buffer
    release.set()
    exit_flush.join(5)
    assert sorted(sum(published, [])) == ["a", "b", "c"]


def test_a_burst_spread_over_the_interval_travels_together(monkeypatch):
    """Requests arriving one after another within the interval share a flush: the thread sleeps out the interval
    instead of waking for the next arrival (which had made a flush, a route look-up and a publish per event)."""
    published = []
    monkeypatch.setattr(dispatch, "publish", lambda ids, routes=None: published.append(list(ids)))
    monkeypatch.setattr(dispatch, "FLUSH_INTERVAL", 0.2)
    dispatcher = dispatch._Dispatcher()
    for n in range(5):
        dispatcher.add([f"e{n}"], {f"e{n}": f"customer:s:c{n}"})
        time.sleep(0.01)
    wait_until(lambda: sum(map(len, published)) >= 5, timeout=3, interval=0.01, message=str(published))
    assert published == [[f"e{n}" for n in range(5)]]


def test_the_routes_given_travel_with_their_ids(monkeypatch):
    published = []
    monkeypatch.setattr(dispatch, "publish", lambda ids, routes=None: published.append((list(ids), routes)))
    dispatcher = dispatch._Dispatcher()
    dispatcher.buffer = ["a", "b"]
    dispatcher.routes = {"a": "customer:s:c1"}
    dispatcher.flush()
    assert published == [(["a", "b"], {"a": "customer:s:c1"})]
    assert dispatcher.routes == {}


@pytest.fixture
def redis_broker(settings, monkeypatch):
    """The process's own test broker (Redis), with lane queues of a name no test worker consumes."""
    broker_url = _broker_url(settings.REDIS_URL)
    client = redis.Redis.from_url(broker_url)
    previous = app.conf.broker_url
    app.conf.broker_url = broker_url
    _reset_broker_pools(app)
    monkeypatch.setattr(lanes, "PREFIX", f"test-dispatch-{uuid.uuid4().hex[:8]}.")
    settings.CELERY_TASK_ALWAYS_EAGER = False
    eager, app.conf.task_always_eager = app.conf.task_always_eager, False
    try:
        yield client
    finally:
        for key in client.keys(f"{lanes.PREFIX}*"):
            client.delete(key)
        for key in client.keys(f"_kombu.binding.{lanes.PREFIX}*"):
            client.delete(key)
        client.close()
        app.conf.task_always_eager = eager
        app.conf.broker_url = previous
        _reset_broker_pools(app)


def test_a_flush_reaches_every_lane_in_one_redis_round_trip(redis_broker, settings, monkeypatch):
    settings.TIEOUT_LANES = 8
    routes = {f"id{n}": f"customer:s:c{n}" for n in range(24)}
    dispatch.publish(list(routes), routes)  # the first publish declares the queues and their bindings
    for key in redis_broker.keys(f"{lanes.PREFIX}*"):
        redis_broker.delete(key)
    sent = []
    original = redis.connection.AbstractConnection.send_packed_command

    def counting(self, command, check_health=True):
        sent.append(command)
        return original(self, command, check_health=check_health)

    monkeypatch.setattr(redis.connection.AbstractConnection, "send_packed_command", counting)
    dispatch.publish(list(routes), routes)
    assert len(sent) == 1, "one pipeline for the flush"
    by_lane: dict[str, list[str]] = {}
    for event_id, key in routes.items():
        by_lane.setdefault(lanes.queue_name(lanes.lane_of(key)), []).append(event_id)
    assert len(by_lane) > 1
    for queue, ids in by_lane.items():
        messages = [json.loads(raw) for raw in redis_broker.lrange(queue, 0, -1)]
        assert len(messages) == 1, queue
        args = json.loads(base64.b64decode(messages[0]["body"]))[0]
        assert messages[0]["headers"]["task"] == "billing_sync.tasks.process_events"
        assert args == [ids], queue  # that lane's events, in order


def _two_lanes() -> dict[str, str]:
    routes = {f"id{n}": f"customer:s:c{n}" for n in range(24)}
    first = lanes.lane_of(routes["id0"])
    other = next(i for i, key in routes.items() if lanes.lane_of(key) != first)
    return {"id0": routes["id0"], other: routes[other]}


def test_a_failed_batch_goes_again_one_message_at_a_time(redis_broker, settings, monkeypatch):
    settings.TIEOUT_LANES = 8
    routes = _two_lanes()
    dispatch.publish(list(routes), routes)  # the queues and their bindings declared
    for key in redis_broker.keys(f"{lanes.PREFIX}*"):
        redis_broker.delete(key)

    def down(self, *args, **kwargs):
        raise ConnectionError("pipeline lost")

    monkeypatch.setattr(kombu.transport.redis.PublishBatch, "flush", down)
    dispatch.publish(list(routes), routes)
    for event_id, key in routes.items():
        queue = lanes.queue_name(lanes.lane_of(key))
        bodies = [json.loads(base64.b64decode(json.loads(raw)["body"]))[0] for raw in redis_broker.lrange(queue, 0, -1)]
        assert bodies == [[[event_id]]], queue  # one message, its args: the one event


def test_without_the_broker_the_flush_is_logged_and_left_to_the_sweep(redis_broker, settings, monkeypatch):
    settings.TIEOUT_LANES = 8
    routes = _two_lanes()

    def down(*args, **kwargs):
        raise ConnectionError("broker down")

    with monkeypatch.context() as broken:
        broken.setattr(redis.client.Pipeline, "execute", down)
        broken.setattr(redis.client.Redis, "execute_command", down)
        dispatch.publish(list(routes), routes)  # not raised
    assert not redis_broker.keys(f"{lanes.PREFIX}*")
