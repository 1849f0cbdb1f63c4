"""The ready events in acceptance order, for a task filling its chunk (billing_sync.services.processing._fill)."""

from django.conf import settings
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('billing_sync', '0015_event_pending_keys_no_fastupdate'),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.AddIndex(
            model_name='event',
            index=models.Index(condition=models.Q(('held_by__isnull', True), ('status', 'accepted')), fields=['received_at', 'seq'], name='event_ready_idx'),
        ),
    ]
