"""Processing of accepted events: stale versions, duplicates and events that arrive out of order.

A stale version is recorded (a CanonicalChange with outcome `stale`) and ignored without a journal; a
document that waits for another one (`awaiting_dependency`, `unknown_customer`) is processed and posted
automatically when that document arrives, and its exception is resolved; a second delivery of the same
payment under a new event id books nothing.
"""
import pytest

from billing_sync import services as billing
from billing_sync.models import CanonicalChange, Customer, Event, Invoice, Payment, PaymentAllocation
from billing_sync.services import processing
from exceptions_queue.models import ExceptionRecord
from ledger.models import Journal
from tests import factories as f
from tests.helpers import send

pytestmark = pytest.mark.django_db

SS = f.SOURCE


def changes(event: dict) -> list[tuple]:
    return list(CanonicalChange.objects.filter(event_id=event["id"]).values_list(
        "document_type", "document_id", "version", "outcome"))


def assert_ignored_without_journal(event: dict) -> None:
    assert event["status"] == "ignored"
    assert event["journal_ids"] == []
    assert event["exception"] is None
    assert not Journal.objects.filter(event_id=event["id"]).exists()
    assert not ExceptionRecord.objects.filter(event_id=event["id"]).exists()


# --------------------------------------------------------------------------------------------- stale versions
@pytest.mark.parametrize("stale_version", [1, 2])
def test_customer_upserted_with_a_lower_or_equal_version_is_ignored(entity, integration, stale_version):
    send(integration, f.customer("cus_v", version=2, name="Acme v2"))
    event = send(integration, f.customer("cus_v", version=stale_version, name="Acme stale"))
    assert_ignored_without_journal(event)
    assert changes(event) == [("customer", "cus_v", stale_version, "stale")]
    customer = Customer.objects.get(source_system=SS, customer_id="cus_v")
    assert (customer.name, customer.version) == ("Acme v2", 2)


def test_customer_upserted_with_a_higher_version_updates(entity, integration):
    send(integration, f.customer("cus_up", version=1, name="Old"))
    event = send(integration, f.customer("cus_up", version=5, name="New"))
    assert event["status"] == "processed"
    assert changes(event) == [("customer", "cus_up", 5, "updated")]
    assert Customer.objects.get(customer_id="cus_up").name == "New"


@pytest.mark.parametrize("stale_version", [1, 2])
def test_invoice_amended_with_a_lower_or_equal_version_is_ignored(entity, integration, stale_version):
    send(integration, f.customer("cus_s"))
    send(integration, f.invoice("inv_s", customer_id="cus_s", lines=[("100.00", "0")], version=2))
    journals_before = Journal.objects.count()
    event = send(integration, f.invoice("inv_s", customer_id="cus_s", lines=[("999.00", "0")], version=stale_version,
                                        type_="invoice.amended"))
    assert_ignored_without_journal(event)
    assert changes(event) == [("invoice", "inv_s", stale_version, "stale")]
    assert Journal.objects.count() == journals_before
    invoice = Invoice.objects.get(invoice_id="inv_s")
    assert (invoice.version, str(invoice.total)) == (2, "100.0000")


def test_invoice_issued_again_under_a_new_event_id_is_ignored(entity, integration):
    send(integration, f.customer("cus_d"))
    payload = f.invoice("inv_d", customer_id="cus_d", lines=[("100.00", "0")])
    send(integration, payload)
    again = dict(payload, event_id=f.uid("evt"))
    event = send(integration, again)
    assert_ignored_without_journal(event)
    assert changes(event) == [("invoice", "inv_d", 1, "stale")]
    assert Journal.objects.filter(document_id="inv_d").count() == 1


def test_amendment_arriving_before_the_original_is_booked_and_the_original_is_then_stale(entity, integration):
    send(integration, f.customer("cus_o"))
    amended = send(integration, f.invoice("inv_o", customer_id="cus_o", lines=[("150.00", "0")], version=2,
                                          type_="invoice.amended"))
    assert amended["status"] == "posted"
    assert len(amended["journal_ids"]) == 1
    original = send(integration, f.invoice("inv_o", customer_id="cus_o", lines=[("100.00", "0")], version=1))
    assert_ignored_without_journal(original)
    invoice = Invoice.objects.get(invoice_id="inv_o")
    assert (invoice.version, str(invoice.total)) == (2, "150.0000")


# --------------------------------------------------------------------------------------------- out of order
def test_payment_before_its_invoice_waits_then_posts_when_the_invoice_arrives(entity, integration, finance):
    send(integration, f.customer("cus_w"))
    payment = send(integration, f.payment("pay_w", customer_id="cus_w", amount="107.25",
                                          allocations=[("inv_w", "107.25")]))
    assert payment["status"] == "exception"
    assert payment["journal_ids"] == []
    assert payment["exception"]["code"] == "awaiting_dependency"
    assert payment["exception"]["status"] == "open"
    exc = ExceptionRecord.objects.get(event_id=payment["id"])
    assert exc.dependency_key == f"invoice:{SS}:inv_w"
    assert not Payment.objects.filter(payment_id="pay_w").exists()

    invoice = send(integration, f.invoice("inv_w", customer_id="cus_w", lines=[("100.00", "7.25")]))
    assert invoice["status"] == "posted"
    after = integration.event(payment["id"])
    assert after["status"] == "posted"
    assert len(after["journal_ids"]) == 1
    assert after["exception"]["id"] == str(exc.pk)
    assert after["exception"]["status"] == "resolved"
    exc.refresh_from_db()
    assert exc.status == "resolved" and exc.resolution
    journal = Journal.objects.get(event_id=payment["id"])
    assert journal.status == "posted" and journal.erp_document_ref
    assert Invoice.objects.get(invoice_id="inv_w").open_amount == 0
    assert PaymentAllocation.objects.filter(payment__payment_id="pay_w").count() == 1
    body = finance.get(f"/api/v1/invoices/{SS}/inv_w").json()
    assert body["open_amount"] == body["ledger_open_amount"] == "0.00"


def test_invoice_before_its_customer_waits_then_posts_when_the_customer_arrives(entity, integration):
    invoice = send(integration, f.invoice("inv_c", customer_id="cus_late", lines=[("100.00", "0")]))
    assert invoice["status"] == "exception"
    assert invoice["exception"]["code"] == "unknown_customer"
    assert ExceptionRecord.objects.get(event_id=invoice["id"]).dependency_key == f"customer:{SS}:cus_late"
    assert not Invoice.objects.filter(invoice_id="inv_c").exists()

    send(integration, f.customer("cus_late"))
    after = integration.event(invoice["id"])
    assert after["status"] == "posted"
    assert after["exception"]["status"] == "resolved"
    assert Journal.objects.get(event_id=invoice["id"]).status == "posted"
    assert Invoice.objects.get(invoice_id="inv_c").customer.customer_id == "cus_late"


def test_a_chain_of_waiting_events_unwinds_when_the_first_document_arrives(entity, integration):
    payment = send(integration, f.payment("pay_ch", customer_id="cus_ch", amount="50.00",
                                          allocations=[("inv_ch", "50.00")]))
    assert payment["exception"]["code"] == "unknown_customer"
    invoice = send(integration, f.invoice("inv_ch", customer_id="cus_ch", lines=[("80.00", "0")]))
    # The parked payment keeps its place: its invoice waits behind it, untouched.
    assert invoice["status"] == "accepted" and invoice["exception"] is None
    send(integration, f.customer("cus_ch"))
    assert integration.event(invoice["id"])["status"] == "posted"
    assert integration.event(payment["id"])["status"] == "posted"
    assert not ExceptionRecord.objects.exclude(status="resolved").exists()
    assert Invoice.objects.get(invoice_id="inv_ch").open_amount == 30


def test_payment_waiting_on_two_invoices_posts_once_both_arrived(entity, integration):
    send(integration, f.customer("cus_2"))
    payment = send(integration, f.payment("pay_2", customer_id="cus_2", amount="30.00",
                                          allocations=[("inv_2a", "10.00"), ("inv_2b", "20.00")]))
    assert payment["exception"]["code"] == "awaiting_dependency"
    send(integration, f.invoice("inv_2a", customer_id="cus_2", lines=[("10.00", "0")]))
    middle = integration.event(payment["id"])
    assert middle["status"] == "exception"
    assert middle["exception"]["code"] == "awaiting_dependency"
    assert ExceptionRecord.objects.get(event_id=payment["id"]).dependency_key == f"invoice:{SS}:inv_2b"
    send(integration, f.invoice("inv_2b", customer_id="cus_2", lines=[("20.00", "0")]))
    assert integration.event(payment["id"])["status"] == "posted"
    assert Journal.objects.filter(event_id=payment["id"]).count() == 1


def test_payment_applied_before_its_payment_waits_for_it(entity, integration):
    send(integration, f.customer("cus_pa"))
    send(integration, f.invoice("inv_pa", customer_id="cus_pa", lines=[("40.00", "0")]))
    applied = send(integration, f.payment_applied("pay_pa", [("inv_pa", "40.00")]))
    assert applied["exception"]["code"] == "awaiting_dependency"
    send(integration, f.payment("pay_pa", customer_id="cus_pa", amount="40.00"))
    assert integration.event(applied["id"])["status"] == "posted"
    assert Invoice.objects.get(invoice_id="inv_pa").open_amount == 0
    assert Payment.objects.get(payment_id="pay_pa").unapplied_amount == 0


def test_void_before_its_invoice_waits_then_reverses_it(entity, integration):
    send(integration, f.customer("cus_vo"))
    void = send(integration, f.invoice_voided("inv_vo"))
    assert void["exception"]["code"] == "awaiting_dependency"
    issued = send(integration, f.invoice("inv_vo", customer_id="cus_vo", lines=[("25.00", "0")]))
    after = integration.event(void["id"])
    assert after["status"] == "posted"
    reversal = Journal.objects.get(event_id=void["id"])
    assert str(reversal.reverses_id) == issued["journal_ids"][0]
    assert Invoice.objects.get(invoice_id="inv_vo").status == "voided"


def test_unrelated_documents_do_not_wake_a_waiting_event(entity, integration):
    send(integration, f.customer("cus_x"))
    payment = send(integration, f.payment("pay_x", customer_id="cus_x", amount="10.00",
                                          allocations=[("inv_missing", "10.00")]))
    send(integration, f.invoice("inv_other", customer_id="cus_x", lines=[("10.00", "0")]))
    after = integration.event(payment["id"])
    assert after["status"] == "exception"
    assert after["exception"]["status"] == "open"
    assert Event.objects.get(pk=payment["id"]).attempts == 1


# --------------------------------------------------------------------------------------------- duplicates
def test_duplicate_payment_id_in_a_new_event_is_ignored(entity, integration):
    send(integration, f.customer("cus_dp"))
    send(integration, f.invoice("inv_dp", customer_id="cus_dp", lines=[("100.00", "0")]))
    payload = f.payment("pay_dp", customer_id="cus_dp", amount="60.00", allocations=[("inv_dp", "60.00")])
    first = send(integration, payload)
    assert first["status"] == "posted"
    duplicate = send(integration, dict(payload, event_id=f.uid("evt")))
    assert_ignored_without_journal(duplicate)
    assert changes(duplicate) == [("payment", "pay_dp", None, "stale")]
    assert Journal.objects.filter(document_type="payment", document_id="pay_dp").count() == 1
    assert Invoice.objects.get(invoice_id="inv_dp").applied_total == 60
    assert PaymentAllocation.objects.filter(payment__payment_id="pay_dp").count() == 1


@pytest.mark.parametrize("builder", [
    lambda: f.refund("pay_dd", "5.00", refund_id="re_dd"),
    lambda: f.credit_note("inv_dd", "5.00", credit_note_id="cn_dd"),
])
def test_duplicate_document_ids_of_refunds_and_credit_notes_are_ignored(entity, integration, builder):
    send(integration, f.customer("cus_dd"))
    send(integration, f.invoice("inv_dd", customer_id="cus_dd", lines=[("100.00", "0")]))
    send(integration, f.payment("pay_dd", customer_id="cus_dd", amount="50.00"))
    first = send(integration, builder())
    assert first["status"] == "posted"
    second = send(integration, builder())  # same document id, new event id
    assert_ignored_without_journal(second)
    assert [c[3] for c in changes(second)] == ["stale"]


def test_same_event_delivered_twice_is_processed_once(entity, integration):
    send(integration, f.customer("cus_tw"))
    payload = f.invoice("inv_tw", customer_id="cus_tw", lines=[("10.00", "0")])
    first = integration.send(payload)
    again = integration.send(payload)
    assert (first.status_code, again.status_code) == (202, 200)
    assert Event.objects.filter(event_id=payload["event_id"]).count() == 1
    assert Journal.objects.filter(document_id="inv_tw").count() == 1


def test_a_dependency_that_committed_during_processing_is_not_waited_for_forever(entity, integration,
                                                                                 django_capture_on_commit_callbacks):
    """The race: the customer commits (and wakes no one) while the invoice is still finding it missing."""
    customer = f.customer()
    invoice = f.invoice(customer_id=customer["data"]["customer_id"])
    integration.send(invoice)
    event = Event.objects.get(event_id=invoice["event_id"])
    assert event.status == "exception"
    # The customer lands without its wake-up reaching the invoice (as when it commits mid-processing).
    Customer.objects.create(source_system=customer["source_system"], customer_id=customer["data"]["customer_id"],
                            name="Acme", version=1)
    with django_capture_on_commit_callbacks(execute=True):
        assert billing.dependency_recheck(event_id=event.pk,
                                          dependency=f"customer:{customer['source_system']}:"
                                                     f"{customer['data']['customer_id']}",
                                          source_system=customer["source_system"])
    event.refresh_from_db()
    assert event.status == "posted"


def test_the_recheck_is_scheduled_when_an_event_starts_waiting(entity, integration, monkeypatch):

    seen = []
    monkeypatch.setattr(processing, "dependency_recheck", lambda **kw: seen.append(kw))
    customer_id = "cus_missing"
    integration.send(f.invoice(customer_id=customer_id))
    assert seen and seen[0]["dependency"].endswith(f":{customer_id}")
