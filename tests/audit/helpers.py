"""Small helpers the audit tests share: committed entries, a sealed log, the chain as (seq, entry id) pairs,
`manage.py audit_verify` run as an operator runs it, and the database at its latest migrations."""
import io

import pytest

from django.core.management import call_command
from django.db import connection, transaction
from django.db.migrations.executor import MigrationExecutor

from audit import services as audit
from audit.models import AuditEntry, AuditSeal


def verify_cmd(*args) -> tuple[int, str]:
    """`manage.py audit_verify *args`: (exit code, last line of its output)."""
    out = io.StringIO()
    try:
        call_command("audit_verify", *args, stdout=out, stderr=io.StringIO())
    except SystemExit as exc:
        return exc.code, out.getvalue().strip().splitlines()[-1]
    return 0, out.getvalue().strip().splitlines()[-1]


def record_change(action="test.change", object_id="1") -> AuditEntry:
    with transaction.atomic():
        return audit.record(actor="tester", action=action, object_type="thing", object_id=object_id,
                            after={"n": object_id})


def chain_pairs() -> list[tuple[int, int]]:
    return list(AuditSeal.objects.order_by("seq").values_list("seq", "entry_id"))


def flush_deferred():
    with connection.cursor() as cursor:  # the seals' deferred FK checks, as their commit would run them
        cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
        cursor.execute("SET CONSTRAINTS ALL DEFERRED")


def sealed(n: int = 12) -> list[AuditEntry]:
    """`n` committed entries, sealed; the chain is checked to be exactly them, in id order."""
    for i in range(n):
        record_change(object_id=str(i))
    audit.chain_seal()
    flush_deferred()
    entries = list(AuditEntry.objects.order_by("id"))
    assert [e for _, e in chain_pairs()] == [e.pk for e in entries]
    return entries


def latest_migrations():
    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate(executor.loader.graph.leaf_nodes())


@pytest.fixture
def migrated(django_db_setup, django_db_blocker):
    """For modules that need the partitions (they use it autouse): audit's own migration test leaves audit at
    0005 when it ends (tests/audit/test_migration_content.py), for whatever runs after it in that process."""
    with django_db_blocker.unblock():
        latest_migrations()
