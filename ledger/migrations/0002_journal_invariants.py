"""Journal invariants in the database: balanced at commit, immutable once posted, never truncated.

The balance check is a deferred constraint trigger so that a journal and its lines can be inserted in
any order inside one transaction; it runs at COMMIT and refuses a journal whose debits and credits
differ, or that has no lines.
"""
from django.db import migrations

SQL = """
CREATE OR REPLACE FUNCTION tieout_check_journal_balanced() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    jid uuid;
    d numeric;
    c numeric;
    n integer;
BEGIN
    IF TG_TABLE_NAME = 'ledger_journal' THEN
        jid := NEW.id;
    ELSIF TG_OP = 'DELETE' THEN
        jid := OLD.journal_id;
    ELSE
        jid := NEW.journal_id;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM ledger_journal WHERE id = jid) THEN
        RETURN NULL;
    END IF;
    SELECT COALESCE(SUM(debit), 0), COALESCE(SUM(credit), 0), COUNT(*) INTO d, c, n
        FROM ledger_journalline WHERE journal_id = jid;
    IF n = 0 OR d <> c THEN
        RAISE EXCEPTION 'tieout: journal % does not balance (debit %, credit %, % lines)', jid, d, c, n
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NULL;
END $$;

CREATE CONSTRAINT TRIGGER journal_line_balanced AFTER INSERT OR UPDATE OR DELETE ON ledger_journalline
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION tieout_check_journal_balanced();
CREATE CONSTRAINT TRIGGER journal_balanced AFTER INSERT ON ledger_journal
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION tieout_check_journal_balanced();

CREATE OR REPLACE FUNCTION tieout_journal_immutable() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.status = 'posted' THEN
        RAISE EXCEPTION 'tieout: journal % is posted and cannot change', OLD.id
            USING ERRCODE = 'restrict_violation';
    END IF;
    IF TG_OP = 'DELETE' THEN
        RETURN OLD;
    END IF;
    RETURN NEW;
END $$;

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

CREATE TRIGGER journal_posted_immutable BEFORE UPDATE OR DELETE ON ledger_journal
    FOR EACH ROW EXECUTE FUNCTION tieout_journal_immutable();
CREATE TRIGGER journal_line_posted_immutable BEFORE INSERT OR UPDATE OR DELETE ON ledger_journalline
    FOR EACH ROW EXECUTE FUNCTION tieout_journal_line_immutable();
CREATE TRIGGER journal_no_truncate BEFORE TRUNCATE ON ledger_journal
    FOR EACH STATEMENT EXECUTE FUNCTION tieout_refuse_change();
CREATE TRIGGER journal_line_no_truncate BEFORE TRUNCATE ON ledger_journalline
    FOR EACH STATEMENT EXECUTE FUNCTION tieout_refuse_change();
"""

REVERSE = """
DROP TRIGGER IF EXISTS journal_line_balanced ON ledger_journalline;
DROP TRIGGER IF EXISTS journal_balanced ON ledger_journal;
DROP TRIGGER IF EXISTS journal_posted_immutable ON ledger_journal;
DROP TRIGGER IF EXISTS journal_line_posted_immutable ON ledger_journalline;
DROP TRIGGER IF EXISTS journal_no_truncate ON ledger_journal;
DROP TRIGGER IF EXISTS journal_line_no_truncate ON ledger_journalline;
"""


class Migration(migrations.Migration):
    dependencies = [("ledger", "0001_initial"), ("audit", "0002_append_only")]
    operations = [migrations.RunSQL(SQL, REVERSE)]
