"""Write-behind (config/deferred.py): rows deferred in a block are written when it ends, one statement per table,
in order; a savepoint rolled back drops the rows deferred since it was taken; a block that fails writes nothing;
outside a block every row is written at once. The history rows and audit entries written behind are those that
would have been written at once."""
import datetime

import pytest
from django.db import IntegrityError, connection, transaction
from django.test.utils import CaptureQueriesContext

from audit import services as audit
from audit.models import AuditEntry
from billing_sync.models import CanonicalChange, Customer, Invoice
from config import deferred
from config.history import bulk_create_with_history, save_with_history
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


# ------------------------------------------------------------------ rows the block reads back (readable)
def _customer(customer_id: str) -> Customer:
    return Customer(source_system="rb", customer_id=customer_id, name="N", version=1)


def _customers() -> list[str]:
    return sorted(Customer.objects.filter(source_system="rb").values_list("customer_id", flat=True))


def test_a_readable_row_waits_until_a_statement_names_its_table_then_everything_waiting_goes_first(change):
    with transaction.atomic(), deferred.write_behind():
        with CaptureQueriesContext(connection) as queries:
            bulk_create_with_history([_customer("r-1"), _customer("r-2")], Customer)
            deferred.insert(change("rb-1"))
            assert AuditEntry.objects.filter(action="nothing").count() == 0  # another table: nothing written
            assert not any(q["sql"].startswith('INSERT INTO "billing_sync_customer"') for q in queries.captured_queries)
            assert _customers() == ["r-1", "r-2"]  # names the table: the rows are written before it runs
        # Only the rows read back: their history rows and the change wait for the end as before.
        inserts = [q["sql"] for q in queries.captured_queries if q["sql"].startswith("INSERT")]
        assert [s.split('"')[1] for s in inserts] == ["billing_sync_customer"]
        ids = set(Customer.objects.filter(source_system="rb").values_list("pk", flat=True))
        bulk_create_with_history([_customer("r-3")], Customer)
    assert _customers() == ["r-1", "r-2", "r-3"]
    assert _ids("rb-") == ["rb-1"]
    # Ids came from the table's sequence before the rows were written; the history rows name them.
    assert ids < set(Customer.history.filter(source_system="rb").values_list("id", flat=True))
    assert set(Customer.history.filter(source_system="rb").values_list("id", flat=True)) == set(
        Customer.objects.filter(source_system="rb").values_list("pk", flat=True))


def test_a_word_that_only_contains_the_table_name_does_not_write_it():
    with transaction.atomic(), deferred.write_behind():
        bulk_create_with_history([_customer("w-1")], Customer)
        with CaptureQueriesContext(connection) as queries:
            assert not Customer.history.filter(source_system="rb").exists()  # billing_sync_historicalcustomer
        assert not any(q["sql"].startswith("INSERT") for q in queries.captured_queries)
    assert _customers() == ["w-1"]


def test_rows_written_inside_a_savepoint_that_rolls_back_are_written_again(change):
    """A read inside a savepoint writes what waited from before it; rolled back, the database drops those rows
    too: they wait again and are written, not lost."""
    with transaction.atomic(), deferred.write_behind():
        bulk_create_with_history([_customer("sp-before")], Customer)
        deferred.insert(change("rsp-before"))
        try:
            with transaction.atomic():
                bulk_create_with_history([_customer("sp-inside")], Customer)
                assert _customers() == ["sp-before", "sp-inside"]
                raise ValueError("the event fails")
        except ValueError:
            pass
        assert _customers() == ["sp-before"]  # written again, before this read
    assert _customers() == ["sp-before"]
    assert _ids("rsp-") == ["rsp-before"]
    assert list(Customer.history.filter(source_system="rb").values_list("customer_id", flat=True)) == ["sp-before"]


def test_undo_drops_what_was_deferred_since_the_checkpoint_when_nothing_reached_the_database(change):
    with transaction.atomic(), deferred.write_behind():
        deferred.insert(change("u-kept"))
        point = deferred.checkpoint()
        deferred.insert(change("u-dropped"))
        bulk_create_with_history([_customer("u-dropped")], Customer)
        assert deferred.undo_to(point)
        assert _customers() == []
    assert _ids("u-") == ["u-kept"]
    assert _customers() == []


def test_undo_refuses_after_a_statement_changed_the_database(change):
    with transaction.atomic(), deferred.write_behind():
        point = deferred.checkpoint()
        deferred.insert(change("uw-1"))
        Customer.objects.create(source_system="rb", customer_id="uw-written", name="N", version=1)
        assert not deferred.undo_to(point)
    assert _ids("uw-") == ["uw-1"]  # nothing was dropped


def test_undo_refuses_when_a_read_wrote_rows_deferred_since_the_checkpoint():
    with transaction.atomic(), deferred.write_behind():
        point = deferred.checkpoint()
        bulk_create_with_history([_customer("ur-1")], Customer)
        assert _customers() == ["ur-1"]  # the read wrote it
        assert not deferred.undo_to(point)
        # A checkpoint taken after that write can still be undone.
        point = deferred.checkpoint()
        bulk_create_with_history([_customer("ur-2")], Customer)
        assert deferred.undo_to(point)
    assert _customers() == ["ur-1"]


def test_ids_are_drawn_in_batches_and_only_inside_a_block():
    with transaction.atomic():
        with pytest.raises(RuntimeError):
            deferred.next_id(Customer)
        with CaptureQueriesContext(connection) as queries, deferred.write_behind():
            ids = [deferred.next_id(Customer) for _ in range(300)]
        assert ids == sorted(set(ids))
        assert sum("nextval(" in q["sql"] for q in queries.captured_queries) == 2  # 256 at a time


def test_a_row_read_back_waits_for_the_rows_it_refers_to_and_no_others(entity):
    """A statement naming a table writes its waiting rows and first those they refer to (a trigger may read
    them), but not rows of other tables nothing named."""
    with transaction.atomic(), deferred.write_behind():
        customer = _customer("ref-1")
        bulk_create_with_history([customer], Customer)
        invoice = Invoice(source_system="rb", invoice_id="ref-inv", entity=entity,
                          customer=customer, number="N1", currency="USD", issue_date=datetime.date(2026, 11, 1),
                          due_date=datetime.date(2026, 11, 30), subtotal="10.5", tax_total="0", total="10.5",
                          version=1)
        bulk_create_with_history([invoice], Invoice)
        other = _customer("ref-other")
        with CaptureQueriesContext(connection) as queries:
            assert Invoice.objects.filter(invoice_id="ref-inv").exists()
        inserts = [q["sql"].split('"')[1] for q in queries.captured_queries if q["sql"].startswith("INSERT")]
        assert inserts == ["billing_sync_customer", "billing_sync_invoice"]
        assert deferred.waiting(other) is False  # never deferred
        # In memory, as read back: Decimal places of the column, not what was given.
        assert str(invoice.total) == "10.5000" and str(invoice.applied_total) == "0.0000"


def test_a_waiting_row_is_changed_in_memory_and_never_inside_a_savepoint(change):
    with transaction.atomic(), deferred.write_behind():
        first, second = _customer("m-1"), _customer("m-2")
        bulk_create_with_history([first], Customer)
        point = deferred.checkpoint()
        assert deferred.waiting(first)
        first.name = "Changed"
        with CaptureQueriesContext(connection) as queries:
            save_with_history(first, ["name"])
        assert queries.captured_queries == []  # written with its row
        assert not deferred.undo_to(point)  # the change counts as a write
        with transaction.atomic():
            bulk_create_with_history([second], Customer)
            assert not deferred.waiting(second)  # a savepoint is open: it is written and read instead
            second.name = "Changed too"
            save_with_history(second, ["name"])
    assert dict(Customer.objects.filter(source_system="rb").values_list("customer_id", "name")) == {
        "m-1": "Changed", "m-2": "Changed too"}
    assert sorted(Customer.history.filter(source_system="rb").values_list("customer_id", "history_type", "name")) == [
        ("m-1", "+", "N"), ("m-1", "~", "Changed"), ("m-2", "+", "N"), ("m-2", "~", "Changed too")]
