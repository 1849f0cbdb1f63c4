"""The Odoo connector against a local stand-in that follows Odoo's JSON-2 (Odoo 19+) and JSON-RPC
(`execute_kw`) contracts, every test on both APIs: success, each failure class (429 with Retry-After, 5xx,
Odoo's validation errors, a bad key, connection refused), the ambiguous cases (commit-then-timeout,
-502, -reset) and a draft left by a failed `action_post`, where the move must never be created twice;
JSON-RPC's HTTP-200 error objects classified by Odoo's exception; `setup_entity` for Odoo.
"""
import io
from decimal import Decimal
from types import SimpleNamespace

import pytest
from django.core.management import call_command

from exceptions_queue.models import ExceptionRecord
from ledger import connectors, services
from ledger.connectors.odoo import classify_odoo_error, move_lines
from ledger.models import Entity, ErpBatch, Journal, PostingAttempt
from ledger.services import outbox
from ledger.tasks import post_journal
from tests import factories as f
from tests.standins.odoo import ACCOUNTS, OdooStandin, raw_json2

pytestmark = pytest.mark.django_db
REAL_RELAY = outbox.outbox_relay
APIS = ["json2", "jsonrpc"]


@pytest.fixture(params=APIS)
def api(request):
    return request.param


@pytest.fixture
def odoo(erp_standin):
    return erp_standin(OdooStandin, env={"TEST_ODOO_KEY": "odoo-key"}, slow_seconds=1.0)


@pytest.fixture
def odoo_entity(entity, odoo, api):
    return services.entity_configure_erp(entity=entity, connector="odoo", actor="test", erp_settings={
        "url": odoo.url, "database": "tieout", "api": api, "token_env": "TEST_ODOO_KEY",
        "username": "integration@tieout.test", "read_timeout": 0.5, "connect_timeout": 0.5})


@pytest.fixture
def journal(odoo_entity, integration, monkeypatch):
    """A ready invoice journal whose posting task has not run (the relay is held back)."""
    monkeypatch.setattr(outbox, "outbox_relay", lambda ids: None)
    customer = f.customer()
    integration.send(customer)
    integration.send(f.invoice(customer_id=customer["data"]["customer_id"]))
    return Journal.objects.get(kind="invoice")


def post(journal):
    return services.journal_post(journal_id=journal.pk)


def outcomes(journal):
    return list(journal.attempts.order_by("started_at").values_list("outcome", flat=True))


# ------------------------------------------------------------------------------------------------ success
def test_posts_one_balanced_move_with_our_reference(odoo, journal, api):
    outcome = post(journal)
    journal.refresh_from_db()
    assert journal.status == "posted"
    assert journal.erp_document_ref == outcome.erp_document_ref == "MISC/2026/11/0001"
    [move] = odoo.moves.values()
    assert move["state"] == "posted"
    assert move["ref"] == str(journal.pk)
    assert move["move_type"] == "entry"
    assert move["date"] == "2026-11-01"
    debit = sum(Decimal(str(line["debit"])) for line in move["line_ids"])
    credit = sum(Decimal(str(line["credit"])) for line in move["line_ids"])
    assert debit == credit == Decimal("107.25")
    receivable = [line for line in move["line_ids"] if line["account_id"] == ACCOUNTS["1200"]]
    assert receivable[0]["debit"] == 107.25  # a JSON number, as Odoo takes it
    assert {line["account_id"] for line in move["line_ids"]} <= set(ACCOUNTS.values())
    assert (odoo.count("create"), odoo.count("action_post")) == (1, 1)
    assert odoo.count("search_read", "account.account") == 1  # every code resolved in one call
    assert {call[0] for call in odoo.calls} == {api}
    assert journal.attempts.get().outcome == "posted"


def test_configured_journal_is_used(odoo, journal, odoo_entity):
    odoo_entity.erp_settings["journal_id"] = "1"
    odoo_entity.save()
    assert post(journal).erp_document_ref == "INV/2026/11/0001"
    assert next(iter(odoo.moves.values()))["journal_id"] == 1


@pytest.mark.parametrize("mapping", ["id:150", "110200"])
def test_account_mapping_by_odoo_id_or_odoo_code(odoo, journal, odoo_entity, mapping):
    odoo.accounts["110200"] = 150
    services.account_set_erp_name(entity=odoo_entity, account_code="1200", erp_account=mapping, actor="test")
    post(journal)
    [move] = odoo.moves.values()
    assert 150 in {line["account_id"] for line in move["line_ids"]}
    assert ACCOUNTS["1200"] not in {line["account_id"] for line in move["line_ids"]}


def test_an_account_odoo_does_not_have_is_permanent_and_nothing_is_created(odoo, journal):
    del odoo.accounts["2200"]
    with pytest.raises(connectors.PermanentError) as caught:
        post(journal)
    assert "no account with code 2200" in str(caught.value)
    assert not odoo.moves and odoo.count("create") == 0


# ------------------------------------------------------------------------------------------------ failures
def test_rate_limit_is_transient_and_honours_retry_after(odoo, journal):
    odoo.faults.add("rate_limit")
    with pytest.raises(connectors.TransientError) as caught:
        post(journal)
    assert caught.value.retry_after == 1.0
    journal.refresh_from_db()
    assert journal.status == "ready"
    assert journal.attempts.get().outcome == "transient"
    post(journal)
    journal.refresh_from_db()
    assert journal.status == "posted"
    assert len(odoo.moves) == 1


@pytest.mark.parametrize("fault", ["error_500", "error_503"])
def test_server_errors_are_transient(odoo, journal, fault):
    odoo.faults.add(fault)
    with pytest.raises(connectors.TransientError):
        post(journal)
    assert not odoo.moves


def test_validation_error_is_permanent_with_odoos_message(odoo, journal, api):
    odoo.fail_validation = "You cannot add/modify entries prior to and inclusive of the lock date 11/30/2026."
    with pytest.raises(connectors.PermanentError) as caught:
        post(journal)
    message = caught.value.erp_message
    assert "odoo.exceptions.UserError: You cannot add/modify entries prior to and inclusive of the lock date" in message
    assert ("HTTP 422" if api == "json2" else "JSON-RPC error 200") in message
    assert not odoo.moves


def test_bad_key_is_permanent(odoo, journal, api, monkeypatch):
    monkeypatch.setenv("TEST_ODOO_KEY", "wrong")
    with pytest.raises(connectors.PermanentError) as caught:
        post(journal)
    if api == "json2":
        assert caught.value.erp_message == "HTTP 401: werkzeug.exceptions.Unauthorized: Invalid apikey"
    else:  # common.authenticate answers False, not an error
        assert "authentication failed for integration@tieout.test" in caught.value.erp_message


def test_unknown_database_is_permanent(odoo, journal, odoo_entity, api):
    odoo_entity.erp_settings["database"] = "nope"
    odoo_entity.save()
    with pytest.raises(connectors.PermanentError) as caught:
        post(journal)
    # JSON-2: a multi-database server answers 404 (HTML); JSON-RPC: psycopg2's OperationalError, in a 200.
    assert ("HTTP 404" if api == "json2" else 'database "nope" does not exist') in caught.value.erp_message


def test_a_missing_secret_names_the_variable_and_never_its_value(odoo, journal, monkeypatch):
    monkeypatch.delenv("TEST_ODOO_KEY")
    with pytest.raises(connectors.PermanentError) as caught:
        post(journal)
    assert "TEST_ODOO_KEY is not set" in str(caught.value)


def test_connection_refused_is_transient(journal, odoo_entity):
    odoo_entity.erp_settings["url"] = "http://127.0.0.1:9"
    odoo_entity.save()
    with pytest.raises(connectors.TransientError):
        post(journal)


@pytest.mark.parametrize("fault, klass, text", [
    ("serialization_failure", connectors.TransientError, "could not serialize access due to concurrent update"),
    ("lock_error", connectors.TransientError, "odoo.exceptions.LockError"),
    ("server_error", connectors.TransientError, "builtins.KeyError"),
    ("access_error", connectors.PermanentError, "You are not allowed to create 'Journal Entry'"),
])
def test_odoo_exceptions_are_classified_in_either_api(odoo, journal, api, fault, klass, text):
    """JSON-RPC sends them with HTTP 200 and an `error` object; JSON-2 with the exception's status."""
    odoo.faults.add(fault)
    with pytest.raises(connectors.base.ConnectorError) as caught:
        post(journal)
    assert type(caught.value) is klass
    assert text in caught.value.erp_message
    assert ("JSON-RPC error 200" in caught.value.erp_message) == (api == "jsonrpc")
    assert not odoo.moves  # Odoo rolled the call back
    if klass is connectors.TransientError:
        post(journal)
        assert len(odoo.moves) == 1


@pytest.mark.parametrize("name, message, code, klass", [
    ("psycopg2.errors.SerializationFailure", "could not serialize access due to concurrent update", 200,
     connectors.TransientError),
    ("psycopg.errors.DeadlockDetected", "deadlock detected", 0, connectors.TransientError),
    ("odoo.exceptions.ValidationError", "The entry is not balanced.", 200, connectors.PermanentError),
    ("odoo.exceptions.AccessDenied", "Access Denied", 200, connectors.PermanentError),
    ("odoo.exceptions.MissingError", "Record does not exist or has been deleted.", 200, connectors.PermanentError),
    ("psycopg2.OperationalError", 'FATAL:  database "x" does not exist', 200, connectors.PermanentError),
    ("odoo.http.SessionExpiredException", "Session expired", 100, connectors.PermanentError),
    ("builtins.TypeError", "'NoneType' object is not subscriptable", 200, connectors.TransientError),
])
def test_error_classification_table(name, message, code, klass):
    assert classify_odoo_error(name, message, code=code) is klass


# ------------------------------------------------------------------------------------------------ ambiguity
@pytest.mark.parametrize("fault", ["commit_then_timeout", "commit_then_502", "commit_then_reset"])
def test_ambiguous_failures_are_looked_up_before_sending_again(odoo, journal, fault):
    odoo.faults.add(fault)
    with pytest.raises(connectors.AmbiguousError):
        post(journal)
    assert len(odoo.moves) == 1  # Odoo did create it (a draft: action_post never ran)
    outcome = post(journal)
    journal.refresh_from_db()
    assert journal.status == "posted"
    [move] = odoo.moves.values()  # ... and it was found and posted, not created twice
    assert move["state"] == "posted"
    assert odoo.count("create") == 1
    assert outcome.erp_document_ref == move["name"] == "MISC/2026/11/0001"
    assert outcomes(journal) == ["ambiguous", "already_posted"]


def test_timeout_before_anything_was_stored_is_sent_again_after_the_look_up(odoo, journal):
    odoo.faults.add("timeout_before")
    with pytest.raises(connectors.AmbiguousError):
        post(journal)
    assert not odoo.moves
    post(journal)
    assert len(odoo.moves) == 1
    methods = [(model, method) for _, model, method in odoo.calls if model == "account.move"]
    assert methods == [("account.move", "create"), ("account.move", "search_read"), ("account.move", "create"),
                       ("account.move", "action_post"), ("account.move", "read")]


def test_a_draft_left_by_a_failed_action_post_is_posted_not_duplicated(odoo, journal):
    odoo.faults.add("post_fails_after_create")
    with pytest.raises(connectors.AmbiguousError) as caught:
        post(journal)
    assert "created move" in str(caught.value)
    [move] = odoo.moves.values()
    assert move["state"] == "draft"
    outcome = post(journal)
    journal.refresh_from_db()
    assert journal.status == "posted"
    assert len(odoo.moves) == 1 and move["state"] == "posted"
    assert odoo.count("create") == 1 and odoo.count("action_post") == 2
    assert outcome.erp_document_ref == journal.erp_document_ref == move["name"]
    assert outcomes(journal) == ["ambiguous", "already_posted"]


def test_a_draft_left_behind_is_posted_not_duplicated(odoo, journal, odoo_entity):
    move_id = odoo.add_move(ref=str(journal.pk))
    PostingAttempt.objects.create(journal=journal, connector="odoo", outcome="ambiguous")
    outcome = post(journal)
    assert outcome.erp_document_ref == odoo.moves[move_id]["name"] == "MISC/2026/11/0001"
    assert odoo.moves[move_id]["state"] == "posted"
    assert len(odoo.moves) == 1 and odoo.count("create") == 0


def test_a_posted_move_found_is_not_posted_again(odoo, journal):
    move_id = odoo.add_move(ref=str(journal.pk), state="posted")
    PostingAttempt.objects.create(journal=journal, connector="odoo", outcome="ambiguous")
    assert post(journal).erp_document_ref == odoo.moves[move_id]["name"]
    assert odoo.count("action_post") == 0 and odoo.count("create") == 0


def test_a_cancelled_move_does_not_count_as_posted(odoo, journal):
    cancelled = odoo.add_move(ref=str(journal.pk), state="cancel")
    PostingAttempt.objects.create(journal=journal, connector="odoo", outcome="ambiguous")
    outcome = post(journal)
    assert len(odoo.moves) == 2 and odoo.moves[cancelled]["state"] == "cancel"
    [new] = [m for m in odoo.moves.values() if m["id"] != cancelled]
    assert outcome.erp_document_ref == new["name"] and new["state"] == "posted"


# ------------------------------------------------------------------------------------------------ the task
def test_permanent_failure_in_the_task_opens_posting_failed_and_retry_posts(odoo, journal, finance, monkeypatch):
    odoo.fail_validation = "The entry is not balanced."
    post_journal.apply(args=[str(journal.pk)])
    journal.refresh_from_db()
    assert journal.status == "failed"
    exc = ExceptionRecord.objects.get(code="posting_failed")
    assert "The entry is not balanced." in exc.message
    odoo.fail_validation = None
    monkeypatch.setattr(outbox, "outbox_relay", REAL_RELAY)
    assert finance.post(f"/api/v1/exceptions/{exc.pk}/retry").status_code == 200
    journal.refresh_from_db()
    assert journal.status == "posted"
    assert len(odoo.moves) == 1


def test_batch_mode_posts_one_summarised_move_with_the_batch_id_as_ref(odoo, odoo_entity, integration,
                                                                       django_capture_on_commit_callbacks):
    odoo_entity.posting_mode = "batch"
    odoo_entity.save()
    customer = f.customer()
    integration.send(customer)
    for amount in ("100.00", "101.00"):
        integration.send(f.invoice(customer_id=customer["data"]["customer_id"], lines=[(amount, "10.00")]))
    with django_capture_on_commit_callbacks(execute=True):
        services.erp_batches_sweep(window_seconds=0)
    batch = ErpBatch.objects.get()
    [move] = odoo.moves.values()
    assert batch.status == "posted" and move["ref"] == str(batch.pk) and move["state"] == "posted"
    assert batch.erp_document_ref == move["name"]
    debits = {line["account_id"]: line["debit"] for line in move["line_ids"]}
    assert debits[ACCOUNTS["1200"]] == 221.0
    assert set(Journal.objects.values_list("erp_document_ref", flat=True)) == {move["name"]}


# ------------------------------------------------------------------------------------------------ pieces
def test_lines_must_balance_before_anything_is_converted():
    def line(debit, credit):
        return SimpleNamespace(account=SimpleNamespace(code="1200"), debit=Decimal(debit), credit=Decimal(credit),
                               memo="", customer_id="")

    with pytest.raises(connectors.PermanentError, match="does not balance"):
        move_lines([line("10.00", "0"), line("0", "9.99")], {"1200": 12}, default_label="x")
    with pytest.raises(connectors.PermanentError, match="without rounding"):
        move_lines([line("12345678901234567.01", "0"), line("0", "12345678901234567.01")], {"1200": 12},
                   default_label="x")
    assert move_lines([line("0.10", "0"), line("0", "0.10")], {"1200": 12}, default_label="x")[0] == \
        [0, 0, {"account_id": 12, "name": "x", "debit": 0.1, "credit": 0.0}]


def test_the_stand_in_refuses_an_unbalanced_entry_like_odoo(odoo):
    response = raw_json2(odoo.url, "account.move", "create", {"vals_list": [{"move_type": "entry", "line_ids": [
        [0, 0, {"account_id": 12, "debit": 10.0, "credit": 0.0}], [0, 0, {"account_id": 40, "debit": 0.0,
                                                                          "credit": 9.0}]]}]})
    assert response.status_code == 422
    assert response.json()["name"] == "odoo.exceptions.UserError"
    assert response.json()["message"] == "The entry is not balanced."


def test_test_connection_reports_the_odoo_user(odoo, odoo_entity, api):
    message = services.entity_test_connection(entity=odoo_entity)
    assert "database tieout as uid 2" in message
    assert ("JSON-2" if api == "json2" else "Odoo 17.0") in message


def test_setup_entity_configures_odoo(odoo, monkeypatch, db):
    call_command("setup_entity", "US01", "--currency", "USD", "--erp", "odoo", "--erp-url", odoo.url,
                 "--erp-database", "tieout", "--erp-api", "json2", "--erp-token-env", "TEST_ODOO_KEY",
                 "--erp-journal", "3", stdout=io.StringIO())
    entity = Entity.objects.get(code="US01")
    assert entity.erp_connector == "odoo"
    assert entity.erp_settings == {"url": odoo.url, "database": "tieout", "api": "json2",
                                   "token_env": "TEST_ODOO_KEY", "journal_id": "3"}
    assert "odoo-key" not in str(entity.erp_settings)
    assert services.entity_test_connection(entity=entity).startswith("connected to Odoo database tieout")
