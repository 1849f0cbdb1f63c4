"""Billing ↔ ledger reconciliation of N invoices (default 1,000,000) with their journals: time of one run and its
peak memory (RSS), side by side with one SELECT that reads the same rows. Runs against DATABASE_URL's database
(migrated first: `manage.py migrate`), in an entity of its own (`BENCH`, created by the script, its rows bulk
loaded with SQL, triggers off as a superuser's bulk load would); the ERP side reads nothing (the journals are
booked and not yet posted), so the time is the billing ↔ ledger part. Usage:
`DJANGO_SETTINGS_MODULE=config.settings.dev python bench/reconciliation.py [N]`."""
import datetime
import os
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.dev")

import django  # noqa: E402

django.setup()

from django.db import connection, transaction  # noqa: E402

from billing_sync import services  # noqa: E402
from ledger import services as ledger  # noqa: E402
from ledger.connectors.builtin import BuiltinConnector  # noqa: E402
from ledger.models import Entity  # noqa: E402

DAY = datetime.date(2026, 11, 1)


class NoErp(BuiltinConnector):
    def erp_documents(self, **kwargs):
        return iter(())

    def erp_document(self, ref):
        return None

    def account_movements(self, **kwargs):
        return iter(())


def seed(n: int) -> Entity:
    entity = Entity.objects.filter(code="BENCH").first()
    if entity is not None:
        return entity
    with transaction.atomic():
        entity, _ = ledger.entity_setup(code="BENCH", currency="USD", name="Bench", actor="bench")
    with connection.cursor() as cursor:
        cursor.execute("SET session_replication_role = replica")
        cursor.execute("""INSERT INTO billing_sync_customer (source_system, customer_id, entity_code, name, email,
                          country, version) VALUES ('bench', 'cus_bench', 'BENCH', 'Bench', '', 'US', 1)
                          RETURNING id""")
        customer = cursor.fetchone()[0]
        cursor.execute("SELECT role, account_id FROM ledger_accountmapping WHERE entity_id = %s", [entity.pk])
        roles = dict(cursor.fetchall())
        cursor.execute("""
            INSERT INTO ledger_journal (id, entity_id, status, accounting_date, kind, source_system, document_type,
                document_id, document_version, description, created_at, created_by, posting_attempts,
                deliveries_lost, last_error, correlation_id)
            SELECT md5('bench' || g)::uuid, %s, 'ready', %s, 'invoice', 'bench', 'invoice', 'in_' || g, 1, '',
                now(), 'bench', 0, 0, '', ''
            FROM generate_series(1, %s) g""", [entity.pk, DAY, n])
        cursor.execute("""
            INSERT INTO ledger_journalline (journal_id, line_no, account_id, debit, credit, customer_id, invoice_id,
                payment_id, jurisdiction, memo)
            SELECT md5('bench' || g)::uuid, 1, %s, 100 + g %% 50, 0, 'cus_bench', 'in_' || g, '', '', ''
            FROM generate_series(1, %s) g
            UNION ALL
            SELECT md5('bench' || g)::uuid, 2, %s, 0, 100 + g %% 50, 'cus_bench', 'in_' || g, '', '', ''
            FROM generate_series(1, %s) g""", [roles["receivable"], n, roles["revenue"], n])
        cursor.execute("""
            INSERT INTO billing_sync_invoice (source_system, invoice_id, entity_id, customer_id, number, currency,
                issue_date, due_date, subtotal, tax_total, total, version, status, applied_total, credited_total,
                written_off_total, refunded_total, current_journal_id, created_at)
            SELECT 'bench', 'in_' || g, %s, %s, 'B-' || g, 'USD', %s, %s, 100 + g %% 50, 0, 100 + g %% 50, 1, 'open',
                0, 0, 0, 0, md5('bench' || g)::uuid, now()
            FROM generate_series(1, %s) g""", [entity.pk, customer, DAY, DAY + datetime.timedelta(days=30), n])
        cursor.execute("SET session_replication_role = DEFAULT")
        cursor.execute("ANALYZE billing_sync_invoice; ANALYZE ledger_journal; ANALYZE ledger_journalline")
    return entity


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
    started = time.monotonic()
    entity = seed(n)
    print(f"seeded {n:,} invoices in {time.monotonic() - started:.1f}s", flush=True)
    with connection.cursor() as cursor:
        started = time.monotonic()
        cursor.execute("""SELECT count(*), SUM(l.debit - l.credit) FROM ledger_journalline l
                          JOIN ledger_journal j ON j.id = l.journal_id
                          JOIN billing_sync_invoice i ON i.entity_id = j.entity_id AND i.invoice_id = l.invoice_id
                          WHERE j.entity_id = %s""", [entity.pk])
        cursor.fetchone()
        select_seconds = time.monotonic() - started
    for attempt in ("first (writes every mark)", "second (nothing changed)"):
        started = time.monotonic()
        run = services.reconciliation_run(entity=entity, date_from=DAY, date_to=DAY + datetime.timedelta(days=29),
                                          full=True, actor="bench", connector=NoErp(entity))
        seconds = time.monotonic() - started
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"run {run.pk} {attempt}: {run.status} {seconds:.1f}s, matched {run.matched:,}, breaks {run.breaks}, "
              f"peak RSS {rss:.0f} MiB {run.error}", flush=True)
    print(f"one SELECT over the same rows: {select_seconds:.1f}s")


if __name__ == "__main__":
    main()
