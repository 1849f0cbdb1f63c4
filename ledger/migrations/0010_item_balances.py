"""Item balances: the receivable and unapplied-cash subledgers (`ledger.models.ItemBalance`), kept by the
database. A journal that becomes posted adds its lines to the balances of the invoices and payments they
carry, in the same transaction; a guard refuses every other write; what was posted before this migration
is summed once, here.

Which lines count (the rule is the same in `ITEM_LINES` below, in the trigger and in the rebuild): a line
with an invoice id on an asset account counts for that invoice (the receivable: invoice, payment
allocation, credit note, write-off and refund lines), a line with a payment id and no invoice id on a
liability account counts for that payment (unapplied cash). Lines on other accounts (revenue, tax,
clearing, fees) and lines that name no document (manual journals) are not items.

The trigger is created before the rebuild, in one transaction: creating it locks the journal table against
updates until the migration commits, so no journal can become posted between the rebuild's snapshot and
the trigger taking over.
"""
import django.db.models.deletion
from django.db import migrations, models

# The SELECT list and condition that make a journal line an item line (`l` the line, `a` its account).
ITEM_TYPE = "CASE WHEN l.invoice_id <> '' THEN 'invoice' ELSE 'payment' END"
ITEM_ID = "CASE WHEN l.invoice_id <> '' THEN l.invoice_id ELSE l.payment_id END"
ITEM_LINES = ("((a.type = 'asset' AND l.invoice_id <> '') "
              "OR (a.type = 'liability' AND l.invoice_id = '' AND l.payment_id <> ''))")

# Every posted line, summed per item: the backfill here, and what bench/ar_aging.py runs after loading
# journals with triggers off (as a restore would).
REBUILD = f"""
INSERT INTO ledger_itembalance (account_id, source_system, item_type, item_id, balance, first_date)
SELECT l.account_id, j.source_system, {ITEM_TYPE}, {ITEM_ID}, sum(l.debit - l.credit), min(j.accounting_date)
FROM ledger_journalline l
JOIN ledger_journal j ON j.id = l.journal_id
JOIN ledger_account a ON a.id = l.account_id
WHERE j.status = 'posted' AND {ITEM_LINES}
GROUP BY 1, 2, 3, 4
"""

TRIGGERS = f"""
CREATE OR REPLACE FUNCTION tieout_item_balance_post() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- One row per item of this journal (ON CONFLICT may touch a row once per statement), in key order so
    -- that two journals posting at once lock shared items in the same order.
    INSERT INTO ledger_itembalance (account_id, source_system, item_type, item_id, balance, first_date)
    SELECT l.account_id, NEW.source_system, {ITEM_TYPE}, {ITEM_ID}, sum(l.debit - l.credit), NEW.accounting_date
    FROM ledger_journalline l JOIN ledger_account a ON a.id = l.account_id
    WHERE l.journal_id = NEW.id AND {ITEM_LINES}
    GROUP BY 1, 2, 3, 4
    ORDER BY 1, 2, 3, 4
    ON CONFLICT (account_id, source_system, item_type, item_id) DO UPDATE
        SET balance = ledger_itembalance.balance + EXCLUDED.balance,
            first_date = least(ledger_itembalance.first_date, EXCLUDED.first_date);
    RETURN NULL;
END $$;

-- A journal's lines are written while it is unposted (a posted journal's lines never change), so the
-- change of status to posted is the one moment to add them; it happens once (posted is final).
CREATE TRIGGER journal_item_balances AFTER UPDATE OF status ON ledger_journal
    FOR EACH ROW WHEN (NEW.status = 'posted' AND OLD.status IS DISTINCT FROM 'posted')
    EXECUTE FUNCTION tieout_item_balance_post();
"""

GUARD = """
CREATE OR REPLACE FUNCTION tieout_item_balance_guard() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- Depth 1 is a statement from outside; the posting trigger's own writes run at depth 2.
    IF pg_trigger_depth() < 2 THEN
        RAISE EXCEPTION 'tieout: item balances are kept by the database from posted journals'
            USING ERRCODE = 'restrict_violation';
    END IF;
    IF TG_OP = 'DELETE' THEN
        RETURN OLD;
    END IF;
    RETURN NEW;
END $$;

CREATE TRIGGER item_balance_guard BEFORE INSERT OR UPDATE OR DELETE ON ledger_itembalance
    FOR EACH ROW EXECUTE FUNCTION tieout_item_balance_guard();
"""

REVERSE = """
DROP TRIGGER IF EXISTS journal_item_balances ON ledger_journal;
DROP TRIGGER IF EXISTS item_balance_guard ON ledger_itembalance;
DROP FUNCTION IF EXISTS tieout_item_balance_post();
DROP FUNCTION IF EXISTS tieout_item_balance_guard();
"""


class Migration(migrations.Migration):

    dependencies = [
        ("ledger", "0009_period_close_record"),
    ]

    operations = [
        migrations.CreateModel(
            name="ItemBalance",
            fields=[
                ("id", models.BigAutoField(primary_key=True, serialize=False)),
                ("source_system", models.CharField(max_length=100)),
                ("item_type", models.CharField(choices=[("invoice", "Invoice"), ("payment", "Payment")],
                                               max_length=10)),
                ("item_id", models.CharField(max_length=100)),
                ("balance", models.DecimalField(decimal_places=4, max_digits=20)),
                ("first_date", models.DateField()),
                ("account", models.ForeignKey(on_delete=django.db.models.deletion.PROTECT, related_name="+",
                                              to="ledger.account")),
            ],
            options={
                "indexes": [models.Index(condition=models.Q(("balance", 0), _negated=True),
                                         fields=["account", "item_type"],
                                         include=("source_system", "item_id", "balance", "first_date"),
                                         name="item_balance_open_idx")],
                "constraints": [models.UniqueConstraint(fields=("account", "source_system", "item_type", "item_id"),
                                                        name="item_balance_unique")],
            },
        ),
        migrations.RunSQL(TRIGGERS + REBUILD + ";" + GUARD, REVERSE),
    ]
