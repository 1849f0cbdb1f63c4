"""An index on an entity's journals by accounting date, carrying their status and posting time, so that a
month of journals (the period close's checks: unposted journals, the month's last posting) is a range read
index-only instead of a pass over every journal of the entity. Built CONCURRENTLY (outside a transaction)
so that a live journal table is not locked while it builds. (Numbered 0011: 0010 is left to another change
made at the same time; whichever merges second makes this depend on the other.)
"""
from django.contrib.postgres.operations import AddIndexConcurrently
from django.db import migrations, models


class Migration(migrations.Migration):
    atomic = False

    dependencies = [
        ("ledger", "0011_report_indexes"),
    ]

    operations = [
        AddIndexConcurrently(
            model_name="journal",
            index=models.Index(fields=["entity", "accounting_date"], include=["status", "posted_at"],
                               name="journal_entity_date_idx"),
        ),
    ]
