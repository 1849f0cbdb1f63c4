"""Indexes for the dashboard (posted in a window, the unposted backlog, retried journals, recent ERP
attempts) and the admin's newest-first journal list (indexes only).

Built CONCURRENTLY (outside a transaction) so that a live journal table is not locked while they build.
"""
from django.contrib.postgres.operations import AddIndexConcurrently
from django.db import migrations, models

UNPOSTED = ["pending_approval", "ready", "posting", "failed"]


class Migration(migrations.Migration):
    atomic = False

    dependencies = [
        ("ledger", "0007_entity_access"),
    ]

    operations = [
        AddIndexConcurrently(
            model_name="journal",
            index=models.Index(fields=["created_at"], name="journal_created_idx"),
        ),
        AddIndexConcurrently(
            model_name="journal",
            index=models.Index(condition=models.Q(status="posted"), fields=["posted_at"], name="journal_posted_idx"),
        ),
        AddIndexConcurrently(
            model_name="journal",
            index=models.Index(condition=models.Q(status__in=UNPOSTED), fields=["created_at"],
                               name="journal_unposted_idx"),
        ),
        AddIndexConcurrently(
            model_name="journal",
            index=models.Index(condition=models.Q(posting_attempts__gt=1), fields=["status"],
                               name="journal_retried_idx"),
        ),
        AddIndexConcurrently(
            model_name="postingattempt",
            index=models.Index(fields=["started_at"], name="attempt_started_idx"),
        ),
    ]
