"""Item balances (ledger.models.ItemBalance), kept by the database from posted journals: after a history of
invoices, payments (allocated, unapplied, applied later), refunds, credit notes and an approved write-off,
every invoice's item equals its receivable balance and every payment's its unapplied-cash lines; journals not
yet posted do not count; nobody writes the table but the trigger; and the as-of rows the reports read
(`item_balances_sql`) give, for every date, the figures of summing the lines themselves."""
import datetime
from decimal import Decimal

import pytest
from django.db import connection, transaction
from django.db.utils import IntegrityError

from ledger import selectors
from ledger.models import AccountMapping, ItemBalance, Journal, JournalLine
from tests import factories as f
from tests.portal import report_history as h

pytestmark = pytest.mark.django_db


@pytest.fixture
def run(django_capture_on_commit_callbacks):
    def call(fn, **kwargs):
        with django_capture_on_commit_callbacks(execute=True):
            return fn(**kwargs)
    return call


@pytest.fixture
def history(entity, integration, finance, controller, run):
    h.customer(integration, "cus_a")
    h.customer(integration, "cus_b")
    h.invoice(integration, "inv_1", "cus_a", "100.00", tax="7.25", issued="2026-10-01", due="2026-10-31")
    h.invoice(integration, "inv_2", "cus_a", "200.00", issued="2026-10-10", due="2026-11-09")
    h.invoice(integration, "inv_3", "cus_b", "300.00", issued="2026-10-20", due="2026-11-19")
    h.payment(integration, "pay_1", "cus_a", "150.00", on="2026-10-15", allocations=[("inv_1", "107.25")])
    h.payment(integration, "pay_2", "cus_b", "80.00", on="2026-10-25")
    h.applied(integration, "pay_2", [("inv_3", "30.00")], on="2026-11-02")
    h.refund(integration, "pay_2", "10.00", on="2026-11-03")
    h.refund(integration, "pay_1", "5.00", on="2026-11-04", invoice_id="inv_1")
    h.credit_note(integration, "inv_2", "20.00", on="2026-11-05")
    h.write_off(integration, controller, "inv_3", "15.00", on="2026-11-06")
    h.manual_journal(run, controller, entity=entity, on=datetime.date(2026, 11, 7),
                     lines=[("1200", "12.00", "", ""), ("4000", "", "12.00", "")])
    return entity


def _items(entity) -> dict:
    return {(b.item_type, b.item_id): b for b in ItemBalance.objects.filter(account__entity=entity)}


def test_item_balances_are_the_posted_lines_of_each_invoice_and_payment(history):
    items = _items(history)
    assert {key: b.balance for key, b in items.items()} == {
        ("invoice", "inv_1"): Decimal("5.00"),  # 107.25 - 107.25 paid + 5.00 refunded
        ("invoice", "inv_2"): Decimal("180.00"),  # 200 - 20 credited
        ("invoice", "inv_3"): Decimal("255.00"),  # 300 - 30 applied - 15 written off
        ("payment", "pay_1"): Decimal("-42.75"),  # 150 - 107.25 left unapplied (a credit)
        ("payment", "pay_2"): Decimal("-40.00"),  # 80 - 30 applied - 10 refunded
    }
    for key, b in items.items():
        assert b.source_system == "billing-prod"
        if key[0] == "invoice":
            assert b.account.code == "1200"
            assert b.balance == selectors.receivable_balance(entity=history, source_system="billing-prod",
                                                             invoice_id=key[1])
        else:
            assert b.account.code == "2300"
    assert (items[("payment", "pay_1")].first_date, items[("payment", "pay_2")].first_date) == (
        datetime.date(2026, 10, 15), datetime.date(2026, 10, 25))
    assert items[("invoice", "inv_3")].first_date == datetime.date(2026, 10, 20)


def test_only_posted_journals_count(history, integration):
    before = _items(history)[("invoice", "inv_2")].balance
    journal = Journal.objects.get(document_id="inv_2", kind="invoice")
    assert journal.status == Journal.Status.POSTED
    # A journal that is not posted (waiting for approval) leaves the balances alone.
    integration.send(f.write_off("inv_2", "7.00", occurred_at=h.at("2026-11-08")))
    waiting = Journal.objects.get(kind="write_off", document_type="write_off", status=Journal.Status.PENDING_APPROVAL)
    assert waiting.lines.filter(invoice_id="inv_2").exists()
    assert _items(history)[("invoice", "inv_2")].balance == before


def test_nobody_writes_item_balances_but_the_trigger(history):
    item = ItemBalance.objects.filter(account__entity=history).first()
    for statement, params in (
            ("UPDATE ledger_itembalance SET balance = 0 WHERE id = %s", [item.pk]),
            ("DELETE FROM ledger_itembalance WHERE id = %s", [item.pk]),
            ("INSERT INTO ledger_itembalance (account_id, source_system, item_type, item_id, balance, first_date) "
             "VALUES (%s, 'x', 'invoice', 'forged', 1, '2026-01-01')", [item.account_id])):
        with pytest.raises(IntegrityError, match="kept by the database"), transaction.atomic():
            with connection.cursor() as cursor:
                cursor.execute(statement, params)
    item.refresh_from_db()
    assert item.balance != 0


def _as_of(account, item_type, on, *, from_lines) -> dict:
    sql = selectors.item_balances_sql(account=account, item_type=item_type, from_lines=from_lines)
    with connection.cursor() as cursor:
        cursor.execute(sql, selectors.item_params(account=account, as_of=on))
        rows = cursor.fetchall()
    # One row per item open at the date, nothing for the others.
    assert len({(ss, item) for ss, item, _first, _amount in rows}) == len(rows) and all(row[3] for row in rows)
    return {item: (first, amount) for _ss, item, first, amount in rows}


@pytest.mark.parametrize("role,item_type", [(AccountMapping.Role.RECEIVABLE, "invoice"),
                                            (AccountMapping.Role.UNAPPLIED_CASH, "payment")])
def test_as_of_rows_give_what_the_lines_give_on_every_date(history, role, item_type):
    account = selectors.role_account(history, role)
    seen = set()
    day = datetime.date(2026, 9, 30)
    while day <= datetime.date(2026, 11, 10):
        fast = _as_of(account, item_type, day, from_lines=False)
        slow = _as_of(account, item_type, day, from_lines=True)
        assert {k: v[1] for k, v in fast.items()} == {k: v[1] for k, v in slow.items()}, day
        if item_type == "payment":
            assert {k: v[0] for k, v in fast.items()} == {k: v[0] for k, v in slow.items()}, day
        seen |= set(fast)
        day += datetime.timedelta(days=1)
    assert seen == ({"inv_1", "inv_2", "inv_3"} if item_type == "invoice" else {"pay_1", "pay_2"})


def test_the_account_balance_splits_into_items_and_other_lines(history):
    def parts(account, item_type, on):
        items = sum((amount for _first, amount in _as_of(account, item_type, on, from_lines=False).values()),
                    Decimal(0))
        return items, selectors.item_account_other(account=account, item_type=item_type, as_of=on)

    receivable = selectors.role_account(history, AccountMapping.Role.RECEIVABLE)
    tb = {a["code"]: a["balance"] for a in selectors.trial_balance(entity=history)["accounts"]}
    items, other = parts(receivable, "invoice", datetime.date(2026, 12, 31))
    assert (items, other, items + other) == (Decimal("440.00"), Decimal("12.00"), tb["1200"])
    assert parts(receivable, "invoice", datetime.date(2026, 11, 6))[1] == 0
    unapplied = selectors.role_account(history, AccountMapping.Role.UNAPPLIED_CASH)
    items, other = parts(unapplied, "payment", datetime.date(2026, 12, 31))
    assert (items, other, items + other) == (Decimal("-82.75"), Decimal("0"), tb["2300"])
    assert JournalLine.objects.filter(account=receivable, invoice_id="").count() == 1


def test_the_posting_trigger_reads_the_journals_lines_by_the_journal_alone(history, integration):
    """PL/pgSQL keeps its plan for the session: one made without statistics (a month-end burst, autovacuum
    behind) must still find a posted journal's lines by the journal, not AND in the account's index and read
    every receivable line for each journal (migration 0016; 0.6 ms a journal at 40,000 events in bench/drain.py).
    The plan is auto_explain's, of the statement the trigger runs, on a ledger with 140,000 receivable lines not yet analysed."""
    integration.send(f.write_off("inv_2", "7.00", occurred_at=h.at("2026-11-08")))
    waiting = Journal.objects.get(kind="write_off", document_type="write_off", status=Journal.Status.PENDING_APPROVAL)
    filler = Journal.objects.get(pk=waiting.pk)
    filler.pk, filler.document_id, filler.status = None, "filler", Journal.Status.PENDING_APPROVAL
    filler.save(force_insert=True)
    receivable = selectors.role_account(history, AccountMapping.Role.RECEIVABLE)
    plans: list[str] = []
    with connection.cursor() as cursor:
        # Loaded as a restore would, triggers off: the balance check deferred for each of them would read the
        # journal's 140,000 lines each time at the test's end.
        cursor.execute("SET LOCAL session_replication_role = replica")
        cursor.execute("""
            INSERT INTO ledger_journalline (journal_id, line_no, account_id, debit, credit, customer_id, invoice_id,
                                            payment_id, jurisdiction, memo)
            SELECT %s, n, %s, n %% 2, 1 - n %% 2, 'cus_fill', 'inv_fill', '', '', ''
            FROM generate_series(1, 140000) AS n""",
                       [filler.pk, receivable.pk])
        cursor.execute("SET LOCAL session_replication_role = origin")
        cursor.execute("LOAD 'auto_explain'")
        cursor.execute("SET LOCAL auto_explain.log_min_duration = 0")
        cursor.execute("SET LOCAL auto_explain.log_nested_statements = on")
        cursor.execute("SET LOCAL client_min_messages = log")
        cursor.execute("SET LOCAL plan_cache_mode = force_generic_plan")  # the plan kept from the sixth call on
        handler = lambda diagnostic: plans.append(diagnostic.message_primary or "")  # noqa: E731
        connection.connection.add_notice_handler(handler)
        try:
            cursor.execute("UPDATE ledger_journal SET status = 'posted', erp_document_ref = 'JE-PLAN-1', posted_at = now()"
                           " WHERE id = %s", [waiting.pk])
        finally:
            connection.connection.remove_notice_handler(handler)
            cursor.execute("SET LOCAL client_min_messages = notice")
            cursor.execute("SET LOCAL plan_cache_mode = auto")
            cursor.execute("SET LOCAL auto_explain.log_min_duration = -1")
    [plan] = [p for p in plans if "INSERT INTO ledger_itembalance" in p]
    assert "Index Cond: (journal_id = " in plan, plan
    assert "BitmapAnd" not in plan and "Index Cond: (account_id" not in plan, plan
    assert _items(history)[("invoice", "inv_2")].balance == Decimal("173.00")  # 180 - 7 written off
