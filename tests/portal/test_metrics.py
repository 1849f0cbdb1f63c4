"""/metrics: the dashboard's figures as Prometheus gauges, parsed with prometheus_client's own parser."""
import datetime

import pytest
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families

from ledger.models import Journal, Period
from tests import factories as f
from tests.close_helpers import reconciled

pytestmark = pytest.mark.django_db


def _scrape(client) -> dict:
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(response.content.decode()):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def _value(samples, name, **labels):
    return samples.get((name, tuple(sorted(labels.items()))))


def test_metrics_of_a_known_data_set(client, entity, integration):
    customer = f.customer()
    integration.send(customer)
    invoice = f.invoice(customer_id=customer["data"]["customer_id"], lines=[("2000.00", "0")])
    integration.send(invoice)
    integration.send(f.invoice(customer_id="cus_nobody"))
    integration.send(f.invoice(customer_id="cus_nobody_either"))
    integration.send(f.credit_note(invoice["data"]["invoice_id"], "1500.00"))

    samples = _scrape(client)
    assert _value(samples, "tieout_events", status="exception") == 2
    assert _value(samples, "tieout_events", status="posted") == 1
    assert _value(samples, "tieout_journals", status="posted") == 1
    assert _value(samples, "tieout_open_exceptions", code="unknown_customer") == 2
    assert _value(samples, "tieout_open_exceptions_by_age", code="unknown_customer", age="<1h") == 2
    assert _value(samples, "tieout_open_exceptions_by_age", code="unknown_customer", age="1-7d") == 0
    assert _value(samples, "tieout_open_exceptions_age", age="<1h") == 2
    assert _value(samples, "tieout_open_exceptions_age", age=">7d") == 0
    assert _value(samples, "tieout_open_exception_retries") == 0
    assert _value(samples, "tieout_journals_retried") == 0
    assert _value(samples, "tieout_erp_attempts_failed_24h") == 0
    assert _value(samples, "tieout_events_received_last_hour") == 5
    assert _value(samples, "tieout_journals_posted_last_hour") == 1
    assert _value(samples, "tieout_posting_latency_journals", window="1h") == 1
    assert _value(samples, "tieout_posting_latency_journals", window="24h") == 1
    p50 = _value(samples, "tieout_posting_latency_seconds", window="24h", quantile="0.5")
    p95 = _value(samples, "tieout_posting_latency_seconds", window="1h", quantile="0.95")
    assert p50 is not None and 0 <= p50 < 60 and p95 is not None and p95 >= 0
    assert _value(samples, "tieout_unposted_journals", status="pending_approval") == 1
    assert _value(samples, "tieout_unposted_journals", status="failed") == 0
    assert _value(samples, "tieout_pending_approvals") == 1
    waiting = Journal.objects.get(status="pending_approval")
    assert _value(samples, "tieout_oldest_unposted_seconds") >= 0
    assert waiting.kind == "credit_note"
    assert _value(samples, "tieout_outbox_pending") is not None


def test_metrics_of_an_empty_database_have_no_quantiles_but_every_gauge(client, db):
    samples = _scrape(client)
    names = {name for name, _labels in samples}
    assert {"tieout_open_exception_retries", "tieout_journals_retried", "tieout_erp_attempts_failed_24h",
            "tieout_events_received_last_hour", "tieout_journals_posted_last_hour",
            "tieout_oldest_unposted_seconds", "tieout_pending_approvals", "tieout_outbox_pending"} <= names
    assert _value(samples, "tieout_oldest_unposted_seconds") == 0
    assert not [k for k in samples if k[0] == "tieout_posting_latency_seconds"]  # no posted journal, no quantile
    assert _value(samples, "tieout_posting_latency_journals", window="24h") == 0


def test_open_breaks_and_the_close_cycle_time(client, entity):
    now = timezone.now()
    year, month = (now.year, now.month - 1) if now.month > 1 else (now.year - 1, 12)
    reconciled(entity, year, month, breaks=({"code": "missing_in_erp"}, {"code": "missing_in_erp"},
                                            {"code": "erp_date_mismatch"}))
    month_end = datetime.datetime(now.year, now.month, 1, tzinfo=datetime.UTC)
    Period.objects.create(entity=entity, year=year, month=month, status="closed",
                          closed_at=month_end + datetime.timedelta(hours=30))
    samples = _scrape(client)
    assert _value(samples, "tieout_reconciliation_open_breaks", code="missing_in_erp") == 2
    assert _value(samples, "tieout_reconciliation_open_breaks", code="erp_date_mismatch") == 1
    assert _value(samples, "tieout_close_cycle_seconds", quantile="0.5") == 30 * 3600
