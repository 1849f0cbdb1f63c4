"""Posting retries keep their due time in the database: a journal's and a batch's transient failures so far
(`posting_retries`, the retry budget and the backoff's exponent) and when the next attempt is due
(`next_attempt_at`), which the outbox and batch sweeps read, so that a worker killed while it held a retry's
countdown loses nothing. The columns are nullable or carry a constant default (no table rewrite); the
partial index of due ready journals is built CONCURRENTLY so that a live journal table is not locked.
"""
from django.contrib.postgres.operations import AddIndexConcurrently
from django.db import migrations, models


class Migration(migrations.Migration):
    atomic = False

    dependencies = [
        ("ledger", "0012_journal_entity_date_idx"),
    ]

    operations = [
        migrations.AddField(
            model_name="erpbatch",
            name="next_attempt_at",
            field=models.DateTimeField(blank=True, null=True),
        ),
        migrations.AddField(
            model_name="erpbatch",
            name="posting_retries",
            field=models.PositiveIntegerField(db_default=0, default=0),
        ),
        migrations.AddField(
            model_name="journal",
            name="next_attempt_at",
            field=models.DateTimeField(blank=True, null=True),
        ),
        migrations.AddField(
            model_name="journal",
            name="posting_retries",
            field=models.PositiveIntegerField(db_default=0, default=0),
        ),
        AddIndexConcurrently(
            model_name="journal",
            index=models.Index(condition=models.Q(("next_attempt_at__isnull", False), ("status", "ready")),
                               fields=["next_attempt_at"], name="journal_retry_due_idx"),
        ),
    ]
