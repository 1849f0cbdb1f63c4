"""Index the queue's "escalated only" view (few rows, newest first), so it never walks the whole table."""
from django.db import migrations, models
from django.db.models import Q


class Migration(migrations.Migration):

    dependencies = [("exceptions_queue", "0004_source_ref_backfill")]

    operations = [
        migrations.AddIndex(
            model_name="exceptionrecord",
            index=models.Index(condition=Q(escalation_level__gt=0), fields=["-created_at", "id"],
                               name="exception_escalated_idx"),
        ),
    ]
