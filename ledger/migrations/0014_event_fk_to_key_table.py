"""Events' foreign keys here stop pointing at billing_sync_event, which billing_sync 0013 partitions by month
(PostgreSQL cannot reference the id alone of a partitioned table); billing_sync 0014 points them at the key
table billing_sync_eventkey instead, so the reference stays enforced by the database (deferrable, as before)."""
import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('billing_sync', '0012_reconciliation_mark_lean'),
        ('ledger', '0013_posting_due_times'),
    ]

    operations = [
        migrations.AlterField(
            model_name='journal',
            name='event',
            field=models.ForeignKey(blank=True, db_constraint=False, null=True, on_delete=django.db.models.deletion.PROTECT, related_name='journals', to='billing_sync.event'),
        ),
    ]
