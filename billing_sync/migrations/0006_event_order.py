"""Acceptance order for events (billing_sync/ordering.py): a sequence number and the documents touched.

Existing events are numbered in the order they were received and get their keys from their stored
payloads, so that events already waiting keep their places after the upgrade.
"""
import django.contrib.postgres.fields
import django.contrib.postgres.indexes
from django.db import migrations, models

from billing_sync.ordering import order_keys


def fill_keys(apps, schema_editor):
    Event = apps.get_model("billing_sync", "Event")
    batch = []
    for event in Event.objects.only("id", "payload").iterator(chunk_size=2000):
        event.order_keys = order_keys(event.payload)
        batch.append(event)
        if len(batch) >= 2000:
            Event.objects.bulk_update(batch, ["order_keys"])
            batch = []
    if batch:
        Event.objects.bulk_update(batch, ["order_keys"])


class Migration(migrations.Migration):

    dependencies = [
        ("billing_sync", "0005_dashboard_admin_indexes"),
    ]

    operations = [
        migrations.RunSQL("CREATE SEQUENCE billing_sync_event_seq",
                          reverse_sql="DROP SEQUENCE IF EXISTS billing_sync_event_seq"),
        migrations.AddField(
            model_name="event",
            name="seq",
            field=models.BigIntegerField(db_default=models.Func(
                output_field=models.BigIntegerField(), template="nextval('billing_sync_event_seq')"), editable=False),
        ),
        migrations.RunSQL(
            """
            UPDATE billing_sync_event e SET seq = o.rn
              FROM (SELECT id, row_number() OVER (ORDER BY received_at, id) AS rn FROM billing_sync_event) o
             WHERE o.id = e.id;
            SELECT setval('billing_sync_event_seq', COALESCE((SELECT max(seq) FROM billing_sync_event), 0) + 1, false);
            ALTER SEQUENCE billing_sync_event_seq OWNED BY billing_sync_event.seq;
            """,
            reverse_sql=migrations.RunSQL.noop),
        migrations.AddField(
            model_name="event",
            name="order_keys",
            field=django.contrib.postgres.fields.ArrayField(
                base_field=models.TextField(), blank=True, default=list, size=None,
                db_default=models.Value([], django.contrib.postgres.fields.ArrayField(
                    base_field=models.TextField(), size=None))),
        ),
        migrations.RunPython(fill_keys, migrations.RunPython.noop),
        migrations.AddConstraint(
            model_name="event",
            constraint=models.UniqueConstraint(fields=("seq",), name="event_unique_seq"),
        ),
        migrations.AddIndex(
            model_name="event",
            index=django.contrib.postgres.indexes.GinIndex(
                condition=models.Q(("status__in", ["accepted", "exception"])), fields=["order_keys"],
                name="event_pending_keys_idx"),
        ),
    ]
