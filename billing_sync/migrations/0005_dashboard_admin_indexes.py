"""Indexes for the dashboard's time windows and the admin's exact-match searches (indexes only).

Built CONCURRENTLY (outside a transaction) so that adding them to a live table of millions of events
does not block ingestion while they build.
"""
from django.contrib.postgres.operations import AddIndexConcurrently
from django.db import migrations, models


class Migration(migrations.Migration):
    atomic = False

    dependencies = [
        ("billing_sync", "0004_source_systems_callbacks"),
    ]

    operations = [
        AddIndexConcurrently(
            model_name="event",
            index=models.Index(fields=["received_at"], include=("status", "entity_code"), name="event_received_idx"),
        ),
        AddIndexConcurrently(
            model_name="event",
            index=models.Index(fields=["event_id"], name="event_event_id_idx"),
        ),
        AddIndexConcurrently(
            model_name="customer",
            index=models.Index(fields=["customer_id"], name="customer_id_idx"),
        ),
        AddIndexConcurrently(
            model_name="invoice",
            index=models.Index(fields=["invoice_id"], name="invoice_id_idx"),
        ),
        AddIndexConcurrently(
            model_name="payment",
            index=models.Index(fields=["payment_id"], name="payment_id_idx"),
        ),
        AddIndexConcurrently(
            model_name="callbackdelivery",
            index=models.Index(fields=["created_at"], name="callback_created_idx"),
        ),
    ]
