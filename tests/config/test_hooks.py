"""config.hooks: receivers run in connection order, once each, and an error reaches the sender."""
import pytest

from config.hooks import Hook


def test_receivers_run_in_connection_order_with_the_keywords():
    hook, seen = Hook("test.order"), []

    def first(**kwargs):
        seen.append(("first", kwargs))

    def second(**kwargs):
        seen.append(("second", kwargs))

    hook.connect(first)
    hook.connect(second)
    hook.connect(first)  # a second ready() under tests: still once
    hook.send(journal=1, actor="x")
    assert seen == [("first", {"journal": 1, "actor": "x"}), ("second", {"journal": 1, "actor": "x"})]
    assert hook.receivers == (first, second)


def test_an_error_in_a_receiver_stops_the_rest_and_reaches_the_sender():
    hook, seen = Hook("test.error"), []

    def failing(**kwargs):
        raise RuntimeError("no")

    hook.connect(failing)
    hook.connect(lambda **kwargs: seen.append(kwargs))
    with pytest.raises(RuntimeError, match="no"):
        hook.send(value=1)
    assert seen == []


def test_disconnect():
    hook = Hook("test.disconnect")

    def receiver(**kwargs):
        raise AssertionError("disconnected")

    hook.connect(receiver)
    hook.disconnect(receiver)
    hook.send()
    assert "0 receiver" in repr(hook)
