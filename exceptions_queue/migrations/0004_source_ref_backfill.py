"""Fill `source_ref` on exceptions opened before it existed, and index the queue's default view.

A posting exception is about its journal's document; any other is about the first document id its
event's payload names (the same order as `services.SOURCE_REF_FIELDS`). One-off set-based UPDATEs: the
rows' history is not rewritten (the field is derived from data that is itself kept and audited).
"""
from django.db import migrations, models
from django.db.models import Q

FROM_JOURNAL = """
UPDATE exceptions_queue_exceptionrecord x
   SET source_ref = LEFT(j.document_id, 200)
  FROM ledger_journal j
 WHERE x.journal_id = j.id AND x.source_ref = '' AND x.process = 'posting' AND j.document_id <> ''
"""

FROM_EVENT = """
UPDATE exceptions_queue_exceptionrecord x
   SET source_ref = LEFT(COALESCE(NULLIF(e.payload->'data'->>'credit_note_id', ''),
                                  NULLIF(e.payload->'data'->>'write_off_id', ''),
                                  NULLIF(e.payload->'data'->>'refund_id', ''),
                                  NULLIF(e.payload->'data'->>'payment_id', ''),
                                  NULLIF(e.payload->'data'->>'invoice_id', ''),
                                  NULLIF(e.payload->'data'->>'customer_id', ''), ''), 200)
  FROM billing_sync_event e
 WHERE x.event_id = e.id AND x.source_ref = '' AND jsonb_typeof(e.payload->'data') = 'object'
"""

JOURNAL_ONLY = """
UPDATE exceptions_queue_exceptionrecord x
   SET source_ref = LEFT(j.document_id, 200)
  FROM ledger_journal j
 WHERE x.journal_id = j.id AND x.source_ref = '' AND x.event_id IS NULL AND j.document_id <> ''
"""


class Migration(migrations.Migration):

    dependencies = [
        ("exceptions_queue", "0003_roles"),
        ("billing_sync", "0004_source_systems_callbacks"),
        ("ledger", "0007_entity_access"),
    ]

    operations = [
        migrations.RunSQL(FROM_JOURNAL, reverse_sql=migrations.RunSQL.noop),
        migrations.RunSQL(FROM_EVENT, reverse_sql=migrations.RunSQL.noop),
        migrations.RunSQL(JOURNAL_ONLY, reverse_sql=migrations.RunSQL.noop),
        migrations.AddIndex(
            model_name="exceptionrecord",
            index=models.Index(condition=~Q(status="resolved"), fields=["-created_at", "id"],
                               name="exception_unresolved_idx"),
        ),
    ]
