"""Write-behind for one unit of work (a chunk of events processed in one transaction): rows are built at once and
written as the unit's `write_behind()` block ends, inside its transaction, one statement per table, in order within
each kind. Rows nothing in the unit reads back (audit entries, history rows, canonical changes, outbox rows) wait
for the end; rows it may read back (documents, journals and their lines: `insert(..., readable=True)`) wait only
until a statement names their table (or the table of rows that refer to them), which writes them first; one
changed while it waits is changed on the instance. A rollback to a savepoint drops the
rows deferred since it was taken (and writes again those it had seen written), a block that fails writes nothing,
and outside a block `defer` writes at once (ARCHITECTURE.md, "Write-behind")."""
import contextlib
import datetime
import re
import threading
from decimal import Decimal

from django.db import connection, models
from django.db.models.signals import post_save

_local = threading.local()

# Statements that change nothing: a handler that ran only these can be undone without a savepoint (`undo_to`).
_NEUTRAL = ("SELECT", "SAVEPOINT", "RELEASE SAVEPOINT", "ROLLBACK TO SAVEPOINT")


class _Row:
    """A row the block may read back: written (`at`, the flush's number) before the first statement that names
    its table, or at the end."""

    __slots__ = ("instance", "table", "at")

    def __init__(self, instance):
        self.instance = instance
        self.table = instance._meta.db_table
        self.at = None


class _Scope:
    """What is deferred so far: `items`, rows nothing reads back, as (writer, item), written at the end; `rows`,
    rows the block may read back, each written when a statement first names its table (or one whose rows
    refer to it). Per open savepoint: the lengths of both and the flush count when it was taken."""

    def __init__(self):
        self.items: list[tuple] = []
        self.rows: list[_Row] = []
        self.unwritten: dict[int, _Row] = {}  # id(instance) -> its row, for rows not written yet
        self.readable: dict[str, re.Pattern] = {}  # tables with rows not written yet
        self.flushes = 0
        self.marks: dict[str, tuple[int, int, int]] = {}
        self.writes = 0  # statements sent that changed the database (besides the flushes' own)
        self.ids: dict = {}  # model -> ids drawn from its sequence, not used yet
        self.flushing = False

    def watch(self, execute, sql, params, many, context):
        if self.flushing:
            return execute(sql, params, many, context)
        # Django sends savepoints as `SAVEPOINT "s..._x1"`, `ROLLBACK TO SAVEPOINT "s..._x1"`, `RELEASE ...`.
        if sql.startswith("SAVEPOINT "):
            self.marks[sql[10:]] = (len(self.items), len(self.rows), self.flushes)
        elif sql.startswith("ROLLBACK TO SAVEPOINT "):
            mark = self.marks.get(sql[22:])
            if mark is not None:
                # The database drops every row written since the savepoint: rows deferred before it but written
                # after it wait again.
                items, rows, flushes = mark
                del self.items[items:]
                del self.rows[rows:]
                for row in self.rows:
                    if row.at is not None and row.at > flushes:
                        row.at = None
                self._unwritten_again()
        elif sql.startswith("RELEASE SAVEPOINT "):
            self.marks.pop(sql[18:], None)
        else:
            if self.readable:
                named = {table for table, pattern in self.readable.items() if pattern.search(sql)}
                if named:
                    self.write_rows(named)  # the statement may read rows still waiting: they go first
            if not sql.startswith(_NEUTRAL):
                self.writes += 1
        return execute(sql, params, many, context)

    def add_row(self, instance) -> None:
        _as_read_back(instance)
        row = _Row(instance)
        self.rows.append(row)
        self.unwritten[id(instance)] = row
        if row.table not in self.readable:
            self.readable[row.table] = _pattern(row.table)

    def _unwritten_again(self) -> None:
        self.unwritten = {id(row.instance): row for row in self.rows if row.at is None}
        self.readable = {row.table: _pattern(row.table) for row in self.unwritten.values()}

    def write_rows(self, tables: set | None = None) -> None:
        """Write the rows waiting in `tables` (all with None), and first those of the tables they refer to (a
        trigger may read them: a journal line's reads its journal), one `bulk_create` per model."""
        waiting: dict = {}
        for row in self.rows:
            if row.at is None:
                waiting.setdefault(type(row.instance), []).append(row)
        if tables is not None:
            wanted, todo = set(), [m for m in waiting if m._meta.db_table in tables]
            while todo:
                model = todo.pop()
                if model not in wanted:
                    wanted.add(model)
                    todo += [m for m in _refers_to(model) if m in waiting]
        else:
            wanted = set(waiting)
        ordered: list = []
        for model in waiting:  # models in the order first deferred, each after those it refers to
            _after_dependencies(model, wanted, ordered, set())
        self.flushes += 1
        self.flushing = True
        try:
            for model in ordered:
                rows = waiting[model]
                model.objects.bulk_create([row.instance for row in rows])
                for row in rows:
                    row.at = self.flushes
                    self.unwritten.pop(id(row.instance), None)
        finally:
            self.flushing = False
        self.readable = {row.table: _pattern(row.table) for row in self.unwritten.values()}

    def flush(self) -> None:
        """Everything waiting: the rows read back first (what the others refer to), then the rest."""
        self.write_rows()
        groups: dict = {}
        for writer, item in self.items:
            groups.setdefault(writer, []).append(item)
        self.items = []
        self.flushing = True
        try:
            for writer, items in groups.items():
                writer(items)
        finally:
            self.flushing = False


def _as_read_back(instance) -> None:
    """Its values as reading its row back would give them (`Decimal("150.1500")` for 150.15 in a column of four
    places, a time in UTC), since later units of the block may take it from memory instead (`waiting`): what
    they show of it (messages, audit snapshots) is then what one at a time shows."""
    for field in instance._meta.concrete_fields:
        value = getattr(instance, field.attname)
        if value is None:
            continue
        if isinstance(field, models.DecimalField):
            setattr(instance, field.attname, Decimal(value).quantize(Decimal(1).scaleb(-field.decimal_places)))
        elif isinstance(field, models.DateTimeField) and isinstance(value, datetime.datetime) and value.tzinfo:
            setattr(instance, field.attname, value.astimezone(datetime.timezone.utc))


def _refers_to(model) -> list:
    return [f.related_model for f in model._meta.concrete_fields
            if f.many_to_one and f.related_model is not model and f.db_constraint]


def _after_dependencies(model, wanted: set, ordered: list, seen: set) -> None:
    if model not in wanted or model in ordered or model in seen:
        return
    seen.add(model)
    for other in _refers_to(model):
        _after_dependencies(other, wanted, ordered, seen)
    ordered.append(model)


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


def checkpoint():
    """Where the block stands (None outside one): for `undo_to`, to undo a unit of work without a savepoint."""
    scope = getattr(_local, "scope", None)
    return None if scope is None else (len(scope.items), len(scope.rows), scope.writes)


def undo_to(point) -> bool:
    """Drop what was deferred since `point` and answer True, if nothing since then reached the database (no
    statement that changes anything, none of its rows written for a read); otherwise change nothing and answer
    False: only a savepoint taken before could undo it."""
    scope = getattr(_local, "scope", None)
    if scope is None or point is None:
        return False
    items, rows, writes = point
    if scope.writes != writes or any(row.at is not None for row in scope.rows[rows:]):
        return False
    del scope.items[items:]
    del scope.rows[rows:]
    scope._unwritten_again()
    return True


def waiting(instance) -> bool:
    """Whether `instance` was deferred in this block as a row read back and is not written yet, and no savepoint
    is open: a later unit of the block may take it from memory and change it there (`change_waiting`). Inside a
    savepoint never: a rollback to it restores rows, not Python objects, so there the row is written and read."""
    scope = getattr(_local, "scope", None)
    return scope is not None and not scope.marks and id(instance) in scope.unwritten


def change_waiting(instance) -> bool:
    """For a `waiting` instance, True: the caller changes it in memory (its row is written with the change) and
    the change counts as a write, so `undo_to` refuses to undo it (the unit runs again with a savepoint, where
    nothing is waiting). False otherwise: the caller sends its statement."""
    if not waiting(instance):
        return False
    _local.scope.writes += 1
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
    scope = getattr(_local, "scope", None)
    if scope is not None and readable:
        scope.add_row(instance)
    else:
        defer(insert_models, instance)


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
