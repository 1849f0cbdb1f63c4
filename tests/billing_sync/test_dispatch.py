"""The after-commit dispatcher publishes buffered event ids in batches, and everything it holds at exit."""
import threading

from billing_sync import dispatch, tasks
from tests.helpers import wait_until


def test_buffered_ids_are_published_in_one_batch_by_the_background_thread(monkeypatch):
    published = []
    monkeypatch.setattr(dispatch, "publish", lambda ids: published.append(list(ids)))
    dispatcher = dispatch._Dispatcher()
    for n in range(5):
        dispatcher.add([f"e{n}"])
    wait_until(lambda: sum(map(len, published)) >= 5, timeout=2, interval=0.01, message=str(published))
    assert sorted(i for batch in published for i in batch) == [f"e{n}" for n in range(5)]
    assert len(published) <= 2  # a burst travels together


def test_flush_publishes_what_is_held(monkeypatch):
    published = []
    monkeypatch.setattr(dispatch, "publish", lambda ids: published.append(list(ids)))
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

    def slow_publish(ids):
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
