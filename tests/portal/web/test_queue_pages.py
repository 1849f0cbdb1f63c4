"""The exception-queue pages through Django's test client: list (columns, filters, search, SLA colours,
keyset pages without COUNT), detail (actions, messages with stable codes, thread, trace), bulk actions,
auditors (no buttons, forged POSTs 403), CSRF, entity scope, and sign-in.
"""
import datetime
import re
from decimal import Decimal

import pytest
from django.db import connection, transaction
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from billing_sync import tokens
from exceptions_queue import services
from exceptions_queue.models import ExceptionComment, ExceptionRecord
from ledger import services as ledger
from ledger.models import Journal
from tests import factories as f
from tests.portal.web.conftest import client_for

pytestmark = pytest.mark.django_db
LIST = "/exceptions/"


def exception_of(api, payload, code) -> ExceptionRecord:
    response = api.send(payload)
    assert response.status_code == 202, response.content
    exc = ExceptionRecord.objects.get(event_id=response.json()["id"])
    assert exc.code == code
    return exc


@pytest.fixture
def queue(entity, integration, finance, controller, auditor):
    integration.send(f.customer("cus_w"))
    integration.send(f.invoice("inv_w", customer_id="cus_w", lines=[("100.00", "7.25")]))
    return {
        "over": exception_of(integration, f.payment("pay_w", customer_id="cus_w", amount="200.00",
                                                    allocations=[("inv_w", "150.00")], event_id="evt_w_over"),
                             "over_application"),
        "customer": exception_of(integration, f.invoice("inv_x", customer_id="cus_missing", lines=[("5.00", "0")]),
                                 "unknown_customer"),
        "mapping": exception_of(integration, f.invoice("inv_y", customer_id="cus_w", lines=[("9.00", "0", "4999")]),
                                "no_account_mapping"),
    }


@pytest.fixture
def fiona(queue):
    return client_for("fiona-ops")


@pytest.fixture
def aude(queue):
    return client_for("aude-auditor")


def rows(html: str) -> list[str]:
    return re.findall(r'<tr data-exception="([0-9a-f-]+)"', html)


def messages_of(response) -> list[str]:
    return [str(m) for m in response.context["messages"]]


def detail(exc) -> str:
    return f"/exceptions/{exc.pk}/"


def age(exc, hours):
    # Test-only: move the opening time back (nothing in the product rewrites created_at).
    ExceptionRecord.objects.filter(pk=exc.pk).update(created_at=timezone.now() - datetime.timedelta(hours=hours))


# --------------------------------------------------------------------------------------------- list
def test_list_columns_and_default_unresolved(queue, fiona):
    fiona.post(detail(queue["mapping"]), {"action": "resolve", "resolution": "booked by hand"})
    response = fiona.get(LIST)
    assert response.status_code == 200
    html = response.content.decode()
    assert set(rows(html)) == {str(queue["over"].pk), str(queue["customer"].pk)}
    for header in ("Code", "Message", "Source object", "Amount", "Age", "Owner", "Status", "Actions"):
        assert '<th scope="col"' in html and f">{header}</th>" in html
    assert "<code>over_application</code>" in html
    assert "billing-prod · payment.received" in html and "<code>pay_w</code>" in html
    assert "200.00 USD" in html
    assert 'class="badge age-ok"' in html and "0m / SLA 24h" in html
    assert 'aria-label="Assign over_application pay_w to me"' in html
    assert 'value="retry"' in html and "Retry selected" in html and "Assign selected to me" in html
    assert '<label for="f-q">Search source ids</label>' in html
    everything = fiona.get(LIST, {"status": "all"}).content.decode()
    assert str(queue["mapping"].pk) in rows(everything)


def test_filters_and_search(queue, fiona):
    fiona.post(detail(queue["customer"]), {"action": "assign_me"})

    def listed(**params):
        return set(rows(fiona.get(LIST, params).content.decode()))

    over, customer, mapping = (str(queue[k].pk) for k in ("over", "customer", "mapping"))
    assert listed(code="over_application") == {over}
    assert listed(process="invoice") == {customer, mapping}
    assert listed(owner="me") == {customer}
    assert listed(owner="unassigned") == {over, mapping}
    assert listed(entity="US01") == {over, customer, mapping}
    assert listed(status="assigned") == {customer}
    assert listed(q="pay_w") == listed(q="evt_w_over") == listed(q=over) == {over}
    assert listed(q="inv_y") == {mapping}
    fiona.post(detail(queue["mapping"]), {"action": "escalate", "reason": "Chart change needs the controller"})
    assert listed(escalated="true") == {mapping}
    age(queue["over"], 30)
    assert listed(age="1-7d") == {over}
    assert listed(age="<1h") == {customer, mapping}
    page = fiona.get(LIST, {"code": "over_application"}).content.decode()
    assert '<option value="over_application" selected>' in page and "Clear" in page


def test_sla_colours(queue, fiona):
    age(queue["over"], 13)  # over_application: 24 h SLA -> past half
    age(queue["customer"], 30)  # past 24 h
    html = fiona.get(LIST).content.decode()

    def badge(exc):
        row = html.split(f'data-exception="{exc.pk}"', 1)[1].split("</tr>", 1)[0]
        return re.search(r'<span class="badge (age-\w+)" title="([^"]+)">([^<]+)</span>', row).groups()

    assert badge(queue["over"]) == ("age-warn", "near SLA", "13h / SLA 24h")
    assert badge(queue["customer"]) == ("age-bad", "past SLA", "30h / SLA 24h")
    assert badge(queue["mapping"]) == ("age-ok", "within SLA", "0m / SLA 8h")


def test_keyset_pages_without_count(entity, finance):
    fiona = client_for("fiona-ops")
    now = timezone.now()
    # Volume only: rows inserted directly.
    ExceptionRecord.objects.bulk_create([
        ExceptionRecord(code="unknown_customer", message=f"row {i}", process="invoice", entity_code="US01",
                        source_ref=f"inv_{i}", created_at=now - datetime.timedelta(minutes=i)) for i in range(60)])
    with CaptureQueriesContext(connection) as queries:
        first = fiona.get(LIST)
    assert not any("COUNT(" in q["sql"].upper() for q in queries.captured_queries)
    assert len(queries.captured_queries) <= 12, [q["sql"] for q in queries.captured_queries]  # no query per row
    html = first.content.decode()
    assert len(rows(html)) == 50
    assert "Newer" not in html
    older = re.search(r'<a href="(\?[^"]+)" rel="next">', html).group(1).replace("&amp;", "&")
    second = fiona.get(LIST + older).content.decode()
    assert len(rows(second)) == 10 and not set(rows(second)) & set(rows(html))
    assert 'rel="prev"' in second and 'rel="next"' not in second
    newer = re.search(r'<a href="(\?[^"]+)" rel="prev">', second).group(1).replace("&amp;", "&")
    assert rows(fiona.get(LIST + newer).content.decode()) == rows(html)


# --------------------------------------------------------------------------------------------- detail actions
def test_detail_actions_with_messages(queue, fiona):
    exc = queue["customer"]
    url = detail(exc)
    response = fiona.post(url, {"action": "assign_me"}, follow=True)
    assert response.redirect_chain == [(url, 302)]
    assert messages_of(response) == ["Assigned to you."]
    assert 'id="exception-owner">fiona-ops' in response.content.decode()

    response = fiona.post(url, {"action": "comment", "body": "Asked CRM for the customer"}, follow=True)
    assert messages_of(response) == ["Comment added."]
    assert "Asked CRM for the customer" in response.content.decode()

    response = fiona.post(url, {"action": "comment", "body": "  "}, follow=True)
    assert messages_of(response) == ["invalid_request: a comment is required"]

    response = fiona.post(url, {"action": "escalate", "reason": "Blocks the close"}, follow=True)
    assert messages_of(response) == ["Escalated to level 1."]
    assert "escalated L1" in response.content.decode()

    response = fiona.post(url, {"action": "resolve", "resolution": ""}, follow=True)
    assert messages_of(response) == ["invalid_request: a resolution (the reason) is required"]
    assert ExceptionRecord.objects.get(pk=exc.pk).status == "assigned"

    response = fiona.post(url, {"action": "resolve", "resolution": "Customer was a duplicate"}, follow=True)
    assert messages_of(response) == ["Resolved."]
    html = response.content.decode()
    assert 'id="exception-status">resolved' in html and "Customer was a duplicate" in html

    response = fiona.post(url, {"action": "retry"}, follow=True)
    assert messages_of(response) == ["invalid_state: the exception is resolved"]
    exc.refresh_from_db()
    assert (exc.status, exc.owner.username, exc.escalation_level, exc.retry_count) == ("resolved", "fiona-ops", 1, 0)


def test_assign_to_someone_and_row_actions_return_to_the_list(queue, fiona):
    response = fiona.post(detail(queue["over"]), {"action": "assign", "owner": "carl-controller"}, follow=True)
    assert messages_of(response) == ["Assigned to carl-controller."]
    response = fiona.post(detail(queue["over"]), {"action": "assign", "owner": "aude-auditor"}, follow=True)
    assert messages_of(response) == ["invalid_request: aude-auditor cannot own exceptions"]
    response = fiona.post(detail(queue["customer"]), {"action": "retry", "next": "/exceptions/?code=unknown_customer"})
    assert response.status_code == 302 and response["Location"] == "/exceptions/?code=unknown_customer"
    response = fiona.post(detail(queue["customer"]), {"action": "retry", "next": "https://evil.example/"})
    assert response["Location"] == detail(queue["customer"])
    assert ExceptionRecord.objects.get(pk=queue["customer"].pk).retry_count == 2


def test_replay_from_the_page_after_the_fix_shows_the_posted_journal(queue, entity, fiona,
                                                                     django_capture_on_commit_callbacks):
    exc = queue["mapping"]
    page = fiona.get(detail(exc)).content.decode()
    assert 'value="replay"' in page
    with transaction.atomic():
        ledger.account_create(entity=entity, code="4999", name="Other revenue", type_="income", actor="test")
    with django_capture_on_commit_callbacks(execute=True):  # the journal posts once the replay commits
        response = fiona.post(detail(exc), {"action": "replay"})
    assert response.status_code == 302
    response = fiona.get(detail(exc))
    assert messages_of(response) == ["Replayed from the stored payload: the exception is resolved."]
    html = response.content.decode()
    journal = Journal.objects.get(event_id=exc.event_id)
    assert journal.status == "posted"
    assert f'data-journal="{journal.pk}"' in html and '<span class="journal-status">posted</span>' in html
    assert "<td>4999</td>" in html  # the journal's lines table


def test_detail_shows_the_trace(queue, aude):
    exc = queue["over"]
    html = aude.get(detail(exc)).content.decode()
    receipt = exc.event.receipt
    assert receipt.sha256 in html and f"{len(bytes(receipt.body))} bytes" in html
    assert "<summary>Payload</summary>" in html and "&quot;payment_id&quot;: &quot;pay_w&quot;" in html
    assert "<code>event.received</code>" in html and "<code>exception.opened</code>" in html
    assert exc.event.payload_hash in html


# --------------------------------------------------------------------------------------------- bulk
def test_bulk_assign_and_retry_report_each_failure(queue, fiona):
    fiona.post(detail(queue["mapping"]), {"action": "resolve", "resolution": "done elsewhere"}, follow=True)
    ids = [str(queue[k].pk) for k in ("over", "customer", "mapping")]
    response = fiona.post("/exceptions/bulk", {"action": "assign_me", "ids": ids, "next": "/exceptions/?owner=me"},
                          follow=True)
    assert response.redirect_chain == [("/exceptions/?owner=me", 302)]
    assert messages_of(response) == ["Assigned to fiona-ops: 2 of 3.",
                                     f"{ids[2][:8]}: invalid_state: the exception is resolved"]
    assert set(rows(response.content.decode())) == set(ids[:2])

    response = fiona.post("/exceptions/bulk", {"action": "assign", "owner": "carl-controller", "ids": ids[:1]},
                          follow=True)
    assert messages_of(response) == ["Assigned to carl-controller: 1 of 1."]
    response = fiona.post("/exceptions/bulk", {"action": "retry", "ids": ids[:2]}, follow=True)
    assert messages_of(response) == ["Retried: 2 of 2."]
    assert list(ExceptionRecord.objects.filter(pk__in=ids[:2]).values_list("retry_count", flat=True)) == [1, 1]
    response = fiona.post("/exceptions/bulk", {"action": "retry"}, follow=True)
    assert messages_of(response) == ["invalid_request: select at least one exception"]


# --------------------------------------------------------------------------------------------- auditors, CSRF
def test_auditor_sees_everything_and_no_buttons(queue, aude):
    listing = aude.get(LIST).content.decode()
    assert len(rows(listing)) == 3
    assert 'name="action"' not in listing and 'id="bulk-form"' not in listing and 'name="ids"' not in listing
    page = aude.get(detail(queue["over"])).content.decode()
    assert "<code>over_application</code>" in page
    assert 'name="action"' not in page and "<textarea" not in page


@pytest.mark.parametrize("url_key, body", [
    ("detail", {"action": "assign_me"}), ("detail", {"action": "comment", "body": "x"}),
    ("detail", {"action": "resolve", "resolution": "x"}), ("detail", {"action": "retry"}),
    ("detail", {"action": "escalate", "reason": "x"}), ("detail", {"action": "replay"}),
    ("bulk", {"action": "assign_me"}),
])
def test_forged_posts_by_an_auditor_are_403(queue, aude, url_key, body):
    exc = queue["mapping"]
    url = detail(exc) if url_key == "detail" else "/exceptions/bulk"
    response = aude.post(url, {**body, "ids": [str(exc.pk)]})
    assert response.status_code == 403
    exc.refresh_from_db()
    assert (exc.status, exc.owner_id, exc.retry_count, exc.escalation_level) == ("open", None, 0, 0)
    assert not ExceptionComment.objects.exists()


def test_csrf_is_enforced(queue):
    client = client_for("fiona-ops", enforce_csrf_checks=True)
    exc = queue["over"]
    assert client.post(detail(exc), {"action": "assign_me"}).status_code == 403
    assert client.post("/exceptions/bulk", {"action": "assign_me", "ids": [str(exc.pk)]}).status_code == 403
    assert ExceptionRecord.objects.get(pk=exc.pk).owner_id is None
    page = client.get(detail(exc)).content.decode()
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page).group(1)
    response = client.post(detail(exc), {"action": "assign_me", "csrfmiddlewaretoken": token})
    assert response.status_code == 302
    assert ExceptionRecord.objects.get(pk=exc.pk).owner.username == "fiona-ops"


# --------------------------------------------------------------------------------------------- scope, sign-in
def test_other_entities_are_hidden_and_404(queue):
    with transaction.atomic():
        ledger.entity_setup(code="GB01", currency="GBP", actor="test")
    tokens.token_issue(username="gina-gb", role="finance_ops", actor="test", entities=["GB01"])
    gina = client_for("gina-gb")
    assert rows(gina.get(LIST).content.decode()) == []
    exc = queue["over"]
    assert gina.get(detail(exc)).status_code == 404
    assert gina.post(detail(exc), {"action": "assign_me"}).status_code == 404
    response = gina.post("/exceptions/bulk", {"action": "assign_me", "ids": [str(exc.pk)]}, follow=True)
    assert messages_of(response) == [f"{str(exc.pk)[:8]}: not_found: no exception {exc.pk}"]
    assert ExceptionRecord.objects.get(pk=exc.pk).owner_id is None


def test_signed_out_visitors_go_to_sign_in(queue):
    response = Client().get(LIST)
    assert response.status_code == 302 and response["Location"].startswith("/accounts/login/")
    response = Client().post(detail(queue["over"]), {"action": "assign_me"})
    assert response.status_code == 302
    assert ExceptionRecord.objects.get(pk=queue["over"].pk).owner_id is None


# --------------------------------------------------------------------------------------------- without an event
def test_callback_exception_without_an_entity_or_event(queue, fiona, aude):
    with transaction.atomic():
        exc = services.exception_open_for_callback(source_system="billing-prod", message="callbacks gave up",
                                                   existing_id=None, event_id=None, actor="system")
    listing = fiona.get(LIST, {"process": "callback"}).content.decode()
    assert rows(listing) == [str(exc.pk)] and "<code>callback_failed</code>" in listing
    html = fiona.get(detail(exc)).content.decode()
    assert "Replay is not available: the exception has no event to replay." in html
    assert 'value="replay"' not in html and "<code>exception.opened</code>" in html
    assert aude.get(detail(exc)).status_code == 200


def test_journal_without_an_event_that_failed_to_post(entity, erp_us01, finance, django_capture_on_commit_callbacks):
    """A journal with no event (as a manual one) that the ERP refused: its page shows the journal's trace,
    and a retry once the ERP recovers posts it."""
    erp_us01.fail_validation = "Cost center is mandatory"
    with django_capture_on_commit_callbacks(execute=True), transaction.atomic():
        journal = ledger.journal_create(ledger.JournalSpec(
            entity=entity, accounting_date=datetime.date(2026, 11, 3), kind="manual", document_type="manual",
            document_id="mj_1", lines=[ledger.LineSpec(debit=Decimal("12.00"), account_code="6100"),
                                       ledger.LineSpec(credit=Decimal("12.00"), account_code="1010")]), actor="test")
    exc = ExceptionRecord.objects.get(journal=journal)
    assert (exc.code, exc.event_id, exc.source_ref, exc.amount) == ("posting_failed", None, "mj_1", Decimal("12"))
    fiona = client_for("fiona-ops")
    html = fiona.get(detail(exc)).content.decode()
    assert f'data-journal="{journal.pk}"' in html and '<span class="journal-status">failed</span>' in html
    assert "Cost center is mandatory" in html and "<code>journal.failed</code>" in html
    assert "<summary>Payload</summary>" not in html
    erp_us01.fail_validation = None
    with django_capture_on_commit_callbacks(execute=True):
        fiona.post(detail(exc), {"action": "retry"})
    journal.refresh_from_db()
    assert journal.status == "posted"
    html = fiona.get(detail(exc)).content.decode()
    assert '<span class="journal-status">posted</span>' in html and 'id="exception-status">resolved' in html
