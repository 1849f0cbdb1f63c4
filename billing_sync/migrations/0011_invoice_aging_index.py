"""An index for the receivables agings (indexes only): invoices by (source_system, invoice_id), the key the
ledger's item balances name them by, carrying the entity, due date and customer the agings read, so that
looking up each open invoice (tens of thousands per report) is an index-only probe, never a heap visit.

Built CONCURRENTLY (outside a transaction) so that a live invoice table is not locked while it builds.
"""
from django.contrib.postgres.operations import AddIndexConcurrently
from django.db import migrations, models


class Migration(migrations.Migration):
    atomic = False

    dependencies = [
        ("billing_sync", "0010_reconciliation_running_accepted"),
    ]

    operations = [
        AddIndexConcurrently(
            model_name="invoice",
            index=models.Index(fields=["source_system", "invoice_id"], include=("entity", "due_date", "customer"),
                               name="invoice_aging_idx"),
        ),
    ]
