"""Retention policies (issue 13 item 5), with the defaults: receipts' raw bytes, events and audit entries are kept
seven years (84 months) after their month ends; archiving also needs the month closed for every entity."""

import django.utils.timezone
from django.db import migrations, models


DEFAULTS = {"receipts": 84, "events": 84, "audit_entries": 84}


def defaults(apps, schema_editor):
    policy = apps.get_model("portal", "RetentionPolicy")
    for kind, months in DEFAULTS.items():
        policy.objects.get_or_create(kind=kind, defaults={"keep_months": months})


class Migration(migrations.Migration):

    initial = True

    dependencies = [
    ]

    operations = [
        migrations.CreateModel(
            name='RetentionPolicy',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('kind', models.CharField(choices=[('receipts', 'Receipts (raw request bytes)'), ('events', 'Events'), ('audit_entries', 'Audit entries')], max_length=20, unique=True)),
                ('keep_months', models.PositiveIntegerField(help_text='Months kept in the database after the month ends.')),
                ('location', models.CharField(blank=True, default='', help_text='Directory of the archive packs (empty: TIEOUT_RETENTION_DIR).', max_length=500)),
                ('updated_at', models.DateTimeField(default=django.utils.timezone.now)),
            ],
            options={
                'verbose_name_plural': 'retention policies',
                'constraints': [models.CheckConstraint(condition=models.Q(('keep_months__gte', 0)), name='retention_keep_months_positive')],
            },
        ),
        migrations.RunPython(defaults, migrations.RunPython.noop),
    ]
