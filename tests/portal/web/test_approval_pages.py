"""The approvals inbox and detail pages and the manual adjustments pages, through Django's test client.

What matters here is what a person can see and do: the inbox lists what waits (scoped to their entities,
their own requests marked), the detail shows everything needed to decide, the buttons appear only for
someone allowed to press them, and the server refuses anyone else whatever the page showed (forged POSTs:
403 with `segregation_of_duties` for the requester, 403 for auditors and finance operations, 403 without
a CSRF token). Adjustment forms show refusals inline with their codes and create nothing when refused.
"""
import datetime
import html
import re
from decimal import Decimal

import pytest
from django.contrib.auth import get_user_model
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from billing_sync import adjustments, tokens
from billing_sync.models import Event, Invoice, WriteOff
from exceptions_queue import services as queue
from exceptions_queue.models import Approval
from ledger import services as ledger
from ledger.models import Journal
from tests import factories as f
from tests.portal.web.conftest import client_for

pytestmark = pytest.mark.django_db
User = get_user_model()


# ------------------------------------------------------------------------------------------- helpers
@pytest.fixture
def staff(finance, controller, controller2, auditor, admin_api):
    """Every staff role exists (the API fixtures create the users); returns a client factory per username."""
    return client_for


@pytest.fixture
def invoice(entity, integration) -> Invoice:
    customer = f.customer(name="Globex Ltd")
    assert integration.send(customer).status_code == 202
    payload = f.invoice(customer_id=customer["data"]["customer_id"], lines=[("18000.00", "2000.00")],
                        number="INV-GLOBEX-1")
    assert integration.send(payload).status_code == 202
    return Invoice.objects.get(invoice_id=payload["data"]["invoice_id"])


@pytest.fixture
def raise_write_off(django_capture_on_commit_callbacks):
    def make(invoice, amount, username, reason="Customer in administration"):
        with django_capture_on_commit_callbacks(execute=True):
            return adjustments.manual_write_off_raise(invoice=invoice, amount=amount, reason=reason,
                                                      user=User.objects.get(username=username))
    return make


def _post(client, url, data, capture):
    with capture(execute=True):
        return client.post(url, data)


def _text(response) -> str:
    return html.unescape(re.sub(r"\s+", " ", response.content.decode()))


def _buttons(response) -> set[str]:
    return set(re.findall(r"<button[^>]*>([^<]+)</button>", response.content.decode()))


# ------------------------------------------------------------------------------------------- inbox
def test_the_inbox_lists_pending_requests_with_their_requester_and_progress(invoice, staff, raise_write_off):
    mine = raise_write_off(invoice, "100.00", "carl-controller")
    other = raise_write_off(invoice, "10000.00", "fiona-ops")
    response = staff("carl-controller").get("/approvals/")
    assert response.status_code == 200
    text = _text(response)
    for header in ("Kind", "Document", "Amount", "Entity", "Requested by", "Approvals", "Age"):
        assert '<th scope="col"' in text and f">{header}</th>" in text
    assert mine.document_id in text and other.document_id in text
    row = re.search(rf'data-approval="{mine.approval.pk}".*?</tr>', text).group(0)
    assert "your request" in row and "0 of 1" in row and "100.00 USD" in row
    row = re.search(rf'data-approval="{other.approval.pk}".*?</tr>', text).group(0)
    assert "your request" not in row and "0 of 2" in row and "fiona-ops" in row


def test_inbox_filters_and_entity_scope(invoice, staff, raise_write_off, controller):
    done = raise_write_off(invoice, "50.00", "fiona-ops")
    assert controller.post(f"/api/v1/approvals/{done.approval.pk}/approve", {}).status_code == 200
    waiting = raise_write_off(invoice, "60.00", "fiona-ops")
    client = staff("cora-controller")
    pending = _text(client.get("/approvals/"))
    assert waiting.document_id in pending and done.document_id not in pending
    approved = _text(client.get("/approvals/?status=approved"))
    assert done.document_id in approved and waiting.document_id not in approved
    assert waiting.document_id not in _text(client.get("/approvals/?kind=credit_note"))
    assert waiting.document_id in _text(client.get("/approvals/?kind=write_off&entity=US01"))
    own = raise_write_off(invoice, "61.00", "cora-controller")
    for_me = _text(client.get("/approvals/?mine=decide"))
    assert waiting.document_id in for_me and own.document_id not in for_me
    assert own.document_id in _text(client.get("/approvals/?mine=raised"))
    assert controller.post(f"/api/v1/approvals/{waiting.approval.pk}/approve", {}).status_code == 200
    assert waiting.document_id not in _text(staff("carl-controller").get("/approvals/?mine=decide&status=all"))

    ledger.entity_setup(code="GB01", currency="GBP", actor="test")
    tokens.token_issue(username="gail-gb", role="controller", entities=["GB01"], actor="test")
    outsider = staff("gail-gb")
    text = _text(outsider.get("/approvals/?status=all"))
    assert waiting.document_id not in text and done.document_id not in text
    assert '<option value="US01"' not in text  # the entity filter offers only their entities
    assert outsider.get(f"/approvals/{waiting.approval.pk}/").status_code == 404
    assert outsider.post(f"/approvals/{waiting.approval.pk}/approve", {}).status_code == 404


def test_signed_out_visitors_go_to_the_login_page(invoice):
    response = Client().get("/approvals/")
    assert response.status_code == 302 and response["Location"].startswith("/accounts/login/")
    assert Client().get("/adjustments/").status_code == 302


# ------------------------------------------------------------------------------------------- detail
def test_the_detail_shows_everything_needed_to_decide(invoice, staff, raise_write_off, integration):
    pay = f.payment(customer_id=invoice.customer.customer_id, amount="5000.00",
                    allocations=[(invoice.invoice_id, "5000.00")])
    assert integration.send(pay).status_code == 202
    assert integration.send(f.credit_note(invoice.invoice_id, "200.00")).status_code == 202
    result = raise_write_off(invoice, "300.00", "fiona-ops", reason="Uncollectible remainder")
    response = staff("carl-controller").get(f"/approvals/{result.approval.pk}/")
    assert response.status_code == 200
    text = _text(response)
    context = response.context
    inv = context["invoice"]
    assert (inv["number"], inv["customer"]["name"], inv["total"], inv["open_amount"], inv["ledger_open_amount"],
            inv["status"]) == ("INV-GLOBEX-1", "Globex Ltd", "20000.00", "14800.00", "14800.00", "open")
    assert inv["customer"]["balance"] == "14800.00"
    assert [a["amount"] for a in inv["allocations"]] == ["5000.00"]
    assert [(n["gross"], n["status"]) for n in inv["credit_notes"]] == [("200.00", "approved")]
    assert [(w["id"], w["status"]) for w in inv["write_offs"]] == [(result.document_id, "pending_approval")]
    changes = [c for v in inv["history"] for c in v["changes"]]
    assert {"field": "Payments applied", "old": "0.00", "new": "5000.00"} in changes
    assert {"field": "Credited", "old": "0.00", "new": "200.00"} in changes
    for shown in ("INV-GLOBEX-1", "Globex Ltd", "14,800.00", "Uncollectible remainder", "fiona-ops",
                  "Payments applied: 0.00 → 5,000.00", "Credited: 0.00 → 200.00"):
        assert shown in text, shown
    policy = context["policy"]
    assert (policy["write_off_threshold"], policy["two_approver_threshold"], policy["required"]) == (
        "0.00", "10000.00", 1)
    assert "Every write-off needs approval." in text and "one controller's approval is enough" in text
    lines = [(ln["account"], ln["debit"], ln["credit"]) for ln in context["journal"]["lines"]]
    assert lines == [("6200", "300.00", ""), ("1200", "", "300.00")]
    assert "6200 Bad debt expense" in text and 'id="journal-status">pending_approval' in text
    assert "0 of 1 approval" in text and "No decisions yet." in text
    assert {"Approve", "Reject"} <= _buttons(response)
    assert '<label for="comment">Comment</label>' in text


def test_the_requester_sees_no_buttons_and_a_forged_post_is_refused(invoice, staff, raise_write_off,
                                                                      django_capture_on_commit_callbacks):
    result = raise_write_off(invoice, "80.00", "carl-controller")
    client = staff("carl-controller")
    response = client.get(f"/approvals/{result.approval.pk}/")
    assert "You raised this request; another controller must decide it." in _text(response)
    assert not {"Approve", "Reject"} & _buttons(response)
    for verb in ("approve", "reject"):
        forged = _post(client, f"/approvals/{result.approval.pk}/{verb}", {"comment": "sneaky"},
                       django_capture_on_commit_callbacks)
        assert forged.status_code == 403
        assert "segregation_of_duties" in _text(forged)
    approval = Approval.objects.get(pk=result.approval.pk)
    assert approval.status == "pending" and not approval.decisions.exists()
    assert Journal.objects.get(pk=result.journal.pk).status == Journal.Status.PENDING_APPROVAL


def test_auditors_and_finance_ops_read_but_cannot_decide(invoice, staff, raise_write_off,
                                                         django_capture_on_commit_callbacks):
    result = raise_write_off(invoice, "90.00", "carl-controller")
    for username in ("aude-auditor", "fiona-ops"):
        client = staff(username)
        response = client.get(f"/approvals/{result.approval.pk}/")
        assert response.status_code == 200
        assert not {"Approve", "Reject"} & _buttons(response)
        assert "Only controllers and admins decide approvals" in _text(response)
        for verb in ("approve", "reject"):
            forged = _post(client, f"/approvals/{result.approval.pk}/{verb}", {"comment": "x"},
                           django_capture_on_commit_callbacks)
            assert forged.status_code == 403
    assert not Approval.objects.get(pk=result.approval.pk).decisions.exists()


def test_a_post_without_the_csrf_token_is_refused(invoice, staff, raise_write_off):
    result = raise_write_off(invoice, "70.00", "fiona-ops")
    client = staff("carl-controller", enforce_csrf_checks=True)
    response = client.post(f"/approvals/{result.approval.pk}/approve", {"comment": "ok"})
    assert response.status_code == 403
    assert Approval.objects.get(pk=result.approval.pk).status == "pending"
    # The same client with the page's token goes through.
    page = client.get(f"/approvals/{result.approval.pk}/")
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.content.decode()).group(1)
    response = client.post(f"/approvals/{result.approval.pk}/approve", {"comment": "ok",
                                                                       "csrfmiddlewaretoken": token})
    assert response.status_code == 302


def test_approving_redirects_and_posts_the_journal(invoice, staff, raise_write_off,
                                                   django_capture_on_commit_callbacks):
    result = raise_write_off(invoice, "120.00", "fiona-ops")
    client = staff("carl-controller")
    response = _post(client, f"/approvals/{result.approval.pk}/approve", {"comment": "agreed"},
                     django_capture_on_commit_callbacks)
    assert response.status_code == 302 and response["Location"] == f"/approvals/{result.approval.pk}/"
    page = client.get(response["Location"])
    text = _text(page)
    assert f"Approved {result.document_id}: its journal is released to post." in text
    assert 'id="journal-status">posted' in text and 'id="approval-status">approved' in text
    assert "carl-controller</strong> approved" in text and "“agreed”" in text
    assert not {"Approve", "Reject"} & _buttons(page)
    invoice.refresh_from_db()
    assert invoice.written_off_total == Decimal("120.00")
    # Deciding again is refused with its code, nothing changes.
    again = _post(client, f"/approvals/{result.approval.pk}/approve", {}, django_capture_on_commit_callbacks)
    assert again.status_code == 409 and "already_decided" in _text(again)


def test_two_approvers_show_progress_and_the_first_cannot_approve_twice(invoice, staff, raise_write_off,
                                                                        django_capture_on_commit_callbacks):
    result = raise_write_off(invoice, "12000.00", "fiona-ops")
    carl = staff("carl-controller")
    _post(carl, f"/approvals/{result.approval.pk}/approve", {"comment": "first"}, django_capture_on_commit_callbacks)
    page = _text(carl.get(f"/approvals/{result.approval.pk}/"))
    assert "1 of 2 approvals" in page and "You approved this on" in page
    assert "another controller must approve it too" in page
    assert "two different controllers must approve it" in page
    forged = _post(carl, f"/approvals/{result.approval.pk}/approve", {}, django_capture_on_commit_callbacks)
    assert forged.status_code == 403 and "segregation_of_duties" in _text(forged)
    assert Journal.objects.get(pk=result.journal.pk).status == Journal.Status.PENDING_APPROVAL
    cora = staff("cora-controller")
    _post(cora, f"/approvals/{result.approval.pk}/approve", {"comment": "second"}, django_capture_on_commit_callbacks)
    assert Journal.objects.get(pk=result.journal.pk).status == Journal.Status.POSTED
    assert "2 of 2 approvals" in _text(cora.get(f"/approvals/{result.approval.pk}/"))


def test_rejecting_never_posts(invoice, staff, raise_write_off, django_capture_on_commit_callbacks):
    result = raise_write_off(invoice, "130.00", "fiona-ops")
    response = _post(staff("ada-admin"), f"/approvals/{result.approval.pk}/reject", {"comment": "no"},
                     django_capture_on_commit_callbacks)
    assert response.status_code == 302
    assert Journal.objects.get(pk=result.journal.pk).status == Journal.Status.REJECTED
    invoice.refresh_from_db()
    assert invoice.written_off_total == 0


# ------------------------------------------------------------------------------------------- adjustments
def test_auditors_get_no_adjustment_pages(invoice, staff):
    client = staff("aude-auditor")
    for url in ("/adjustments/", f"/adjustments/invoices/{invoice.pk}/write-off/", "/adjustments/journal/"):
        response = client.get(url)
        assert response.status_code == 403, url
        assert "<form" not in response.content.decode().split("<main", 1)[1]
    response = client.post(f"/adjustments/invoices/{invoice.pk}/write-off/", {"amount": "1.00", "reason": "x"})
    assert response.status_code == 403
    assert not Event.objects.filter(event_id__startswith="tieout-manual-").exists()


def test_search_finds_an_invoice_by_number_or_id(invoice, staff):
    client = staff("fiona-ops")
    for q in ("INV-GLOBEX-1", "globex-1", invoice.invoice_id):
        text = _text(client.get("/adjustments/", {"q": q}))
        assert f'href="/adjustments/invoices/{invoice.pk}/"' in text, q
    assert "No invoice in your entities matches" in _text(client.get("/adjustments/", {"q": "nothing-like-it"}))


def test_the_write_off_form_refuses_over_the_open_amount_inline(invoice, staff, django_capture_on_commit_callbacks):
    client = staff("fiona-ops")
    url = f"/adjustments/invoices/{invoice.pk}/write-off/"
    page = _text(client.get(url))
    assert 'id="open-amount">20,000.00 USD' in page
    assert '<label for="id_amount">Amount to write off</label>' in page and '<label for="id_reason">Reason</label>' in page
    response = _post(client, url, {"amount": "20000.01", "reason": "too much"}, django_capture_on_commit_callbacks)
    assert response.status_code == 422
    text = _text(response)
    assert "over_write_off" in text and "exceeds the open amount" in text
    assert 'id="id_amount-errors"' in text
    response = _post(client, url, {"amount": "12.345", "reason": "x"}, django_capture_on_commit_callbacks)
    assert response.status_code == 422 and "more than 2 decimal places" in _text(response)
    response = _post(client, url, {"amount": "10.00", "reason": ""}, django_capture_on_commit_callbacks)
    assert response.status_code == 422 and "This field is required." in _text(response)
    assert not WriteOff.objects.exists()


def test_a_write_off_raised_in_the_form_goes_to_its_approval(invoice, staff, django_capture_on_commit_callbacks):
    client = staff("fiona-ops")
    response = _post(client, f"/adjustments/invoices/{invoice.pk}/write-off/",
                     {"amount": "250.00", "reason": "Small balance after dispute"}, django_capture_on_commit_callbacks)
    assert response.status_code == 302
    approval = Approval.objects.get()
    assert response["Location"] == f"/approvals/{approval.pk}/"
    assert (approval.requested_by.username, approval.reason, approval.amount) == (
        "fiona-ops", "Small balance after dispute", Decimal("250.00"))
    assert approval.event.receipt.client == "fiona-ops"
    assert "waits for 1 approval by someone else" in _text(client.get(response["Location"]))


def test_a_small_credit_memo_from_the_form_posts_and_lands_on_the_invoice(invoice, staff,
                                                                          django_capture_on_commit_callbacks):
    client = staff("fiona-ops")
    page = _text(client.get(f"/adjustments/invoices/{invoice.pk}/credit-memo/"))
    assert '<option value="US-CA" selected>US-CA</option>' in page
    response = _post(client, f"/adjustments/invoices/{invoice.pk}/credit-memo/",
                     {"amount": "100.00", "tax_amount": "7.25", "tax_jurisdiction": "US-CA", "reason": "Goodwill"},
                     django_capture_on_commit_callbacks)
    assert response.status_code == 302 and response["Location"] == f"/adjustments/invoices/{invoice.pk}/"
    text = _text(client.get(response["Location"]))
    assert "no approval needed under the policy" in text and 'id="open-amount">19,892.75 USD' in text
    invoice.refresh_from_db()
    assert invoice.credited_total == Decimal("107.25")


def test_the_manual_journal_form(entity, staff, django_capture_on_commit_callbacks):
    client = staff("fiona-ops")
    page = client.get("/adjustments/journal/")
    text = _text(page)
    assert page.status_code == 200
    assert text.count('class="journal-line"') == 4
    for n in range(4):
        assert f'<label class="sr-only" for="id_lines-{n}-account">Line <span class="line-no-label">{n + 1}</span> account</label>' in text
    assert '<option value="6100">6100 Payment processing fees</option>' in text
    base = {"entity": "US01", "accounting_date": "2026-11-30", "description": "Fee accrual",
            "lines-TOTAL_FORMS": "4", "lines-INITIAL_FORMS": "0", "lines-MIN_NUM_FORMS": "0",
            "lines-MAX_NUM_FORMS": "200"}
    lines = {"lines-0-account": "6100", "lines-0-debit": "250.00", "lines-1-account": "2300",
             "lines-1-credit": "249.00"}
    response = _post(client, "/adjustments/journal/", {**base, **lines}, django_capture_on_commit_callbacks)
    assert response.status_code == 422
    assert "unbalanced_journal" in _text(response) and "differ by 1.00" in _text(response)

    more = _post(client, "/adjustments/journal/", {**base, **lines, "add_line": "1"}, django_capture_on_commit_callbacks)
    assert more.status_code == 200 and _text(more).count('class="journal-line"') == 5
    assert 'value="250.00"' in _text(more)  # what was typed is kept

    bad = _post(client, "/adjustments/journal/",
                {**base, "lines-TOTAL_FORMS": "5", **lines, "lines-1-credit": "250.00", "lines-4-account": "9999",
                 "lines-4-debit": "1.00"}, django_capture_on_commit_callbacks)
    assert bad.status_code == 422  # 9999 is not among the account choices: refused by the form
    assert not Journal.objects.filter(kind="manual").exists()

    ok = _post(client, "/adjustments/journal/", {**base, **lines, "lines-1-credit": "250.00"},
               django_capture_on_commit_callbacks)
    assert ok.status_code == 302
    journal = Journal.objects.get(kind="manual")
    assert ok["Location"] == f"/approvals/{journal.approval.pk}/"
    assert journal.approval.requested_by.username == "fiona-ops"
    detail = _text(client.get(ok["Location"]))
    assert "You raised this request; another controller must decide it." in detail
    assert "Fee accrual" in detail and "6100 Payment processing fees" in detail


def test_the_manual_journal_form_offers_only_the_users_entities(entity, staff):
    ledger.entity_setup(code="GB01", currency="GBP", actor="test")
    ledger.entity_setup(code="DE01", currency="EUR", actor="test")
    tokens.token_issue(username="gus-ops", role="finance_ops", entities=["GB01", "DE01"], actor="test")
    client = staff("gus-ops")
    text = _text(client.get("/adjustments/journal/"))
    assert '<option value="GB01">' in text and '<option value="DE01">' in text and "US01" not in text
    assert client.get("/adjustments/journal/?entity=US01").status_code == 404
    assert "GBP" in _text(client.get("/adjustments/journal/?entity=GB01"))


def test_a_manual_journal_into_a_closed_period_is_refused_inline(entity, staff, django_capture_on_commit_callbacks):
    ledger.period_set_status(entity=entity, year=2026, month=10, status="closed", actor="test")
    response = _post(staff("carl-controller"), "/adjustments/journal/", {
        "entity": "US01", "accounting_date": "2026-10-31", "description": "late", "lines-TOTAL_FORMS": "2",
        "lines-INITIAL_FORMS": "0", "lines-0-account": "6100", "lines-0-debit": "5.00", "lines-1-account": "2300",
        "lines-1-credit": "5.00"}, django_capture_on_commit_callbacks)
    assert response.status_code == 422
    assert "period_closed" in _text(response) and 'id="id_accounting_date-errors"' in _text(response)
    assert datetime.date(2026, 10, 31) not in set(Journal.objects.values_list("accounting_date", flat=True))


def test_a_manual_journal_below_the_policy_threshold_goes_to_its_posted_result(entity, staff,
                                                                             django_capture_on_commit_callbacks):
    queue.approval_policy_update(entity=entity, values={"manual_journal_threshold": Decimal("500")}, actor="test")
    client = staff("fiona-ops")
    response = _post(client, "/adjustments/journal/", {
        "entity": "US01", "accounting_date": "2026-11-30", "description": "Small reclass", "lines-TOTAL_FORMS": "2",
        "lines-INITIAL_FORMS": "0", "lines-0-account": "4000", "lines-0-debit": "12.00", "lines-1-account": "4900",
        "lines-1-credit": "12.00"}, django_capture_on_commit_callbacks)
    journal = Journal.objects.get(kind="manual")
    assert response.status_code == 302 and response["Location"] == f"/adjustments/journal/{journal.pk}/"
    assert not Approval.objects.filter(journal=journal).exists()
    text = _text(client.get(response["Location"]))
    assert "no approval needed under the policy" in text and 'id="journal-status">posted' in text
    assert staff("aude-auditor").get(response["Location"]).status_code == 403


def test_submitting_the_same_form_twice_raises_one_write_off(invoice, staff, django_capture_on_commit_callbacks):
    client = staff("fiona-ops")
    url = f"/adjustments/invoices/{invoice.pk}/write-off/"
    key = re.search(r'name="request_key" value="([^"]+)"', client.get(url).content.decode()).group(1)
    data = {"amount": "33.00", "reason": "Double click", "request_key": key}
    first = _post(client, url, data, django_capture_on_commit_callbacks)
    second = _post(client, url, data, django_capture_on_commit_callbacks)
    assert first.status_code == second.status_code == 302 and first["Location"] == second["Location"]
    assert WriteOff.objects.count() == 1 and Approval.objects.count() == 1
    changed = _post(client, url, {**data, "amount": "34.00"}, django_capture_on_commit_callbacks)
    assert changed.status_code == 422 and "idempotency_conflict" in _text(changed)
    # A fresh form is a fresh request.
    fresh = re.search(r'name="request_key" value="([^"]+)"', client.get(url).content.decode()).group(1)
    assert fresh != key


def test_the_inbox_runs_a_fixed_number_of_queries(invoice, staff, raise_write_off):
    client = staff("carl-controller")
    raise_write_off(invoice, "1.00", "fiona-ops")
    with CaptureQueriesContext(connection) as one:
        assert client.get("/approvals/").status_code == 200
    for n in range(8):
        raise_write_off(invoice, f"{n + 2}.00", "fiona-ops" if n % 2 else "carl-controller")
    with CaptureQueriesContext(connection) as nine:
        response = client.get("/approvals/")
    assert len(response.context["rows"]) == 9
    assert len(nine.captured_queries) == len(one.captured_queries)
