"""The outbox relay after commit: a relay that fails leaves its rows to the sweep and does not stop the callbacks
registered after it (the wake-ups of events queued behind), one journal at a time or a chunk's together."""
import pytest
from django.db import transaction

from ledger import services as ledger
from ledger.models import Journal, Outbox
from ledger.services import outbox
from tests import factories as f

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def journal(entity, integration, monkeypatch):
    with monkeypatch.context() as held:
        held.setattr(outbox, "outbox_relay", lambda ids: None)
        customer = f.customer()
        integration.send(customer)
        integration.send(f.invoice(customer_id=customer["data"]["customer_id"]))
    return Journal.objects.get(kind="invoice")


@pytest.mark.parametrize("batched", [False, True])
def test_a_failing_relay_leaves_its_rows_to_the_sweep_and_the_next_callbacks_run(journal, monkeypatch, batched):
    def broken(ids):
        raise ConnectionError("broker down")

    monkeypatch.setattr(outbox, "outbox_relay", broken)
    after = []
    with transaction.atomic():
        if batched:
            with ledger.outbox_relay_batched():
                ledger._enqueue(journal)
                ledger._enqueue(journal)
        else:
            ledger._enqueue(journal)
        transaction.on_commit(lambda: after.append("woken"))

    assert after == ["woken"]
    assert Outbox.objects.filter(journal=journal, dispatched_at__isnull=True).count() == (3 if batched else 2)
