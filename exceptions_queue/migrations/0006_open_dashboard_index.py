"""A covering partial index for the dashboard's open exceptions by code and age (index-only scan),
built concurrently so a live queue is not locked while it builds."""
from django.contrib.postgres.operations import AddIndexConcurrently
from django.db import migrations, models
from django.db.models import Q


class Migration(migrations.Migration):
    atomic = False

    dependencies = [("exceptions_queue", "0005_escalated_index")]

    operations = [
        AddIndexConcurrently(
            model_name="exceptionrecord",
            index=models.Index(condition=~Q(status="resolved"), fields=["code", "created_at"],
                               include=["entity_code", "retry_count"], name="exception_open_dash_idx"),
        ),
    ]
