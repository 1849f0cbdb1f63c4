"""Indexes for the receivables reports and the ledger export (indexes only): posted journals by entity and
accounting date, and journal lines by customer.

Built CONCURRENTLY (outside a transaction) so that live journal tables are not locked while they build.
"""
from django.contrib.postgres.operations import AddIndexConcurrently
from django.db import migrations, models


class Migration(migrations.Migration):
    atomic = False

    dependencies = [
        ("ledger", "0010_item_balances"),
    ]

    operations = [
        AddIndexConcurrently(
            model_name="journal",
            index=models.Index(condition=models.Q(status="posted"), fields=["entity", "accounting_date"],
                               include=("id", "source_system"), name="journal_posted_date_idx"),
        ),
        AddIndexConcurrently(
            model_name="journalline",
            index=models.Index(condition=models.Q(("customer_id", ""), _negated=True),
                               fields=["customer_id", "account"], name="line_customer_idx"),
        ),
    ]
