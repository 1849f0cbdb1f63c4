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

# The function as 0010 made it (its text up to the trigger's creation), and the same with the lines read first.
BACKWARD = _0010.TRIGGERS[:_0010.TRIGGERS.index("-- A journal's lines")]
_LINES_JOINED = "FROM ledger_journalline l JOIN"
_BY_JOURNAL = "WHERE l.journal_id = NEW.id AND "
assert BACKWARD.count(_LINES_JOINED) == 1 and BACKWARD.count(_BY_JOURNAL) == 1
FORWARD = (BACKWARD.replace(_LINES_JOINED, "FROM (SELECT * FROM ledger_journalline WHERE journal_id = NEW.id OFFSET 0) l JOIN")
           .replace(_BY_JOURNAL, "WHERE "))


class Migration(migrations.Migration):

    dependencies = [("ledger", "0015_line_trigger_by_key")]

    operations = [migrations.RunSQL(FORWARD, BACKWARD)]
