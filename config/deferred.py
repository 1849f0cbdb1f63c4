"""Write-behind for one unit of work (a chunk of events processed in one transaction): rows nothing in the unit reads
back (audit entries, history rows, canonical changes, outbox rows) are built at once and written as the unit's
`write_behind()` block ends, inside its transaction, one statement per table, in order within each kind; a rollback
to a savepoint drops the rows deferred since it was taken, a block that fails writes nothing, and outside a block
`defer` writes at once (ARCHITECTURE.md, "Write-behind")."""
import contextlib
import threading

from django.db import connection
from django.db.models.signals import post_save

_local = threading.local()


class _Scope:
    """The rows deferred so far, as (writer, item), and the buffer's length at each open savepoint."""

    def __init__(self):
        self.items: list[tuple] = []
        self.marks: dict[str, int] = {}

    def watch(self, execute, sql, params, many, context):
        # Django sends savepoints as `SAVEPOINT "s..._x1"`, `ROLLBACK TO SAVEPOINT "s..._x1"`, `RELEASE ...`.
        if sql.startswith("SAVEPOINT "):
            self.marks[sql[10:]] = len(self.items)
        elif sql.startswith("ROLLBACK TO SAVEPOINT "):
            mark = self.marks.get(sql[22:])
            if mark is not None:
                del self.items[mark:]
        return execute(sql, params, many, context)

    def flush(self) -> None:
        groups: dict = {}
        for writer, item in self.items:
            groups.setdefault(writer, []).append(item)
        self.items = []
        for writer, items in groups.items():
            writer(items)


@contextlib.contextmanager
def write_behind():
    """Defer `defer`red rows to the end of the block (inside the caller's transaction). Nested blocks join."""
    if getattr(_local, "scope", None) is not None:
        yield
        return
    if not connection.in_atomic_block:
        raise RuntimeError("write_behind runs inside the transaction its rows belong to")
    scope = _local.scope = _Scope()
    try:
        with connection.execute_wrapper(scope.watch):
            yield
            # Inside the wrapper: the writers may take savepoints of their own.
            _local.scope = None
            scope.flush()
    finally:
        _local.scope = None


def active() -> bool:
    return getattr(_local, "scope", None) is not None


def defer(writer, item) -> None:
    """`writer([item])` now, or, inside `write_behind`, `writer(items)` once for all the block's items given
    with the same writer (a module-level function, so that it is the same object every time)."""
    scope = getattr(_local, "scope", None)
    if scope is None:
        writer([item])
    else:
        scope.items.append((writer, item))


def insert_models(instances: list) -> None:
    """A writer: `bulk_create` per model, in order (primary keys are set on the instances, as `save` would)."""
    by_model: dict = {}
    for instance in instances:
        by_model.setdefault(type(instance), []).append(instance)
    for model, rows in by_model.items():
        model.objects.bulk_create(rows)


def _insertable(model) -> None:
    # bulk_create sends no post_save: a model something listens to (history, say) is saved, never deferred.
    if post_save.has_listeners(model):
        raise TypeError(f"{model.__name__} has post_save receivers: save it, do not defer it")


def insert(instance) -> None:
    """Insert a model instance now, or at the end of the enclosing `write_behind` block."""
    _insertable(type(instance))
    defer(insert_models, instance)
