"""A journal line's "posted journals are immutable" trigger reads its journal by primary key alone.

It used to ask `WHERE id = ... AND status = 'posted'`: PL/pgSQL caches a plan per session, and one made while the
statistics of a month-end burst were stale could walk the status index over every posted journal for each line
(0.5 ms a line at 20,000 events, growing with the ledger). Reading the journal's status by its key and comparing
it in the function has one plan, the primary key's. Same rule, same errors (0002_journal_invariants).
"""
from django.db import migrations

FORWARD = """
CREATE OR REPLACE FUNCTION tieout_journal_line_immutable() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    journals uuid[];
    jid uuid;
    journal_status text;
BEGIN
    journals := CASE TG_OP WHEN 'INSERT' THEN ARRAY[NEW.journal_id] WHEN 'DELETE' THEN ARRAY[OLD.journal_id]
                           ELSE ARRAY[OLD.journal_id, NEW.journal_id] END;
    FOREACH jid IN ARRAY journals LOOP
        SELECT j.status INTO journal_status FROM ledger_journal j WHERE j.id = jid;
        IF journal_status = 'posted' THEN
            RAISE EXCEPTION 'tieout: lines of posted journal % cannot change', jid
                USING ERRCODE = 'restrict_violation';
        END IF;
    END LOOP;
    IF TG_OP = 'DELETE' THEN
        RETURN OLD;
    END IF;
    RETURN NEW;
END $$;
"""

BACKWARD = """
CREATE OR REPLACE FUNCTION tieout_journal_line_immutable() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP IN ('UPDATE', 'DELETE') AND EXISTS (
        SELECT 1 FROM ledger_journal WHERE id = OLD.journal_id AND status = 'posted') THEN
        RAISE EXCEPTION 'tieout: lines of posted journal % cannot change', OLD.journal_id
            USING ERRCODE = 'restrict_violation';
    END IF;
    IF TG_OP IN ('UPDATE', 'INSERT') AND EXISTS (
        SELECT 1 FROM ledger_journal WHERE id = NEW.journal_id AND status = 'posted') THEN
        RAISE EXCEPTION 'tieout: lines of posted journal % cannot change', NEW.journal_id
            USING ERRCODE = 'restrict_violation';
    END IF;
    IF TG_OP = 'DELETE' THEN
        RETURN OLD;
    END IF;
    RETURN NEW;
END $$;
"""


class Migration(migrations.Migration):

    dependencies = [("ledger", "0014_event_fk_to_key_table")]

    operations = [migrations.RunSQL(FORWARD, BACKWARD)]
