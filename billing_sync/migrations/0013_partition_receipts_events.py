"""Receipts and events partitioned by month of `received_at` (RANGE, a partition a month and a DEFAULT one), so
that a closed month's raw bytes can be archived and detached whole (portal's retention).

PostgreSQL wants the partition key in every unique constraint, so two key tables keep what the tables no
longer can: `billing_sync_receiptkey` (id) and `billing_sync_eventkey` (id, and the event's identity
`(source_system, event_id)`, `seq` and `(source_system, idempotency_key)` unique under the constraints'
old names). Triggers add the keys in the same statement: an event's BEFORE INSERT (it decides whether the
row goes in), receipts' once per statement AFTER INSERT from the statement's transition table.
When an event's identity or Idempotency-Key is taken, an `INSERT ... ON CONFLICT DO NOTHING` (how
`billing_sync.services.ingest` writes every event) skips the row exactly as the unique index used to make it
do; any other INSERT is refused with the constraint's own unique violation. An UPDATE that moves a row to
another month's partition (the demo loader back-dates its history) keeps its key (`tieout.moving`); an
UPDATE of an event's identity is refused. Foreign keys to events and receipts stop pointing at the tables
here (and in ledger 0014, exceptions_queue 0009) and point at the key tables in 0014. Rows are copied.
"""

import django.db.models.deletion
from django.db import migrations, models

from audit.migrations import _partitioning

KEYS_SQL = r"""
CREATE TABLE billing_sync_receiptkey (id bigint PRIMARY KEY, received_at timestamptz NOT NULL);
INSERT INTO billing_sync_receiptkey (id, received_at) SELECT id, received_at FROM billing_sync_receipt;
CREATE TABLE billing_sync_eventkey (
    id uuid PRIMARY KEY,
    received_at timestamptz NOT NULL,
    source_system varchar(100) NOT NULL,
    event_id varchar(200) NOT NULL,
    idempotency_key varchar(200),
    seq bigint NOT NULL,
    CONSTRAINT event_unique_identity UNIQUE (source_system, event_id),
    CONSTRAINT event_unique_seq UNIQUE (seq)
);
CREATE UNIQUE INDEX event_unique_idem_key ON billing_sync_eventkey (source_system, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
INSERT INTO billing_sync_eventkey (id, received_at, source_system, event_id, idempotency_key, seq)
    SELECT id, received_at, source_system, event_id, idempotency_key, seq FROM billing_sync_event;

-- An UPDATE of the partition key moves the row: PostgreSQL deletes it from its partition and inserts it
-- into the other, firing the BEFORE INSERT trigger; this marks that insert as the same row's.
CREATE FUNCTION billing_sync_receipt_moving() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.id IS DISTINCT FROM OLD.id THEN
        RAISE EXCEPTION 'tieout: a receipt''s id never changes' USING ERRCODE = 'restrict_violation';
    END IF;
    IF NEW.received_at IS DISTINCT FROM OLD.received_at THEN
        UPDATE billing_sync_receiptkey SET received_at = NEW.received_at WHERE id = NEW.id;
    END IF;
    RETURN NEW;
END $$;

CREATE FUNCTION billing_sync_event_moving() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF (NEW.id, NEW.source_system, NEW.event_id, NEW.seq) IS DISTINCT FROM
            (OLD.id, OLD.source_system, OLD.event_id, OLD.seq)
            OR NEW.idempotency_key IS DISTINCT FROM OLD.idempotency_key THEN
        RAISE EXCEPTION 'tieout: an event''s id, identity, seq and Idempotency-Key never change'
            USING ERRCODE = 'restrict_violation';
    END IF;
    IF NEW.received_at IS DISTINCT FROM OLD.received_at THEN
        UPDATE billing_sync_eventkey SET received_at = NEW.received_at WHERE id = NEW.id;
        PERFORM set_config('tieout.moving', 'event:' || NEW.id, true);
    END IF;
    RETURN NEW;
END $$;

-- Receipts' keys once per statement, from its transition table (a row moved by an UPDATE fires no INSERT
-- statement trigger: its key stays, brought up to date by billing_sync_receipt_moving).
CREATE FUNCTION billing_sync_receipt_key() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO billing_sync_receiptkey (id, received_at) SELECT id, received_at FROM new_receipts;
    RETURN NULL;
END $$;

CREATE FUNCTION billing_sync_event_key() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF current_setting('tieout.moving', true) = 'event:' || NEW.id THEN
        PERFORM set_config('tieout.moving', '', true);
        RETURN NEW;
    END IF;
    INSERT INTO billing_sync_eventkey (id, received_at, source_system, event_id, idempotency_key, seq)
    VALUES (NEW.id, NEW.received_at, NEW.source_system, NEW.event_id, NEW.idempotency_key, NEW.seq)
    ON CONFLICT DO NOTHING;
    IF FOUND THEN
        RETURN NEW;
    END IF;
    -- Taken: the statement's own ON CONFLICT DO NOTHING would have skipped the row on a unique index of
    -- the table, so it skips it here; anything else gets the constraint's unique violation.
    IF current_query() ~* 'ON\s+CONFLICT\s+DO\s+NOTHING' THEN
        RETURN NULL;
    END IF;
    INSERT INTO billing_sync_eventkey (id, received_at, source_system, event_id, idempotency_key, seq)
    VALUES (NEW.id, NEW.received_at, NEW.source_system, NEW.event_id, NEW.idempotency_key, NEW.seq);
    RETURN NEW;
END $$;

CREATE TRIGGER billing_sync_receipt_key AFTER INSERT ON billing_sync_receipt REFERENCING NEW TABLE AS new_receipts
    FOR EACH STATEMENT EXECUTE FUNCTION billing_sync_receipt_key();
-- The WHEN clauses are evaluated without calling the function: an UPDATE of an event's status (several per
-- event processed) pays no trigger call.
CREATE TRIGGER billing_sync_receipt_moving BEFORE UPDATE ON billing_sync_receipt FOR EACH ROW
    WHEN (NEW.id IS DISTINCT FROM OLD.id OR NEW.received_at IS DISTINCT FROM OLD.received_at)
    EXECUTE FUNCTION billing_sync_receipt_moving();
CREATE TRIGGER billing_sync_event_key BEFORE INSERT ON billing_sync_event
    FOR EACH ROW EXECUTE FUNCTION billing_sync_event_key();
CREATE TRIGGER billing_sync_event_moving BEFORE UPDATE ON billing_sync_event FOR EACH ROW
    WHEN ((NEW.id, NEW.source_system, NEW.event_id, NEW.seq, NEW.received_at) IS DISTINCT FROM
          (OLD.id, OLD.source_system, OLD.event_id, OLD.seq, OLD.received_at)
          OR NEW.idempotency_key IS DISTINCT FROM OLD.idempotency_key)
    EXECUTE FUNCTION billing_sync_event_moving();
"""

KEYS_REVERSE = """
DROP TRIGGER billing_sync_receipt_key ON billing_sync_receipt;
DROP TRIGGER billing_sync_receipt_moving ON billing_sync_receipt;
DROP TRIGGER billing_sync_event_key ON billing_sync_event;
DROP TRIGGER billing_sync_event_moving ON billing_sync_event;
DROP FUNCTION billing_sync_receipt_key();
DROP FUNCTION billing_sync_event_key();
DROP FUNCTION billing_sync_receipt_moving();
DROP FUNCTION billing_sync_event_moving();
DROP TABLE billing_sync_eventkey;
DROP TABLE billing_sync_receiptkey;
"""


def partition(apps, schema_editor):
    with schema_editor.connection.cursor() as cursor:
        _partitioning.convert(cursor, "billing_sync_receipt", "received_at")
        _partitioning.convert(cursor, "billing_sync_event", "received_at")
        cursor.execute(KEYS_SQL)


def unpartition(apps, schema_editor):
    with schema_editor.connection.cursor() as cursor:
        cursor.execute(KEYS_REVERSE)
        _partitioning.convert(cursor, "billing_sync_event", "received_at", back=True)
        _partitioning.convert(cursor, "billing_sync_receipt", "received_at", back=True)


class Migration(migrations.Migration):

    dependencies = [
        ('billing_sync', '0012_reconciliation_mark_lean'),
        ('exceptions_queue', '0009_event_fk_to_key_table'),
        ('ledger', '0014_event_fk_to_key_table'),
    ]

    operations = [
        migrations.RemoveConstraint(
            model_name='event',
            name='event_unique_identity',
        ),
        migrations.RemoveConstraint(
            model_name='event',
            name='event_unique_idem_key',
        ),
        migrations.RemoveConstraint(
            model_name='event',
            name='event_unique_seq',
        ),
        migrations.AlterField(
            model_name='callbackdelivery',
            name='event',
            field=models.ForeignKey(db_constraint=False, on_delete=django.db.models.deletion.PROTECT, related_name='callback_deliveries', to='billing_sync.event'),
        ),
        migrations.AlterField(
            model_name='canonicalchange',
            name='event',
            field=models.ForeignKey(db_constraint=False, on_delete=django.db.models.deletion.PROTECT, related_name='changes', to='billing_sync.event'),
        ),
        migrations.AlterField(
            model_name='creditnote',
            name='event',
            field=models.ForeignKey(db_constraint=False, on_delete=django.db.models.deletion.PROTECT, related_name='+', to='billing_sync.event'),
        ),
        migrations.AlterField(
            model_name='event',
            name='held_by',
            field=models.ForeignKey(blank=True, db_constraint=False, db_index=False, null=True, on_delete=django.db.models.deletion.PROTECT, related_name='+', to='billing_sync.event'),
        ),
        migrations.AlterField(
            model_name='event',
            name='receipt',
            field=models.ForeignKey(blank=True, db_constraint=False, null=True, on_delete=django.db.models.deletion.PROTECT, related_name='events', to='billing_sync.receipt'),
        ),
        migrations.AlterField(
            model_name='paymentallocation',
            name='event',
            field=models.ForeignKey(db_constraint=False, on_delete=django.db.models.deletion.PROTECT, related_name='+', to='billing_sync.event'),
        ),
        migrations.AlterField(
            model_name='refund',
            name='event',
            field=models.ForeignKey(db_constraint=False, on_delete=django.db.models.deletion.PROTECT, related_name='+', to='billing_sync.event'),
        ),
        migrations.AlterField(
            model_name='writeoff',
            name='event',
            field=models.ForeignKey(db_constraint=False, on_delete=django.db.models.deletion.PROTECT, related_name='+', to='billing_sync.event'),
        ),
        migrations.RunSQL(_partitioning.PARTITION_FUNCTION_SQL, migrations.RunSQL.noop),
        migrations.RunPython(partition, unpartition, elidable=False),
        # The key tables KEYS_SQL made, known to Django (so that the test flush empties them too).
        migrations.SeparateDatabaseAndState(state_operations=[
            migrations.CreateModel(
                name="ReceiptKey",
                fields=[("id", models.BigIntegerField(primary_key=True, serialize=False)),
                        ("received_at", models.DateTimeField())],
                options={"db_table": "billing_sync_receiptkey"},
            ),
            migrations.CreateModel(
                name="EventKey",
                fields=[("id", models.UUIDField(primary_key=True, serialize=False)),
                        ("received_at", models.DateTimeField()),
                        ("source_system", models.CharField(max_length=100)),
                        ("event_id", models.CharField(max_length=200)),
                        ("idempotency_key", models.CharField(max_length=200, null=True)),
                        ("seq", models.BigIntegerField())],
                options={"db_table": "billing_sync_eventkey", "constraints": [
                    models.UniqueConstraint(fields=("source_system", "event_id"), name="event_unique_identity"),
                    models.UniqueConstraint(fields=("seq",), name="event_unique_seq"),
                    models.UniqueConstraint(condition=models.Q(idempotency_key__isnull=False),
                                            fields=("source_system", "idempotency_key"),
                                            name="event_unique_idem_key")]},
            ),
        ]),
        migrations.AddIndex(model_name="event", index=models.Index(fields=["source_system", "event_id"],
                                                                   name="event_identity_idx")),
        migrations.AddIndex(model_name="event", index=models.Index(fields=["seq"], name="event_seq_idx")),
        migrations.AddIndex(model_name="event", index=models.Index(
            condition=models.Q(idempotency_key__isnull=False), fields=["source_system", "idempotency_key"],
            name="event_idem_key_idx")),
    ]
