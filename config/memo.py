"""A memo for the length of one unit of work (a chunk of events processed in one transaction): reference data the
unit reads again and again (an entity by its code, its account mappings, whether a month is closed) is read once.
Outside a `memo_scope()` nothing is remembered, so every other caller reads the database each time as before.
Data that events change is kept only through `remember`, by the code that changes it (a customer upserted by an
event of the chunk); a period closed while a chunk runs is still refused at posting, which reads it again
(`ledger.services.posting`)."""
import contextlib
import threading

_local = threading.local()


@contextlib.contextmanager
def memo_scope():
    """Remember `memoized` values until the block ends (a nested block shares the outer one's)."""
    if getattr(_local, "values", None) is not None:
        yield
        return
    _local.values = {}
    try:
        yield
    finally:
        _local.values = None


def memoized(key, compute):
    """`compute()`, once per `key` inside a memo scope (a raised error is not remembered), every time outside."""
    values = getattr(_local, "values", None)
    if values is None:
        return compute()
    if key not in values:
        values[key] = compute()
    return values[key]


def remember(key, value) -> None:
    """Inside a memo scope, `value` is what `recalled(key)` answers from now on; outside one, nothing."""
    values = getattr(_local, "values", None)
    if values is not None:
        values[key] = value


def recalled(key):
    """What was remembered for `key` in this scope, or None (outside a scope: always None)."""
    values = getattr(_local, "values", None)
    return None if values is None else values.get(key)
