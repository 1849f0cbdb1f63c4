"""Reconciliation marks without per-row foreign-key checks: a run at a million invoices writes 1.75 million marks,
and two deferred foreign-key checks per row cost more than the rows (a minute at commit). The references stay
enforced by the database, once per statement: an AFTER INSERT / UPDATE trigger with a transition table checks the
distinct entities and runs the statement wrote; an entity with marks cannot be deleted (runs never can be,
migration 0009). The two indexes nothing reads by (entity, run) and the pattern index on the key go too."""
import django.db.models.deletion
from django.db import migrations, models

TRIGGERS = """
CREATE FUNCTION billing_sync_recon_mark_refs() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    bad text;
BEGIN
    SELECT format('entity %s, run %s', n.entity_id, n.run_id) INTO bad
    FROM (SELECT DISTINCT entity_id, run_id FROM new_marks) n
    WHERE NOT EXISTS (SELECT 1 FROM ledger_entity e WHERE e.id = n.entity_id)
       OR NOT EXISTS (SELECT 1 FROM billing_sync_reconciliationrun r WHERE r.id = n.run_id AND r.entity_id = n.entity_id)
    LIMIT 1;
    IF bad IS NOT NULL THEN
        RAISE EXCEPTION 'reconciliation mark refers to no run of its entity (%)', bad
            USING ERRCODE = 'foreign_key_violation';
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER billing_sync_recon_mark_refs_insert AFTER INSERT ON billing_sync_reconciliationmark
    REFERENCING NEW TABLE AS new_marks FOR EACH STATEMENT EXECUTE FUNCTION billing_sync_recon_mark_refs();
CREATE TRIGGER billing_sync_recon_mark_refs_update AFTER UPDATE ON billing_sync_reconciliationmark
    REFERENCING NEW TABLE AS new_marks FOR EACH STATEMENT EXECUTE FUNCTION billing_sync_recon_mark_refs();

CREATE FUNCTION billing_sync_entity_keeps_marks() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM billing_sync_reconciliationmark WHERE entity_id = OLD.id LIMIT 1) THEN
        RAISE EXCEPTION 'entity % has reconciliation marks and cannot be deleted', OLD.code
            USING ERRCODE = 'foreign_key_violation';
    END IF;
    RETURN OLD;
END $$;
CREATE TRIGGER billing_sync_entity_keeps_marks BEFORE DELETE ON ledger_entity
    FOR EACH ROW EXECUTE FUNCTION billing_sync_entity_keeps_marks();
DROP INDEX IF EXISTS billing_sync_reconciliationmark_subject_df92d76e_like;
"""
DROP_TRIGGERS = """
DROP TRIGGER IF EXISTS billing_sync_entity_keeps_marks ON ledger_entity;
DROP FUNCTION IF EXISTS billing_sync_entity_keeps_marks();
DROP TRIGGER IF EXISTS billing_sync_recon_mark_refs_insert ON billing_sync_reconciliationmark;
DROP TRIGGER IF EXISTS billing_sync_recon_mark_refs_update ON billing_sync_reconciliationmark;
DROP FUNCTION IF EXISTS billing_sync_recon_mark_refs();
CREATE INDEX IF NOT EXISTS billing_sync_reconciliationmark_subject_df92d76e_like
    ON billing_sync_reconciliationmark (subject varchar_pattern_ops);
"""


class Migration(migrations.Migration):

    dependencies = [
        ('billing_sync', '0011_invoice_aging_index'),
        ('ledger', '0012_journal_entity_date_idx'),
    ]

    operations = [
        migrations.AlterField(
            model_name='reconciliationmark',
            name='entity',
            field=models.ForeignKey(db_constraint=False, db_index=False, on_delete=django.db.models.deletion.DO_NOTHING,
                                    related_name='+', to='ledger.entity'),
        ),
        migrations.AlterField(
            model_name='reconciliationmark',
            name='run',
            field=models.ForeignKey(db_constraint=False, db_index=False, on_delete=django.db.models.deletion.DO_NOTHING,
                                    related_name='+', to='billing_sync.reconciliationrun'),
        ),
        migrations.RunSQL(TRIGGERS, DROP_TRIGGERS),
    ]
