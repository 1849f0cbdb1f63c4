"""The after-commit dispatcher publishes buffered event ids in batches, and everything it holds at exit."""
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
