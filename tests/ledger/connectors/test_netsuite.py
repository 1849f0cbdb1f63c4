"""The NetSuite connector against a local stand-in that follows SuiteTalk REST's contract: upsert by
external id with both authentications (OAuth 2.0 client credentials with a signed JWT assertion, and
token-based OAuth 1.0a HMAC-SHA256), the access token's cache and refresh, each failure class (429
concurrency limit with Retry-After, 5xx, 400 with `o:errorDetails`, 401, connection refused) and the
ambiguous cases (commit-then-timeout, commit-then-502, commit-then-reset), where NetSuite must never end up
with two records, or doubled lines, for one journal.

Key pairs are made here with `cryptography` (throwaway; an EC P-256 key by default, RSA for PS256).
"""
from concurrent.futures import ThreadPoolExecutor

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from exceptions_queue.models import ExceptionRecord
from ledger import connectors, services
from ledger.connectors import netsuite
from ledger.models import ErpBatch, Journal
from ledger.services import outbox
from ledger.tasks import post_journal
from tests import factories as f
from tests.standins.netsuite import RECORD_PATH, NetSuiteStandin

pytestmark = pytest.mark.django_db
REAL_RELAY = outbox.outbox_relay
ACCOUNT = "1234567_SB1"


def _pem(key) -> str:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


@pytest.fixture(scope="module")
def ec_key():
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture(autouse=True)
def _fresh_token_cache():
    netsuite.forget_tokens()
    yield
    netsuite.forget_tokens()


@pytest.fixture
def secrets_env(monkeypatch, ec_key):
    monkeypatch.setenv("TEST_NS_CLIENT_ID", "ns-client-id")
    monkeypatch.setenv("TEST_NS_PRIVATE_KEY", _pem(ec_key))
    monkeypatch.setenv("TEST_NS_CONSUMER_KEY", "ns-consumer-key")
    monkeypatch.setenv("TEST_NS_CONSUMER_SECRET", "ns-consumer-secret")
    monkeypatch.setenv("TEST_NS_TOKEN_ID", "ns-token-id")
    monkeypatch.setenv("TEST_NS_TOKEN_SECRET", "ns-token-secret")


@pytest.fixture
def erp(secrets_env, ec_key, erp_standin):
    return erp_standin(NetSuiteStandin, public_key=ec_key.public_key(), slow_seconds=1.0)


def configure(entity, server, posting_mode=None, **overrides):
    settings = {"url": server.url, "account_id": ACCOUNT, "subsidiary": "1", "auth": "oauth2",
                "client_id_env": "TEST_NS_CLIENT_ID", "certificate_id": "ns-cert-1",
                "private_key_env": "TEST_NS_PRIVATE_KEY", "read_timeout": 0.5, "connect_timeout": 0.5}
    if overrides.get("auth") == "tba":
        settings.update(consumer_key_env="TEST_NS_CONSUMER_KEY", consumer_secret_env="TEST_NS_CONSUMER_SECRET",
                        token_id_env="TEST_NS_TOKEN_ID", token_secret_env="TEST_NS_TOKEN_SECRET")
    settings.update(overrides)
    return services.entity_configure_erp(entity=entity, connector="netsuite", actor="test", erp_settings=settings,
                                         posting_mode=posting_mode)


@pytest.fixture
def erp_entity(entity, erp):
    return configure(entity, erp)


@pytest.fixture
def held_relay(monkeypatch):
    monkeypatch.setattr(outbox, "outbox_relay", lambda ids: None)


def make_journal(integration, **invoice):
    """A ready invoice journal whose posting task has not run (the relay is held back)."""
    customer = f.customer()
    integration.send(customer)
    response = integration.send(f.invoice(customer_id=customer["data"]["customer_id"], **invoice))
    assert response.status_code in (200, 201, 202), response.content
    return Journal.objects.filter(kind="invoice").order_by("-created_at").first()


@pytest.fixture
def journal(erp_entity, integration, held_relay):
    return make_journal(integration)


def post(journal):
    return services.journal_post(journal_id=journal.pk)


# ------------------------------------------------------------------------------------------ success
def test_posts_one_journal_entry_upserted_by_our_id(erp, journal):
    outcome = post(journal)
    journal.refresh_from_db()
    [(external_id, record)] = erp.records.items()
    assert external_id == record["externalId"] == str(journal.pk)
    assert journal.status == "posted"
    assert journal.erp_document_ref == outcome.erp_document_ref == record["tranId"] == "JE00001"
    assert record["tranDate"] == "2026-11-01"
    assert record["subsidiary"] == {"id": "1"}
    assert str(journal.pk) in record["memo"]
    items = record["line"]["items"]
    assert len(items) == journal.lines.count()
    assert sum(i.get("debit", 0) for i in items) == sum(i.get("credit", 0) for i in items) > 0
    receivable = [i for i in items if i["account"] == {"id": "1200"}]
    assert receivable[0]["debit"] == 107.25
    assert "customer" in receivable[0]["memo"]
    # One token, then the upsert (with replace=line) and the read-back for the document number.
    eid = f"{RECORD_PATH}/eid:{journal.pk}"
    assert erp.requests == [("POST", "/services/rest/auth/oauth2/v1/token"), ("PUT", f"{eid}?replace=line"),
                            ("GET", eid)]
    assert all(a.startswith("Bearer ") for a in erp.authorizations)
    assert journal.attempts.get().outcome == "posted"


def test_token_based_auth_signs_every_request_with_hmac_sha256(secrets_env, entity, integration, held_relay,
                                                               erp_standin):
    server = erp_standin(NetSuiteStandin, auth="tba")
    configure(entity, server, auth="tba")
    journal = make_journal(integration)
    outcome = post(journal)
    assert outcome.erp_document_ref == "JE00001"
    assert len(server.records) == 1
    assert server.token_requests == 0
    # The stand-in verified each signature (over method, URL and the replace=line query) and nonce.
    assert len(server.authorizations) == 2
    for header in server.authorizations:
        assert header.startswith("OAuth ")
        assert 'realm="1234567_SB1"' in header and 'oauth_signature_method="HMAC-SHA256"' in header
    assert server.authorizations[0] != server.authorizations[1]  # fresh nonce, fresh signature


def test_token_based_auth_with_a_wrong_secret_is_permanent(secrets_env, entity, integration, held_relay,
                                                           monkeypatch, erp_standin):
    server = erp_standin(NetSuiteStandin, auth="tba")
    configure(entity, server, auth="tba")
    monkeypatch.setenv("TEST_NS_TOKEN_SECRET", "not-the-secret")
    with pytest.raises(connectors.PermanentError) as caught:
        post(make_journal(integration))
    assert "INVALID_LOGIN: Invalid login attempt" in caught.value.erp_message
    assert not server.records


def test_an_rsa_certificate_signs_the_assertion_with_ps256(monkeypatch, entity, integration, held_relay,
                                                           secrets_env, erp_standin):
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    monkeypatch.setenv("TEST_NS_PRIVATE_KEY", _pem(key).replace("\n", "\\n"))  # squeezed onto one line
    server = erp_standin(NetSuiteStandin, public_key=key.public_key())
    configure(entity, server)
    assert post(make_journal(integration)).erp_document_ref == "JE00001"
    assert server.token_requests == 1


def test_the_assertion_carries_netsuites_claims(erp, erp_entity):
    connector = connectors.get_connector(erp_entity)
    assertion = connector.client_assertion("ns-client-id", "ns-cert-1", "rest_webservices")
    header = jwt.get_unverified_header(assertion)
    claims = jwt.decode(assertion, options={"verify_signature": False})
    assert header == {"alg": "ES256", "kid": "ns-cert-1", "typ": "JWT"}
    assert claims["iss"] == "ns-client-id" and claims["scope"] == "rest_webservices"
    assert claims["aud"] == f"{erp.url}/services/rest/auth/oauth2/v1/token"
    assert 0 < claims["exp"] - claims["iat"] <= 3600


def test_account_internal_ids_come_from_the_mapping(erp, journal, erp_entity):
    erp.accounts.add("312")
    services.account_set_erp_name(entity=erp_entity, account_code="1200", erp_account="312", actor="test")
    post(journal)
    [record] = erp.records.values()
    assert {"id": "312"} in [i["account"] for i in record["line"]["items"]]


# ------------------------------------------------------------------------------------------ the token
def test_the_access_token_is_cached_across_posts(erp, erp_entity, integration, held_relay):
    journals = [make_journal(integration) for _ in range(3)]
    for journal in journals:
        post(journal)
    assert erp.token_requests == 1
    assert len(erp.records) == 3


def test_threads_of_one_worker_fetch_one_token_between_them(erp, erp_entity):
    connector = connectors.get_connector(erp_entity)
    erp.latency = 0.05  # so that the threads overlap while the first fetch is in flight
    with ThreadPoolExecutor(max_workers=8) as pool:
        tokens = list(pool.map(lambda _: connector.access_token()[0], range(8)))
    assert len(set(tokens)) == 1
    assert erp.token_requests == 1


def test_the_token_is_refreshed_shortly_before_it_expires(erp, erp_entity, integration, held_relay, monkeypatch):
    now = [1000.0]
    monkeypatch.setattr(netsuite, "clock", lambda: now[0])
    post(make_journal(integration))
    now[0] += 3600 - netsuite.REFRESH_MARGIN - 1  # still inside its life, less the margin
    post(make_journal(integration))
    assert erp.token_requests == 1
    now[0] += 2  # within the margin: replaced before NetSuite would refuse it
    post(make_journal(integration))
    assert erp.token_requests == 2


def test_a_token_netsuite_revoked_is_replaced_once(erp, erp_entity, integration, held_relay):
    post(make_journal(integration))
    erp.revoke_tokens()
    post(make_journal(integration))
    assert erp.token_requests == 2
    assert len(erp.records) == 2


def test_a_refused_bearer_token_is_permanent_with_invalid_login(erp, journal):
    erp.reject_tokens = True
    with pytest.raises(connectors.PermanentError) as caught:
        post(journal)
    assert "HTTP 401: INVALID_LOGIN: Invalid login attempt" in caught.value.erp_message
    assert erp.token_requests == 1  # a token fetched just now is not fetched again
    assert not erp.records


def test_an_assertion_netsuite_cannot_verify_is_permanent(erp, journal, monkeypatch):
    monkeypatch.setenv("TEST_NS_PRIVATE_KEY", _pem(ec.generate_private_key(ec.SECP256R1())))
    with pytest.raises(connectors.PermanentError) as caught:
        post(journal)
    assert "invalid_client" in caught.value.erp_message
    assert not erp.records


def test_a_private_key_that_is_not_pem_names_the_variable_only(erp, journal, monkeypatch):
    monkeypatch.setenv("TEST_NS_PRIVATE_KEY", "s3cr3t-not-a-key")
    with pytest.raises(connectors.PermanentError) as caught:
        post(journal)
    assert "TEST_NS_PRIVATE_KEY" in str(caught.value) and "s3cr3t" not in str(caught.value)


def test_a_missing_secret_names_the_variable(erp, journal, monkeypatch):
    monkeypatch.delenv("TEST_NS_CLIENT_ID")
    with pytest.raises(connectors.PermanentError) as caught:
        post(journal)
    assert "TEST_NS_CLIENT_ID is not set" in str(caught.value)


# ------------------------------------------------------------------------------------------ failures
def test_concurrency_limit_is_transient_and_honours_retry_after(erp, journal):
    erp.faults.add("concurrency_limit")
    with pytest.raises(connectors.TransientError) as caught:
        post(journal)
    assert caught.value.retry_after == 1.0
    assert "CONCURRENCY_LIMIT_EXCEEDED" in caught.value.erp_message
    journal.refresh_from_db()
    assert journal.status == "ready"
    assert journal.attempts.get().outcome == "transient"
    post(journal)
    journal.refresh_from_db()
    assert journal.status == "posted"
    assert len(erp.records) == 1


def test_a_request_limit_reported_as_400_is_still_transient(erp, journal):
    erp.faults.add("concurrency_limit_400")
    with pytest.raises(connectors.TransientError) as caught:
        post(journal)
    assert "SSS_REQUEST_LIMIT_EXCEEDED" in caught.value.erp_message


@pytest.mark.parametrize("fault", ["error_500", "error_503"])
def test_server_errors_are_transient(erp, journal, fault):
    erp.faults.add(fault)
    with pytest.raises(connectors.TransientError):
        post(journal)
    assert not erp.records


def test_an_unknown_account_is_permanent_with_netsuites_error_details(erp, journal, erp_entity):
    services.account_set_erp_name(entity=erp_entity, account_code="1200", erp_account="9999", actor="test")
    with pytest.raises(connectors.PermanentError) as caught:
        post(journal)
    message = caught.value.erp_message
    assert message.startswith("HTTP 400: INVALID_KEY_OR_REF: Invalid account reference key 9999.")
    assert "(at line.items[" in message
    assert not erp.records


def test_an_unbalanced_entry_is_refused_with_user_error(erp, erp_entity):
    connector = connectors.get_connector(erp_entity)
    body = {"tranDate": "2026-11-01", "subsidiary": {"id": "1"},
            "line": {"items": [{"account": {"id": "1200"}, "debit": 10.0}, {"account": {"id": "4000"}, "credit": 9.0}]}}
    with pytest.raises(connectors.PermanentError) as caught:
        connector.request("PUT", f"{RECORD_PATH}/eid:unbalanced-1", write=True, json=body)
    assert "HTTP 400: USER_ERROR: The transaction is out of balance" in caught.value.erp_message


def test_a_validation_error_in_the_task_opens_posting_failed_and_retry_posts(erp, journal, finance, monkeypatch):
    erp.fail_validation = "The period you are trying to post to is closed."
    post_journal.apply(args=[str(journal.pk)])
    journal.refresh_from_db()
    assert journal.status == "failed"
    exc = ExceptionRecord.objects.get(code="posting_failed")
    assert "USER_ERROR: The period you are trying to post to is closed." in exc.message
    erp.fail_validation = None
    monkeypatch.setattr(outbox, "outbox_relay", REAL_RELAY)
    assert finance.post(f"/api/v1/exceptions/{exc.pk}/retry").status_code == 200
    journal.refresh_from_db()
    assert journal.status == "posted"
    assert len(erp.records) == 1


def test_connection_refused_is_transient(journal, erp_entity):
    erp_entity.erp_settings["url"] = "http://127.0.0.1:9"
    erp_entity.save()
    with pytest.raises(connectors.TransientError):
        post(journal)


# ------------------------------------------------------------------------------------------ ambiguity
@pytest.mark.parametrize("fault", ["commit_then_timeout", "commit_then_502", "commit_then_reset"])
def test_ambiguous_failures_are_found_by_the_next_attempt(erp, journal, fault):
    erp.faults.add(fault)
    with pytest.raises(connectors.AmbiguousError):
        post(journal)
    assert len(erp.records) == 1  # NetSuite did apply it
    outcome = post(journal)
    journal.refresh_from_db()
    assert journal.status == "posted"
    assert erp.creates == 1 and erp.updates == 0  # found by the look-up, not sent again
    [record] = erp.records.values()
    assert outcome.erp_document_ref == record["tranId"]
    assert list(journal.attempts.order_by("started_at").values_list("outcome", flat=True)) == [
        "ambiguous", "already_posted"]


def test_a_blind_resend_of_the_upsert_updates_the_same_record(erp, journal, erp_entity):
    """The upsert is idempotent by itself: sent twice, one record, with its lines replaced, not doubled."""
    erp.faults.add("commit_then_502")
    connector = connectors.get_connector(erp_entity)
    with pytest.raises(connectors.AmbiguousError):
        connector.post_journal(journal)
    result = connector.post_journal(journal)
    [record] = erp.records.values()
    assert (erp.creates, erp.updates) == (1, 1)
    assert result.erp_document_ref == record["tranId"]
    assert len(record["line"]["items"]) == journal.lines.count()


def test_timeout_before_anything_was_stored_is_sent_again_after_the_look_up(erp, journal):
    erp.faults.add("timeout_before")
    with pytest.raises(connectors.AmbiguousError):
        post(journal)
    assert not erp.records
    post(journal)
    assert len(erp.records) == 1
    assert [m for m, _ in erp.requests] == ["POST", "PUT", "GET", "PUT", "GET"]  # token, upsert, look-up 404, ...


def test_batch_mode_upserts_one_summarised_entry_by_the_batch_id(erp, entity, integration,
                                                                 django_capture_on_commit_callbacks):
    configure(entity, erp, posting_mode="batch")
    customer = f.customer()
    integration.send(customer)
    for amount in ("100.00", "101.00"):
        integration.send(f.invoice(customer_id=customer["data"]["customer_id"], lines=[(amount, "10.00")]))
    with django_capture_on_commit_callbacks(execute=True):
        services.erp_batches_sweep(window_seconds=0)
    batch = ErpBatch.objects.get()
    [(external_id, record)] = erp.records.items()
    assert batch.status == "posted" and external_id == str(batch.pk)
    assert batch.erp_document_ref == record["tranId"]
    debits = {i["account"]["id"]: i.get("debit") for i in record["line"]["items"]}
    assert debits["1200"] == 221.0
    assert set(Journal.objects.values_list("erp_document_ref", flat=True)) == {record["tranId"]}


# ------------------------------------------------------------------------------------------ re-posts
def test_a_voided_journal_is_reposted_under_a_new_external_id_once(erp, journal):
    """NetSuite cannot change a voided transaction, which keeps its external id: a re-post (reconciliation's
    repost action) finds no live record and upserts under `<id>_r1`; the next re-post links that one."""
    post(journal)
    journal.refresh_from_db()
    erp.void(journal.erp_document_ref)
    first = services.journal_repost(journal_id=journal.pk, actor="test")
    assert not first.already_existed and first.erp_document_ref == "JE00002"
    assert erp.records[f"{journal.pk}_r1"]["tranId"] == "JE00002"
    assert erp.records[str(journal.pk)]["voided"] is True
    assert any("SELECT t.id AS id, t.tranid" in q and "LIKE" in q for q in erp.queries)  # looked up first
    again = services.journal_repost(journal_id=journal.pk, actor="test")
    assert again.already_existed and again.erp_document_ref == "JE00002"
    assert erp.creates == 2
    # The re-posted record is ours on reading back (by our memo: its external id is not a journal id).
    [doc] = [d for d in connectors.get_connector(journal.entity).erp_documents(
        date_from=journal.accounting_date, date_to=journal.accounting_date) if d.status == "posted"]
    assert (doc.ref, doc.our_ref) == ("JE00002", str(journal.pk))
    # Voided again: the next free external id.
    erp.void("JE00002")
    assert services.journal_repost(journal_id=journal.pk, actor="test").erp_document_ref == "JE00003"
    assert erp.records[f"{journal.pk}_r2"]["tranId"] == "JE00003"


def test_a_copy_a_person_made_of_a_voided_journal_is_linked_not_posted_again(erp, journal):
    post(journal)
    journal.refresh_from_db()
    copy = erp.duplicate(journal.erp_document_ref)  # "Make Copy": our memo, no external id
    erp.void(journal.erp_document_ref)
    result = services.journal_repost(journal_id=journal.pk, actor="test")
    assert result.already_existed and result.erp_document_ref == copy["tranId"]
    assert erp.creates == 1


def test_an_upsert_into_a_voided_record_is_refused_as_netsuite_does(erp, journal, erp_entity):
    post(journal)
    journal.refresh_from_db()
    erp.void(journal.erp_document_ref)
    connector = connectors.get_connector(erp_entity)
    with pytest.raises(connectors.PermanentError) as refused:
        connector.post_journal(journal)
    assert "USER_ERROR" in refused.value.erp_message and "voided" in refused.value.erp_message


# ------------------------------------------------------------------------------------------ configuration
def test_test_connection_reads_the_subsidiary(erp, erp_entity):
    assert services.entity_test_connection(entity=erp_entity) == (
        "connected to NetSuite 1234567_SB1 (oauth2); subsidiary 1: Tieout US")


def test_the_url_defaults_to_the_account_specific_domain(entity):
    configured = services.entity_configure_erp(entity=entity, connector="netsuite", actor="test", erp_settings={
        "account_id": ACCOUNT, "subsidiary": "1", "client_id_env": "X", "certificate_id": "c",
        "private_key_env": "Y"})
    connector = connectors.get_connector(configured)
    assert connector.base_url == "https://1234567-sb1.suitetalk.api.netsuite.com"
    assert connector.token_url == "https://1234567-sb1.suitetalk.api.netsuite.com/services/rest/auth/oauth2/v1/token"
    assert netsuite.account_realm("1234567-sb1") == "1234567_SB1"


def test_an_unknown_auth_mode_is_refused(entity, erp):
    configured = configure(entity, erp, auth="password")
    with pytest.raises(connectors.PermanentError, match="'oauth2' or 'tba'"):
        connectors.get_connector(configured)
