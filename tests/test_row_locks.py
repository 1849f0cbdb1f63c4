"""Row locks take only the rows they are about. `select_for_update()` joined to other tables by
`select_related` locks the joined rows too (PostgreSQL's `FOR UPDATE` covers every table in the FROM list),
so a worker processing one invoice would hold its entity's row (and its customer's) until its whole chunk
commits, and every other worker posting or processing for that entity would queue behind it: a 2-process
drain ran at the speed of one. Every such lock names its own table (`of=("self",)`).

Checked two ways: in the code (every `select_for_update` chained with `select_related` says `of=`), and in
the database (while a transaction holds an invoice the way processing does, another session can lock the
invoice's entity and customer rows at once, but not the invoice's).
"""
import ast
from pathlib import Path

import psycopg
import pytest
from django.db import connection, transaction

from billing_sync import documents
from billing_sync.models import Invoice
from tests import factories as f

BASE_DIR = Path(__file__).resolve().parent.parent
APPS = ("config", "audit", "ledger", "exceptions_queue", "billing_sync", "portal")


def _locks_joined_rows(node: ast.Call) -> bool:
    """A `.select_related(...)` call on a chain that holds a `select_for_update()` without `of=`, or a
    `select_for_update()` without `of=` on a chain that holds a `select_related`."""
    names, chain = [], node
    while isinstance(chain, ast.Call) and isinstance(chain.func, ast.Attribute):
        names.append(chain)
        chain = chain.func.value
    locks = [c for c in names if c.func.attr == "select_for_update"]
    related = [c for c in names if c.func.attr == "select_related"]
    return bool(related) and any(not any(k.arg == "of" for k in lock.keywords) for lock in locks)


def _offenders(root: Path) -> list[str]:
    found = set()
    for app in APPS:
        for path in sorted((root / app).rglob("*.py")):
            if "migrations" in path.parts:
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Call) and _locks_joined_rows(node):
                    found.add(f"{path.relative_to(root)}:{node.lineno}")
    return sorted(found)


def test_no_row_lock_takes_the_rows_it_joins():
    assert _offenders(BASE_DIR) == []


def test_the_check_finds_a_lock_that_joins(tmp_path):
    module = tmp_path / "ledger" / "example.py"
    module.parent.mkdir()
    module.write_text('"""Example."""\n'
                      "def f(Journal, pk):\n"
                      "    return Journal.objects.select_for_update().select_related('entity').get(pk=pk)\n"
                      "def g(Journal, pk):\n"
                      "    return Journal.objects.select_related('entity').select_for_update().get(pk=pk)\n"
                      "def h(Journal, pk):\n"
                      "    return Journal.objects.select_for_update(of=('self',)).select_related('entity').get(pk=pk)\n")
    assert _offenders(tmp_path) == ["ledger/example.py:3", "ledger/example.py:5"]


def _nowait(conn, sql: str, params) -> bool:
    """Whether another session gets the row lock at once (and gives it back)."""
    try:
        with conn.transaction():
            conn.execute(sql, params).fetchall()
        return True
    except psycopg.errors.LockNotAvailable:
        return False


@pytest.mark.django_db(transaction=True)
def test_processing_an_invoice_leaves_its_entity_and_customer_free(entity, integration):
    customer = f.customer()
    integration.send(customer)
    payload = f.invoice(customer_id=customer["data"]["customer_id"])
    assert integration.send(payload).status_code == 202
    invoice = Invoice.objects.get(invoice_id=payload["data"]["invoice_id"])
    other = psycopg.connect(**connection.get_connection_params(), autocommit=True)
    try:
        with transaction.atomic():
            documents._invoice_locked(payload["source_system"], payload["data"]["invoice_id"], entity)
            assert _nowait(other, "SELECT 1 FROM ledger_entity WHERE id = %s FOR UPDATE NOWAIT", [entity.pk])
            assert _nowait(other, "SELECT 1 FROM billing_sync_customer WHERE id = %s FOR UPDATE NOWAIT",
                           [invoice.customer_id])
            # The invoice itself is held: the check bites.
            assert not _nowait(other, "SELECT 1 FROM billing_sync_invoice WHERE id = %s FOR UPDATE NOWAIT",
                               [invoice.pk])
    finally:
        other.close()
