"""The item-balance trigger reads the posted journal's lines by the journal's id alone, then their accounts.

It joined lines and accounts in one query: PL/pgSQL caches a plan per session, and one made on a ledger without
statistics (autovacuum lags a month-end burst, and is off on this project's CI machine) ANDed the line's
account index into the look-up, reading every line of the receivable account for each journal posted (0.6 ms
a journal at 40,000 events, growing with the ledger: a quarter of PostgreSQL's time in bench/drain.py). In a
subquery the planner cannot pull up (OFFSET 0) the lines are found by their journal first, whatever the
statistics say. Same rule and same sums (0010_item_balances).
"""
import importlib

from django.db import migrations

_0010 = importlib.import_module("ledger.migrations.0010_item_balances")
ITEM_TYPE, ITEM_ID, ITEM_LINES = _0010.ITEM_TYPE, _0010.ITEM_ID, _0010.ITEM_LINES


def _post(lines: str, where: str) -> str:
    return f"""
CREATE OR REPLACE FUNCTION tieout_item_balance_post() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- One row per item of this journal (ON CONFLICT may touch a row once per statement), in key order so
    -- that two journals posting at once lock shared items in the same order.
    INSERT INTO ledger_itembalance (account_id, source_system, item_type, item_id, balance, first_date)
    SELECT l.account_id, NEW.source_system, {ITEM_TYPE}, {ITEM_ID}, sum(l.debit - l.credit), NEW.accounting_date
    FROM {lines} l JOIN ledger_account a ON a.id = l.account_id
    WHERE {where}
    GROUP BY 1, 2, 3, 4
    ORDER BY 1, 2, 3, 4
    ON CONFLICT (account_id, source_system, item_type, item_id) DO UPDATE
        SET balance = ledger_itembalance.balance + EXCLUDED.balance,
            first_date = least(ledger_itembalance.first_date, EXCLUDED.first_date);
    RETURN NULL;
END $$;
"""


FORWARD = _post("(SELECT * FROM ledger_journalline WHERE journal_id = NEW.id OFFSET 0)", ITEM_LINES)
BACKWARD = _post("ledger_journalline", f"l.journal_id = NEW.id AND {ITEM_LINES}")


class Migration(migrations.Migration):

    dependencies = [("ledger", "0015_line_trigger_by_key")]

    operations = [migrations.RunSQL(FORWARD, BACKWARD)]
