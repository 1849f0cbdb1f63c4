"""Retention policies per entity (issue 13 item 5): each kind keeps its default (entity null; the existing rows
become the defaults) and may have one policy per entity; packs' location stays on the default, since a month's
partition, hence its pack, holds every entity's rows."""

import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('ledger', '0001_initial'),  # the entity table
        ('portal', '0001_retention_policy'),
    ]

    operations = [
        migrations.AddField(
            model_name='retentionpolicy',
            name='entity',
            field=models.ForeignKey(blank=True, help_text="Empty: the kind's default, for entities without their own policy.", null=True, on_delete=django.db.models.deletion.PROTECT, related_name='+', to='ledger.entity'),
        ),
        migrations.AlterField(
            model_name='retentionpolicy',
            name='kind',
            field=models.CharField(choices=[('receipts', 'Receipts (raw request bytes)'), ('events', 'Events'), ('audit_entries', 'Audit entries')], max_length=20),
        ),
        migrations.AlterField(
            model_name='retentionpolicy',
            name='location',
            field=models.CharField(blank=True, default='', help_text="Directory of the archive packs (empty: TIEOUT_RETENTION_DIR); the default's only, since a pack holds every entity's rows.", max_length=500),
        ),
        migrations.AddConstraint(
            model_name='retentionpolicy',
            constraint=models.UniqueConstraint(condition=models.Q(('entity__isnull', False)), fields=('kind', 'entity'), name='retention_one_policy_per_entity'),
        ),
        migrations.AddConstraint(
            model_name='retentionpolicy',
            constraint=models.UniqueConstraint(condition=models.Q(('entity__isnull', True)), fields=('kind',), name='retention_one_default'),
        ),
        migrations.AddConstraint(
            model_name='retentionpolicy',
            constraint=models.CheckConstraint(condition=models.Q(('entity__isnull', True), ('location', ''), _connector='OR'), name='retention_location_on_default_only'),
        ),
    ]
