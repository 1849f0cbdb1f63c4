"""The per-chunk memo: nothing is remembered outside a scope, a value once per key inside one, an error never,
and a nested scope shares the outer one's (a chunk inside another unit of work)."""
import pytest

from config.memo import memo_scope, memoized, recalled, remember


def _counter():
    calls = []

    def compute():
        calls.append(1)
        return len(calls)

    return calls, compute


def test_outside_a_scope_every_call_computes():
    calls, compute = _counter()
    assert [memoized("k", compute) for _ in range(3)] == [1, 2, 3]


def test_inside_a_scope_once_per_key_and_forgotten_after():
    calls, compute = _counter()
    with memo_scope():
        assert [memoized("k", compute) for _ in range(3)] == [1, 1, 1]
        assert memoized("other", compute) == 2
    assert memoized("k", compute) == 3


def test_an_error_is_not_remembered():
    def boom():
        raise LookupError("missing")

    calls, compute = _counter()
    with memo_scope():
        with pytest.raises(LookupError):
            memoized("k", boom)
        assert memoized("k", compute) == 1


def test_a_nested_scope_shares_the_outer_one():
    calls, compute = _counter()
    with memo_scope():
        memoized("k", compute)
        with memo_scope():
            assert memoized("k", compute) == 1
        assert memoized("k", compute) == 1  # the inner block's end did not clear the outer memo
    assert len(calls) == 1


def test_remembered_values_live_only_in_their_scope():
    remember("customer", "outside")  # nothing to remember it in
    assert recalled("customer") is None
    with memo_scope():
        assert recalled("customer") is None
        remember("customer", "v1")
        remember("customer", "v2")  # the code that changes it says so
        assert recalled("customer") == "v2"
        assert memoized("customer", lambda: "computed") == "v2"
    assert recalled("customer") is None
