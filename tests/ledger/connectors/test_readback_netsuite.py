"""NetSuite read-back with SuiteQL against the stand-in (which runs the queries on an SQLite copy of its books):
journals posted through the real posting path come back as `ErpDocument`s with their accounting lines in our
account codes, paged by transaction id (a transaction cut by a page read again, one longer than a page read
alone), incrementally by `lastmodifieddate`, in the entity's subsidiary only; each finance-world case (an
amount edited, a journal voided, deleted, a manual entry on the receivable account, a "Make Copy" duplicate
still carrying our memo, a date moved) shows in the documents and in the posting movements per account and
month; rate limits are retried and counted, exhausted retries raise `TransientError`, a refused token
`PermanentError`; both OAuth 2.0 and token-based authentication sign the queries.
"""
import datetime
from decimal import Decimal
from urllib.parse import parse_qs, urlsplit

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from ledger import connectors, services
from ledger.connectors import netsuite
from ledger.connectors.base import ErpDocument, ErpMovement
from ledger.models import Journal
from tests import factories as f
from tests.standins.netsuite import SUITEQL_PATH, NetSuiteStandin

pytestmark = pytest.mark.django_db
NOV_1, NOV_30 = datetime.date(2026, 11, 1), datetime.date(2026, 11, 30)
UTC = datetime.UTC


@pytest.fixture(scope="module")
def ec_key():
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture(autouse=True)
def _fresh_token_cache():
    netsuite.forget_tokens()
    yield
    netsuite.forget_tokens()


@pytest.fixture
def erp(monkeypatch, ec_key, erp_standin):
    pem = ec_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                               serialization.NoEncryption()).decode()
    for name, value in {"TEST_NS_CLIENT_ID": "ns-client-id", "TEST_NS_PRIVATE_KEY": pem,
                        "TEST_NS_CONSUMER_KEY": "ns-consumer-key", "TEST_NS_CONSUMER_SECRET": "ns-consumer-secret",
                        "TEST_NS_TOKEN_ID": "ns-token-id", "TEST_NS_TOKEN_SECRET": "ns-token-secret"}.items():
        monkeypatch.setenv(name, value)
    return erp_standin(NetSuiteStandin, public_key=ec_key.public_key(), slow_seconds=1.0)


def configure(entity, server, **overrides):
    settings = {"url": server.url, "account_id": "1234567_SB1", "subsidiary": "1", "auth": "oauth2",
                "client_id_env": "TEST_NS_CLIENT_ID", "certificate_id": "ns-cert-1",
                "private_key_env": "TEST_NS_PRIVATE_KEY", "read_timeout": 2, "connect_timeout": 1}
    if overrides.get("auth") == "tba":
        settings.update(consumer_key_env="TEST_NS_CONSUMER_KEY", consumer_secret_env="TEST_NS_CONSUMER_SECRET",
                        token_id_env="TEST_NS_TOKEN_ID", token_secret_env="TEST_NS_TOKEN_SECRET")
    settings.update(overrides)
    return services.entity_configure_erp(entity=entity, connector="netsuite", actor="test", erp_settings=settings)


@pytest.fixture
def erp_entity(entity, erp):
    return configure(entity, erp)


def post_invoices(integration, count, **invoice):
    customer = f.customer()
    integration.send(customer)
    for _ in range(count):
        assert integration.send(f.invoice(customer_id=customer["data"]["customer_id"], **invoice)).status_code == 202
    journals = list(Journal.objects.filter(kind="invoice").order_by("erp_document_ref"))
    assert [j.status for j in journals] == ["posted"] * count
    return journals


def lines_of(lines) -> list[tuple]:
    return sorted((line.account, line.debit, line.credit) for line in lines)


def expected_lines(journal) -> list[tuple]:
    return sorted((line.account.code, line.debit, line.credit) for line in journal.lines.all())


def read(entity, **kwargs):
    connector = connectors.get_connector(entity)
    return connector, list(connector.erp_documents(date_from=kwargs.pop("date_from", NOV_1),
                                                   date_to=kwargs.pop("date_to", NOV_30), **kwargs))


def movements(entity, accounts=("1200", "2200", "4000"), date_to=NOV_30):
    connector = connectors.get_connector(entity)
    return {(m.account, m.month): (m.debit, m.credit)
            for m in connector.account_movements(date_from=NOV_1, date_to=date_to, accounts=accounts)}


def queries(erp) -> list[tuple[int, int]]:
    """(limit, offset) of each SuiteQL request the stand-in received."""
    out = []
    for method, path in erp.requests:
        parts = urlsplit(path)
        if method == "POST" and parts.path == SUITEQL_PATH:
            query = parse_qs(parts.query)
            out.append((int(query["limit"][0]), int(query["offset"][0])))
    return out


# ------------------------------------------------------------------------------------------------ reading
def test_posted_journals_come_back_with_their_lines_in_our_codes(erp, erp_entity, integration):
    journals = post_invoices(integration, 3)
    erp.requests.clear()
    connector, docs = read(erp_entity)
    assert [(d.ref, d.our_ref) for d in docs] == [(j.erp_document_ref, str(j.pk)) for j in journals]
    for doc, journal in zip(docs, journals, strict=True):
        assert doc.status == ErpDocument.Status.POSTED
        assert doc.posting_date == journal.accounting_date
        assert lines_of(doc.lines) == expected_lines(journal)
        assert doc.modified.tzinfo is not None
    assert queries(erp) == [(500, 0)]
    assert connector.requests_made == 1  # the token was cached by the posting


def test_pages_move_forward_by_transaction_id(erp, entity, integration):
    erp_entity = configure(entity, erp, page_size=4)
    journals = post_invoices(integration, 5)
    erp.requests.clear()
    _, docs = read(erp_entity)
    assert [d.our_ref for d in docs] == [str(j.pk) for j in journals]
    assert all(lines_of(d.lines) == expected_lines(j) for d, j in zip(docs, journals, strict=True))
    assert queries(erp) == [(4, 0)] * 5  # keyed by id: always offset 0


def test_a_transaction_longer_than_a_page_is_read_alone(erp, entity, integration):
    erp_entity = configure(entity, erp, page_size=2)
    journals = post_invoices(integration, 2, lines=[("100.00", "7.25"), ("40.00", "2.90")])  # 5 lines each
    erp.requests.clear()
    _, docs = read(erp_entity)
    assert [lines_of(d.lines) for d in docs] == [expected_lines(j) for j in journals]
    # Each long transaction read alone, offset-paged (0, 2, 4), after the page that found it.
    assert queries(erp) == [(2, 0), (2, 0), (2, 2), (2, 4), (2, 0), (2, 0), (2, 2), (2, 4), (2, 0)]


def test_incremental_reads_only_what_changed_since(erp, erp_entity, integration):
    erp.clock = lambda: datetime.datetime(2026, 11, 2, 9, 0, 0)
    first, second = post_invoices(integration, 2)
    erp.clock = lambda: datetime.datetime(2026, 11, 3, 9, 0, 0)
    erp.edit_amount(str(second.pk), "1.00")
    _, docs = read(erp_entity, modified_since=datetime.datetime(2026, 11, 3, 8, 0, tzinfo=UTC))
    assert [d.our_ref for d in docs] == [str(second.pk)]
    assert docs[0].modified == datetime.datetime(2026, 11, 3, 9, 0, tzinfo=UTC)
    assert len(read(erp_entity, modified_since=datetime.datetime(2026, 11, 2, 9, 0, tzinfo=UTC))[1]) == 2


def test_one_document_by_its_number(erp, erp_entity, integration):
    [journal] = post_invoices(integration, 1)
    connector = connectors.get_connector(erp_entity)
    doc = connector.erp_document(journal.erp_document_ref)
    assert doc.our_ref == str(journal.pk) and lines_of(doc.lines) == expected_lines(journal)
    assert connector.erp_document(erp.find(str(journal.pk))["id"]).ref == journal.erp_document_ref
    assert connector.erp_document("JE99999") is None


def test_another_subsidiarys_journals_are_not_read(erp, erp_entity, integration):
    [journal] = post_invoices(integration, 1)
    other = erp.duplicate(str(journal.pk))
    other["subsidiary"] = {"id": "2"}
    assert [d.our_ref for d in read(erp_entity)[1]] == [str(journal.pk)]
    assert movements(erp_entity)[("1200", "2026-11")] == (Decimal("107.25"), Decimal("0.00"))


# ------------------------------------------------------------------------------------------------ the cases
def test_an_edited_amount_shows_in_the_lines_and_the_movements(erp, erp_entity, integration):
    [journal] = post_invoices(integration, 1)
    erp.edit_amount(str(journal.pk), "10.00")
    [doc] = read(erp_entity)[1]
    lines = {line.account: line for line in doc.lines}
    assert lines["1200"].debit == Decimal("117.25") and lines["4000"].credit == Decimal("110.00")
    assert movements(erp_entity)[("1200", "2026-11")] == (Decimal("117.25"), Decimal("0.00"))


def test_a_voided_journal_is_read_as_cancelled_and_leaves_the_movements(erp, erp_entity, integration):
    first, second = post_invoices(integration, 2)
    erp.void(str(second.pk))
    docs = {d.our_ref: d for d in read(erp_entity)[1]}
    assert docs[str(second.pk)].status == ErpDocument.Status.CANCELLED
    assert docs[str(first.pk)].status == ErpDocument.Status.POSTED
    assert movements(erp_entity)[("1200", "2026-11")] == (Decimal("107.25"), Decimal("0.00"))


def test_a_deleted_journal_is_gone(erp, erp_entity, integration):
    first, second = post_invoices(integration, 2)
    erp.delete(str(second.pk))
    assert [d.our_ref for d in read(erp_entity)[1]] == [str(first.pk)]
    assert connectors.get_connector(erp_entity).erp_document(second.erp_document_ref) is None
    assert movements(erp_entity)[("1200", "2026-11")] == (Decimal("107.25"), Decimal("0.00"))


def test_a_manual_entry_on_the_receivable_shows_only_in_the_movements(erp, erp_entity, integration):
    [journal] = post_invoices(integration, 1)
    erp.add_manual_entry(account="1200", amount="50.00", against="4000", tran_date="2026-11-15")
    assert [d.our_ref for d in read(erp_entity)[1]] == [str(journal.pk)]
    moved = movements(erp_entity)
    assert moved[("1200", "2026-11")] == (Decimal("157.25"), Decimal("0.00"))
    assert moved[("4000", "2026-11")] == (Decimal("0.00"), Decimal("150.00"))


def test_a_copy_carrying_our_memo_comes_back_as_a_second_document(erp, erp_entity, integration):
    [journal] = post_invoices(integration, 1)
    copy = erp.duplicate(str(journal.pk))
    assert "externalId" not in copy
    docs = read(erp_entity)[1]
    assert [(d.ref, d.our_ref) for d in docs] == [(journal.erp_document_ref, str(journal.pk)),
                                                 (copy["tranId"], str(journal.pk))]
    assert movements(erp_entity)[("1200", "2026-11")] == (Decimal("214.50"), Decimal("0.00"))


def test_a_moved_date_shows_in_the_document_and_the_month(erp, erp_entity, integration):
    [journal] = post_invoices(integration, 1)
    erp.set_date(str(journal.pk), "2026-12-02")
    dec_31 = datetime.date(2026, 12, 31)
    [doc] = read(erp_entity, date_to=dec_31)[1]
    assert doc.posting_date == datetime.date(2026, 12, 2)
    assert movements(erp_entity, accounts=["1200"], date_to=dec_31) == \
        {("1200", "2026-12"): (Decimal("107.25"), Decimal("0.00"))}


def test_movements_are_summed_by_netsuite_per_account_and_month(erp, entity, integration):
    erp_entity = configure(entity, erp, page_size=2)
    post_invoices(integration, 3)
    erp.add_manual_entry(account="1200", amount="1.00", against="4000", tran_date="2026-10-31")
    erp.requests.clear()
    connector = connectors.get_connector(erp_entity)
    got = list(connector.account_movements(date_from=datetime.date(2026, 10, 1), date_to=NOV_30,
                                           accounts=["1200", "4000", "2200"]))
    assert got == [ErpMovement("1200", "2026-10", Decimal("1.00"), Decimal("0.00")),
                   ErpMovement("1200", "2026-11", Decimal("321.75"), Decimal("0.00")),
                   ErpMovement("2200", "2026-11", Decimal("0.00"), Decimal("21.75")),
                   ErpMovement("4000", "2026-10", Decimal("0.00"), Decimal("1.00")),
                   ErpMovement("4000", "2026-11", Decimal("0.00"), Decimal("300.00"))]
    assert queries(erp) == [(2, 0), (2, 2), (2, 4)]  # five groups, offset-paged


def test_netsuite_account_ids_are_mapped_back_to_our_codes(erp, erp_entity, integration):
    erp.accounts |= {"118", "999"}
    services.account_set_erp_name(entity=erp_entity, account_code="1200", erp_account="118", actor="test")
    [journal] = post_invoices(integration, 1)
    assert {"id": "118"} in [i["account"] for i in erp.find(str(journal.pk))["line"]["items"]]
    erp.add_manual_entry(account="999", amount="5.00", against="118")
    [doc] = read(erp_entity)[1]
    assert lines_of(doc.lines) == expected_lines(journal)
    assert movements(erp_entity, accounts=["1200"]) == {("1200", "2026-11"): (Decimal("107.25"), Decimal("5.00"))}
    assert "tal.account IN ('118')" in erp.queries[-1]


def test_token_based_auth_signs_the_queries(erp, entity, integration):
    erp.auth = "tba"
    erp_entity = configure(entity, erp, auth="tba")
    post_invoices(integration, 2)
    connector, docs = read(erp_entity)
    assert len(docs) == 2 and connector.requests_made == 1
    assert not erp.auth_failures


# ------------------------------------------------------------------------------------------------ failures
def test_concurrency_limits_are_retried_and_counted(erp, erp_entity, integration, settings):
    post_invoices(integration, 2)
    settings.TIEOUT_READBACK_RETRY_AFTER_CAP = 5
    erp.retry_after = "0.02"
    erp.read_faults.add("rate_limit", 2)
    connector, docs = read(erp_entity)
    assert len(docs) == 2 and connector.retries_made == 2 and connector.requests_made == 3
    assert connector.seconds_waited == pytest.approx(0.04)


def test_exhausted_retries_raise_transient(erp, erp_entity, integration, settings):
    post_invoices(integration, 1)
    settings.TIEOUT_READBACK_MAX_ATTEMPTS = 3
    erp.read_faults.add("error_500", 3)
    connector = connectors.get_connector(erp_entity)
    with pytest.raises(connectors.TransientError):
        list(connector.erp_documents(date_from=NOV_1, date_to=NOV_30))
    assert connector.retries_made == 2 and connector.requests_made == 3


def test_a_refused_token_is_permanent_and_not_retried(erp, erp_entity):
    erp.reject_tokens = True
    connector = connectors.get_connector(erp_entity)
    with pytest.raises(connectors.PermanentError) as caught:
        list(connector.erp_documents(date_from=NOV_1, date_to=NOV_30))
    assert "INVALID_LOGIN" in caught.value.erp_message
    assert connector.requests_made == 2 and connector.retries_made == 0  # a new token, the query: refused


def test_the_stand_in_wants_prefer_transient_and_a_query_it_can_run(erp, erp_entity):
    connector = connectors.get_connector(erp_entity)
    with pytest.raises(connectors.PermanentError) as caught:
        connector.request("POST", SUITEQL_PATH, write=False, json={"q": "SELECT 1"})
    assert "INVALID_HEADER" in caught.value.erp_message
    with pytest.raises(connectors.PermanentError) as caught:
        connector.suiteql("SELECT nothing FROM nowhere", limit=10)
    assert "INVALID_PARAMETER" in caught.value.erp_message
