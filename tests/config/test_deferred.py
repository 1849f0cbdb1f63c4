"""Write-behind (config/deferred.py): rows deferred in a block are written when it ends, one statement per table,
in order; a savepoint rolled back drops the rows deferred since it was taken; a block that fails writes nothing;
outside a block every row is written at once. The history rows and audit entries written behind are those that
would have been written at once."""
import pytest
from django.db import IntegrityError, connection, transaction
from django.test.utils import CaptureQueriesContext

from audit import services as audit
from audit.models import AuditEntry
from billing_sync.models import CanonicalChange, Customer
from config import deferred
from config.history import bulk_create_with_history
from tests import factories as f

pytestmark = pytest.mark.django_db


@pytest.fixture
def event_id(entity, integration):
    """An accepted event (the changes' foreign key names one)."""
    response = integration.send(f.customer())
    assert response.status_code == 202, response.content
    return response.json()["id"]


@pytest.fixture
def change(event_id):
    def make(document_id: str) -> CanonicalChange:
        return CanonicalChange(event_id=event_id, document_type="invoice", document_id=document_id,
                               outcome=CanonicalChange.Outcome.CREATED)
    return make


def _ids(prefix: str) -> list[str]:
    return list(CanonicalChange.objects.filter(document_id__startswith=prefix).order_by("pk")
                .values_list("document_id", flat=True))


def test_outside_a_block_a_row_is_written_at_once(change):
    with transaction.atomic():
        deferred.insert(change("now-1"))
        assert _ids("now-") == ["now-1"]


def test_inside_a_block_rows_wait_for_its_end_and_go_in_one_statement_in_order(change):
    with transaction.atomic():
        with CaptureQueriesContext(connection) as queries:
            with deferred.write_behind():
                for n in range(5):
                    deferred.insert(change(f"wb-{n}"))
                assert _ids("wb-") == []
                assert deferred.active()
        assert not deferred.active()
        assert _ids("wb-") == [f"wb-{n}" for n in range(5)]
        inserts = [q["sql"] for q in queries.captured_queries if "canonicalchange" in q["sql"] and "INSERT" in q["sql"]]
        assert len(inserts) == 1


def test_a_savepoint_rolled_back_drops_what_was_deferred_since_it_was_taken(change):
    with transaction.atomic(), deferred.write_behind():
        deferred.insert(change("sp-kept-1"))
        try:
            with transaction.atomic():
                deferred.insert(change("sp-dropped"))
                with transaction.atomic():
                    deferred.insert(change("sp-dropped-inner"))
                raise ValueError("the event fails")
        except ValueError:
            pass
        with transaction.atomic():  # released, not rolled back: kept
            deferred.insert(change("sp-kept-2"))
    assert _ids("sp-") == ["sp-kept-1", "sp-kept-2"]


def test_an_inner_savepoint_rolled_back_keeps_what_came_before_it_in_the_outer_one(change):
    with transaction.atomic(), deferred.write_behind():
        with transaction.atomic():
            deferred.insert(change("in-kept"))
            try:
                with transaction.atomic():
                    deferred.insert(change("in-dropped"))
                    raise ValueError("a business rule")
            except ValueError:
                pass
    assert _ids("in-") == ["in-kept"]


def test_a_block_that_fails_writes_nothing(change):
    with transaction.atomic():
        with pytest.raises(ValueError):
            with deferred.write_behind():
                deferred.insert(change("fail-1"))
                raise ValueError("outage")
        assert not deferred.active()
        assert _ids("fail-") == []


def test_a_refused_row_fails_the_block_as_it_ends(event_id):
    with pytest.raises(IntegrityError):
        with transaction.atomic(), deferred.write_behind():
            for _ in range(2):  # one change per event and document: the second is refused at the end
                deferred.insert(CanonicalChange(event_id=event_id, document_type="invoice", document_id="dup-1",
                                                outcome=CanonicalChange.Outcome.CREATED))
    assert _ids("dup-") == []


def test_a_nested_block_joins_the_outer_one(change):
    with transaction.atomic(), deferred.write_behind():
        with deferred.write_behind():
            deferred.insert(change("nest-1"))
        assert _ids("nest-") == []
    assert _ids("nest-") == ["nest-1"]


@pytest.mark.django_db(transaction=True)
def test_a_block_needs_a_transaction():
    with pytest.raises(RuntimeError):
        with deferred.write_behind():
            pass


def test_a_model_with_post_save_receivers_is_never_deferred():
    with transaction.atomic(), pytest.raises(TypeError):
        deferred.insert(Customer(source_system="s", customer_id="c", name="n", version=1))


def test_audit_entries_written_behind_are_those_written_at_once_in_their_order():
    with transaction.atomic(), deferred.write_behind():
        built = [audit.record(actor="system", action=f"test.behind_{n}", object_type="test", object_id=n,
                              after={"n": n}) for n in range(3)]
        assert not AuditEntry.objects.filter(action__startswith="test.behind_").exists()
    rows = list(AuditEntry.objects.filter(action__startswith="test.behind_").order_by("pk"))
    assert [r.action for r in rows] == [f"test.behind_{n}" for n in range(3)]
    assert [(r.content, r.entry_hash, r.at) for r in rows] == [(b.content, b.entry_hash, b.at) for b in built]
    assert all(r.entry_hash == audit.compute_entry_hash(r) for r in rows)


def test_history_rows_are_written_behind_and_dropped_with_their_savepoint():
    with transaction.atomic(), deferred.write_behind():
        kept = Customer.objects.create(source_system="wb", customer_id="kept", name="Kept", version=1)
        try:
            with transaction.atomic():
                Customer.objects.create(source_system="wb", customer_id="gone", name="Gone", version=1)
                raise ValueError("the event fails")
        except ValueError:
            pass
        assert not Customer.history.filter(source_system="wb").exists()
    rows = list(Customer.history.filter(source_system="wb"))
    assert [(r.customer_id, r.history_type, r.id) for r in rows] == [("kept", "+", kept.pk)]


def test_bulk_history_outside_and_inside_a_block_writes_the_same_rows():
    def lines(prefix):
        return [Customer(source_system="bulk", customer_id=f"{prefix}{n}", name="N", version=1) for n in range(3)]

    with transaction.atomic():
        bulk_create_with_history(lines("out-"), Customer)
        with deferred.write_behind():
            bulk_create_with_history(lines("in-"), Customer)
    got = sorted((r.customer_id, r.history_type) for r in Customer.history.filter(source_system="bulk"))
    assert got == sorted([(f"out-{n}", "+") for n in range(3)] + [(f"in-{n}", "+") for n in range(3)])


def test_the_history_manager_class_is_built_once():
    assert type(Customer.history) is type(Customer.history)
