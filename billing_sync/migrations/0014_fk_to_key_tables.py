"""The foreign keys to events and receipts, dropped in 0013 (and ledger 0014, exceptions_queue 0009) because
their tables are now partitioned, are enforced again against the key tables `billing_sync_eventkey` and
`billing_sync_receiptkey`: deferrable to commit as Django's were (the lean ingest writes an event before its
receipt in one statement). A key outlives its archived and detached partition, so what references an
archived event or receipt stays valid."""
from django.db import migrations

REFERENCES = [
    ("billing_sync_event", "receipt_id", "billing_sync_receiptkey"),
    ("billing_sync_event", "held_by_id", "billing_sync_eventkey"),
    ("billing_sync_canonicalchange", "event_id", "billing_sync_eventkey"),
    ("billing_sync_paymentallocation", "event_id", "billing_sync_eventkey"),
    ("billing_sync_refund", "event_id", "billing_sync_eventkey"),
    ("billing_sync_creditnote", "event_id", "billing_sync_eventkey"),
    ("billing_sync_writeoff", "event_id", "billing_sync_eventkey"),
    ("billing_sync_callbackdelivery", "event_id", "billing_sync_eventkey"),
    ("ledger_journal", "event_id", "billing_sync_eventkey"),
    ("exceptions_queue_approval", "event_id", "billing_sync_eventkey"),
    ("exceptions_queue_exceptionrecord", "event_id", "billing_sync_eventkey"),
]


def _name(table: str, column: str) -> str:
    return f"{table}_{column.removesuffix('_id')}_fk_key"


SQL = "\n".join(f"ALTER TABLE {table} ADD CONSTRAINT {_name(table, column)} FOREIGN KEY ({column}) "
                f"REFERENCES {target} (id) DEFERRABLE INITIALLY DEFERRED;" for table, column, target in REFERENCES)
REVERSE = "\n".join(f"ALTER TABLE {table} DROP CONSTRAINT {_name(table, column)};"
                    for table, column, _ in REFERENCES)


class Migration(migrations.Migration):
    dependencies = [
        ("billing_sync", "0013_partition_receipts_events"),
        ("exceptions_queue", "0009_event_fk_to_key_table"),
        ("ledger", "0014_event_fk_to_key_table"),
    ]
    operations = [migrations.RunSQL(SQL, REVERSE)]
