"""Write-behind for one unit of work (a chunk of events processed in one transaction): rows are built at once and
written as the unit's `write_behind()` block ends, inside its transaction, one statement per table, in order within
each kind. Rows nothing in the unit reads back (audit entries, history rows, canonical changes, outbox rows) wait
for the end; rows it may read back (documents, journals and their lines: `insert(..., readable=True)`) wait only
until a statement names their table, which writes everything waiting first. A rollback to a savepoint drops the
rows deferred since it was taken (and writes again those it had seen written), a block that fails writes nothing,
and outside a block `defer` writes at once (ARCHITECTURE.md, "Write-behind")."""
import contextlib
import re
import threading

from django.db import connection
from django.db.models.signals import post_save

_local = threading.local()

# Statements that change nothing: a handler that ran only these can be undone without a savepoint (`undo_to`).
_NEUTRAL = ("SELECT", "SAVEPOINT", "RELEASE SAVEPOINT", "ROLLBACK TO SAVEPOINT")


class _Scope:
    """The rows deferred so far, as (writer, item, table read back or None); `items[:written]` are written already
    (a statement named a table of theirs); per open savepoint, the buffer's length and `written` when it was
    taken."""

    def __init__(self):
        self.items: list[tuple] = []
        self.written = 0
        self.trimmed = 0  # rows dropped from the front of `items` once written (positions stay comparable)
        self.marks: dict[str, tuple[int, int]] = {}
        self.readable: dict[str, re.Pattern] = {}  # tables with rows waiting that a statement may read
        self.writes = 0  # statements sent that changed the database (besides the writers' own)
        self.ids: dict = {}  # model -> ids drawn from its sequence, not used yet
        self.flushing = False

    def watch(self, execute, sql, params, many, context):
        if self.flushing:
            return execute(sql, params, many, context)
        # Django sends savepoints as `SAVEPOINT "s..._x1"`, `ROLLBACK TO SAVEPOINT "s..._x1"`, `RELEASE ...`.
        if sql.startswith("SAVEPOINT "):
            self.marks[sql[10:]] = (len(self.items), self.written)
        elif sql.startswith("ROLLBACK TO SAVEPOINT "):
            mark = self.marks.get(sql[22:])
            if mark is not None:
                # The database drops every row written since the savepoint, those flushed since included: the
                # rows deferred before it but written after it wait again.
                length, written = mark
                del self.items[length:]
                self.written = min(self.written, written)
                self._readable_again()
        elif sql.startswith("RELEASE SAVEPOINT "):
            self.marks.pop(sql[18:], None)
        else:
            if self.readable and any(pattern.search(sql) for pattern in self.readable.values()):
                self.flush()  # the statement may read rows still waiting: they go first
            if not sql.startswith(_NEUTRAL):
                self.writes += 1
        return execute(sql, params, many, context)

    def _readable_again(self) -> None:
        self.readable = {}
        for _, _, table in self.items[self.written:]:
            if table is not None and table not in self.readable:
                self.readable[table] = _pattern(table)

    def flush(self) -> None:
        groups: dict = {}
        for writer, item, _ in self.items[self.written:]:
            groups.setdefault(writer, []).append(item)
        self.written = len(self.items)
        self.readable = {}
        if not self.marks:  # no savepoint can ask for them again
            self.trimmed += len(self.items)
            self.items, self.written = [], 0
        self.flushing = True
        try:
            for writer, items in groups.items():
                writer(items)
        finally:
            self.flushing = False


_patterns: dict[str, re.Pattern] = {}


def _pattern(table: str) -> re.Pattern:
    # The table's name as a whole word: `billing_sync_invoice` is not `billing_sync_invoiceline`.
    if table not in _patterns:
        _patterns[table] = re.compile(rf"\b{re.escape(table)}\b")
    return _patterns[table]


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
            scope.marks.clear()
            scope.flush()
    finally:
        _local.scope = None


def active() -> bool:
    return getattr(_local, "scope", None) is not None


def defer(writer, item, *, readable: str | None = None) -> None:
    """`writer([item])` now, or, inside `write_behind`, `writer(items)` once for all the block's items given
    with the same writer (a module-level function, so that it is the same object every time). With `readable`
    (a table name), the item is written before any later statement of the block that names that table."""
    scope = getattr(_local, "scope", None)
    if scope is None:
        writer([item])
        return
    scope.items.append((writer, item, readable))
    if readable is not None and readable not in scope.readable:
        scope.readable[readable] = _pattern(readable)


def checkpoint():
    """Where the block stands (None outside one): for `undo_to`, to undo a unit of work without a savepoint."""
    scope = getattr(_local, "scope", None)
    return None if scope is None else (scope.trimmed + len(scope.items), scope.writes)


def undo_to(point) -> bool:
    """Drop what was deferred since `point` and answer True, if nothing since then reached the database (no
    statement that changes anything, none of its deferred rows written by a read); otherwise change nothing and
    answer False: only a savepoint taken before could undo it."""
    scope = getattr(_local, "scope", None)
    if scope is None or point is None:
        return False
    position, writes = point
    if scope.writes != writes or scope.trimmed + scope.written > position:
        return False
    del scope.items[position - scope.trimmed:]
    scope._readable_again()
    return True


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


def insert(instance, *, readable: bool = False) -> None:
    """Insert a model instance now, or at the end of the enclosing `write_behind` block (with `readable`, before
    the first later statement that names its table)."""
    _insertable(type(instance))
    insert_unchecked(instance, readable=readable)


def insert_unchecked(instance, *, readable: bool = False) -> None:
    """`insert`, for a caller that does itself what the model's `post_save` receivers would (config/history.py)."""
    defer(insert_models, instance, readable=instance._meta.db_table if readable else None)


def insert_all(instances: list, *, readable: bool = False) -> None:
    """`insert` for several rows: outside a block, one `bulk_create` per model (not one statement per row)."""
    if not instances:
        return
    for model in {type(i) for i in instances}:
        _insertable(model)
    if active():
        for instance in instances:
            insert_unchecked(instance, readable=readable)
    else:
        insert_models(instances)


_ID_BATCH = 256
_sequences: dict = {}


def next_id(model) -> int:
    """Inside a block, a primary key for a new row of `model` (an auto-increment id), drawn from its sequence a
    batch at a time: one statement for many rows, written behind, where `save` would have asked for each. Ids
    drawn and not used are skipped (the sequence has gaps anyway: a rollback leaves them too)."""
    scope = getattr(_local, "scope", None)
    if scope is None:
        raise RuntimeError("next_id is for rows written behind")
    pool = scope.ids.setdefault(model, [])
    if not pool:
        if model not in _sequences:
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_get_serial_sequence(%s, %s)", [model._meta.db_table, model._meta.pk.column])
                _sequences[model] = cursor.fetchone()[0]
        with connection.cursor() as cursor:
            # The sequence's name as a parameter: the statement does not name the table (no flush for it).
            cursor.execute("SELECT nextval(%s::regclass) FROM generate_series(1, %s)", [_sequences[model], _ID_BATCH])
            pool.extend(row[0] for row in reversed(cursor.fetchall()))
    return pool.pop()
