"""The ERPNext connector against a local stand-in that follows Frappe's REST contract: success, each
failure class (429 with Retry-After, 5xx, 417, 401, connection refused), and the ambiguous cases
(commit-then-timeout, commit-then-502, commit-then-reset) where the journal must never be created twice.
"""
import socket
import time

import pytest

from exceptions_queue.models import ExceptionRecord
from ledger import connectors, services
from ledger.models import Journal, PostingAttempt
from ledger.services import outbox
from ledger.tasks import post_journal
from tests import factories as f
from tests.fixtures import erpnext_configure

pytestmark = pytest.mark.django_db
REAL_RELAY = outbox.outbox_relay


@pytest.fixture
def erp_entity(entity, erp):
    """US01 posting to the ERPNext stand-in `erp` (tests/fixtures.py), with timeouts shorter than its 1 s."""
    return erpnext_configure(entity, erp, read_timeout=0.5, connect_timeout=0.5)


@pytest.fixture
def journal(erp_entity, integration, monkeypatch):
    """A ready invoice journal whose posting task has not run (the relay is held back)."""
    monkeypatch.setattr(outbox, "outbox_relay", lambda ids: None)
    customer = f.customer()
    integration.send(customer)
    integration.send(f.invoice(customer_id=customer["data"]["customer_id"]))
    return Journal.objects.get(kind="invoice")


def post(journal):
    return services.journal_post(journal_id=journal.pk)


def test_posts_one_submitted_journal_entry_with_our_reference(erp, journal):
    outcome = post(journal)
    journal.refresh_from_db()
    assert journal.status == "posted"
    assert journal.erp_document_ref == outcome.erp_document_ref == "ACC-JV-2026-00001"
    [entry] = erp.entries.values()
    assert entry["cheque_no"] == str(journal.pk)
    assert entry["docstatus"] == 1
    assert entry["posting_date"] == "2026-11-01"
    receivable = [row for row in entry["accounts"] if row["account"] == "1200"]
    assert receivable[0]["party_type"] == "Customer"
    assert receivable[0]["debit_in_account_currency"] == "107.2500"
    assert journal.attempts.get().outcome == "posted"


def test_erp_account_names_come_from_the_mapping(erp, journal, erp_entity):
    erp.accounts.add("Debtors - TUS")
    services.account_set_erp_name(entity=erp_entity, account_code="1200", erp_account="Debtors - TUS", actor="test")
    post(journal)
    [entry] = erp.entries.values()
    assert {row["account"] for row in entry["accounts"]} >= {"Debtors - TUS"}


def test_rate_limit_is_transient_and_honours_retry_after(erp, journal):
    erp.faults.add("rate_limit")
    with pytest.raises(connectors.TransientError) as caught:
        post(journal)
    assert caught.value.retry_after == 1.0
    journal.refresh_from_db()
    assert journal.status == "ready"
    assert journal.attempts.get().outcome == "transient"
    post(journal)
    journal.refresh_from_db()
    assert journal.status == "posted"
    assert len(erp.entries) == 1


@pytest.mark.parametrize("fault", ["error_500", "error_503"])
def test_server_errors_are_transient(erp, journal, fault):
    erp.faults.add(fault)
    with pytest.raises(connectors.TransientError):
        post(journal)
    assert not erp.entries


def test_validation_error_is_permanent_with_frappes_message(erp, journal):
    erp.fail_validation = "Account 1200 is frozen"
    with pytest.raises(connectors.PermanentError) as caught:
        post(journal)
    assert "ValidationError: Account 1200 is frozen" in caught.value.erp_message
    assert "417" in caught.value.erp_message


def test_bad_credentials_are_permanent(erp, journal, monkeypatch):
    monkeypatch.setenv("TEST_ERPNEXT_TOKEN", "key:wrong")
    with pytest.raises(connectors.PermanentError) as caught:
        post(journal)
    assert "AuthenticationError" in caught.value.erp_message


def test_a_missing_secret_names_the_variable_and_never_its_value(erp, journal, monkeypatch):
    monkeypatch.delenv("TEST_ERPNEXT_TOKEN")
    with pytest.raises(connectors.PermanentError) as caught:
        post(journal)
    assert "TEST_ERPNEXT_TOKEN is not set" in str(caught.value)


def test_connection_refused_is_transient(journal, erp_entity):
    erp_entity.erp_settings["url"] = "http://127.0.0.1:9"
    erp_entity.save()
    with pytest.raises(connectors.TransientError):
        post(journal)


@pytest.mark.parametrize("fault", ["commit_then_timeout", "commit_then_502", "commit_then_reset"])
def test_ambiguous_failures_are_looked_up_before_sending_again(erp, journal, fault):
    erp.faults.add(fault)
    with pytest.raises(connectors.AmbiguousError):
        post(journal)
    assert len(erp.entries) == 1  # the ERP did apply it
    outcome = post(journal)
    journal.refresh_from_db()
    assert journal.status == "posted"
    assert len(erp.entries) == 1  # ... and it was found, not sent twice
    assert outcome.erp_document_ref == next(iter(erp.entries))
    assert list(journal.attempts.order_by("started_at").values_list("outcome", flat=True)) == [
        "ambiguous", "already_posted"]


def test_timeout_before_anything_was_stored_is_sent_again_after_the_look_up(erp, journal):
    erp.faults.add("timeout_before")
    with pytest.raises(connectors.AmbiguousError):
        post(journal)
    assert not erp.entries
    post(journal)
    assert len(erp.entries) == 1
    methods = [m for m, _ in erp.requests]
    assert methods == ["POST", "GET", "POST"]


def test_a_draft_left_behind_is_submitted_not_duplicated(erp, journal):
    erp.entries["ACC-JV-2026-00077"] = {"name": "ACC-JV-2026-00077", "cheque_no": str(journal.pk), "docstatus": 0}
    PostingAttempt.objects.create(journal=journal, connector="erpnext", outcome="ambiguous")
    outcome = post(journal)
    assert outcome.erp_document_ref == "ACC-JV-2026-00077"
    assert erp.entries["ACC-JV-2026-00077"]["docstatus"] == 1
    assert len(erp.entries) == 1


def test_permanent_failure_in_the_task_opens_posting_failed_and_retry_posts(erp, journal, finance, monkeypatch):
    erp.fail_validation = "Posting date is in a closed fiscal year"
    post_journal.apply(args=[str(journal.pk)])
    journal.refresh_from_db()
    assert journal.status == "failed"
    exc = ExceptionRecord.objects.get(code="posting_failed")
    assert "closed fiscal year" in exc.message
    assert exc.journal_id == journal.pk
    assert finance.event(journal.event_id)["status"] == "exception"
    erp.fail_validation = None
    monkeypatch.setattr(outbox, "outbox_relay", REAL_RELAY)  # retry hands the journal to the (eager) worker
    response = finance.post(f"/api/v1/exceptions/{exc.pk}/retry")
    assert response.status_code == 200
    journal.refresh_from_db()
    exc.refresh_from_db()
    assert journal.status == "posted"
    assert exc.status == "resolved"
    assert len(erp.entries) == 1
    assert finance.event(journal.event_id)["status"] == "posted"


def test_test_connection_reports_the_erp_user(erp, erp_entity):
    assert services.entity_test_connection(entity=erp_entity) == "connected as integration@tieout.test"


def test_a_request_whose_body_never_fully_arrived_is_not_received_by_the_stand_in(erp):
    """A worker SIGKILLed while sending leaves a request cut short: the server reads what came and closes the
    connection, as a vendor's does. The fault tests count creates per journal from what the stand-in received,
    and such a request, counted as a create with no journal, once made a SIGKILL test see a duplicate."""
    received = []
    erp.on_receive_hook = lambda doc: received.append(doc) and False
    host, port = erp.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as conn:
        # Its headers went out, then the process died before a byte of the body.
        conn.sendall(b"POST /api/resource/Journal%20Entry HTTP/1.1\r\nHost: erp\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 100\r\n\r\n")
        conn.shutdown(socket.SHUT_WR)
        assert conn.recv(1024) == b""  # closed, nothing answered
    time.sleep(0.1)
    assert received == [] and erp.journals.rows == {}
