"""Audit entries partitioned by month of `at` (RANGE, one partition a month and a DEFAULT one), so that a
closed month can be archived and detached whole (portal's retention) instead of deleted row by row.

PostgreSQL wants the partition key in every unique constraint, so the entry id alone can no longer be unique
on the table, nor the target of the seals' foreign key. A key table, `audit_auditentrykey` (id, at), keeps
it: an AFTER INSERT trigger on the entries adds their keys at the end of the same statement, one INSERT
per statement (a second entry with the same id is refused there), the seals' foreign key points at it (deferrable, as before), and it is
append-only like the log. Keys outlive a detached partition, so the chain's seals keep their references.
The append-only guards, the content check (`audit_entry_fields_match`) and the indexes are re-created on the
partitioned table under their names, so `audit_verify`'s schema check finds them as it did. Existing rows
are copied; the identity sequence keeps its name and next value.

`PartitionArchive` records each month archived and detached (append-only like the log), which is where
verification starts once audit entries were archived (the first signed digest after them).
"""
import django.utils.timezone
from django.db import migrations, models

from audit.migrations import _partitioning

KEYS_SQL = """
CREATE TABLE audit_auditentrykey (id bigint PRIMARY KEY, at timestamptz NOT NULL);
INSERT INTO audit_auditentrykey (id, at) SELECT id, at FROM audit_auditentry;
CREATE TRIGGER audit_entrykey_append_only BEFORE UPDATE OR DELETE ON audit_auditentrykey
    FOR EACH ROW EXECUTE FUNCTION tieout_refuse_change();
CREATE TRIGGER audit_entrykey_no_truncate BEFORE TRUNCATE ON audit_auditentrykey
    FOR EACH STATEMENT EXECUTE FUNCTION tieout_refuse_change();

-- Once per statement, from its transition table: a batch's thousand entries cost one INSERT here, not a
-- thousand trigger calls (a second entry with a taken id fails the statement on the key's primary key).
CREATE FUNCTION audit_entry_key() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO audit_auditentrykey (id, at) SELECT id, at FROM new_entries;
    RETURN NULL;
END $$;
CREATE TRIGGER audit_entry_key AFTER INSERT ON audit_auditentry REFERENCING NEW TABLE AS new_entries
    FOR EACH STATEMENT EXECUTE FUNCTION audit_entry_key();

ALTER TABLE audit_auditseal ADD CONSTRAINT audit_auditseal_entry_id_fk_audit_auditentrykey
    FOREIGN KEY (entry_id) REFERENCES audit_auditentrykey (id) DEFERRABLE INITIALLY DEFERRED;
"""
KEYS_REVERSE = """
ALTER TABLE audit_auditseal DROP CONSTRAINT audit_auditseal_entry_id_fk_audit_auditentrykey;
DROP TRIGGER audit_entry_key ON audit_auditentry;
DROP FUNCTION audit_entry_key();
DROP TABLE audit_auditentrykey;
"""


def partition(apps, schema_editor):
    with schema_editor.connection.cursor() as cursor:
        _partitioning.convert(cursor, "audit_auditentry", "at")
        cursor.execute(KEYS_SQL)


def unpartition(apps, schema_editor):
    with schema_editor.connection.cursor() as cursor:
        cursor.execute(KEYS_REVERSE)
        _partitioning.convert(cursor, "audit_auditentry", "at", back=True)


ARCHIVE_GUARDS = """
CREATE TRIGGER audit_partitionarchive_append_only BEFORE UPDATE OR DELETE ON audit_partitionarchive
    FOR EACH ROW EXECUTE FUNCTION tieout_refuse_change();
CREATE TRIGGER audit_partitionarchive_no_truncate BEFORE TRUNCATE ON audit_partitionarchive
    FOR EACH STATEMENT EXECUTE FUNCTION tieout_refuse_change();
"""
ARCHIVE_GUARDS_REVERSE = """
DROP TRIGGER audit_partitionarchive_append_only ON audit_partitionarchive;
DROP TRIGGER audit_partitionarchive_no_truncate ON audit_partitionarchive;
"""


class Migration(migrations.Migration):
    dependencies = [("audit", "0005_entry_content")]

    operations = [
        migrations.AlterField(
            model_name="auditseal", name="entry",
            field=models.OneToOneField(db_constraint=False, on_delete=models.deletion.PROTECT, related_name="seal",
                                       to="audit.auditentry")),
        # CREATE OR REPLACE, also in billing_sync 0013 (which does not depend on this one); kept on reverse.
        migrations.RunSQL(_partitioning.PARTITION_FUNCTION_SQL, migrations.RunSQL.noop),
        migrations.RunPython(partition, unpartition, elidable=False),
        # The key table KEYS_SQL made, known to Django (so that the test flush empties it too).
        migrations.SeparateDatabaseAndState(state_operations=[migrations.CreateModel(
            name="AuditEntryKey",
            fields=[("id", models.BigIntegerField(primary_key=True, serialize=False)), ("at", models.DateTimeField())],
            options={"db_table": "audit_auditentrykey"},
        )]),
        migrations.CreateModel(
            name="PartitionArchive",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("table", models.CharField(max_length=63)),
                ("month", models.DateField()),
                ("partition", models.CharField(max_length=63)),
                ("rows", models.BigIntegerField()),
                ("pack_name", models.CharField(max_length=200)),
                ("location", models.CharField(max_length=500)),
                ("pack_sha256", models.CharField(max_length=64)),
                ("first_seq", models.BigIntegerField(blank=True, null=True)),
                ("last_seq", models.BigIntegerField(blank=True, null=True)),
                ("resume_day", models.DateField(blank=True, null=True)),
                ("actor", models.CharField(max_length=150)),
                ("archived_at", models.DateTimeField(default=django.utils.timezone.now)),
            ],
            options={"constraints": [models.UniqueConstraint(fields=("table", "month"),
                                                             name="partition_archive_once")]},
        ),
        migrations.RunSQL(ARCHIVE_GUARDS, ARCHIVE_GUARDS_REVERSE),
    ]
