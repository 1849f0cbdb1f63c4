"""Operations endpoints: health probes, readiness, Prometheus metrics, the OpenAPI schema, throttling."""
import pytest
import redis

from config.api import TokenRateThrottle
from tests import factories as f

pytestmark = pytest.mark.django_db


def test_healthz_answers_and_carries_a_correlation_id(client):
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}
    assert response["X-Correlation-ID"]


def test_readyz_checks_database_and_broker(client):
    response = client.get("/readyz")
    assert response.status_code == 200
    assert response.json()["checks"] == {"database": "ok", "broker": "ok"}


def test_readyz_is_503_when_the_broker_is_unreachable(client, settings):
    settings.CELERY_BROKER_URL = "redis://127.0.0.1:1/0"
    response = client.get("/readyz")
    assert response.status_code == 503
    assert response.json()["checks"]["broker"].startswith("error")


def test_metrics_expose_event_and_exception_figures(client, entity, integration):
    integration.send(f.invoice(customer_id="nobody"))
    body = client.get("/metrics").content.decode()
    assert 'tieout_events{status="exception"} 1.0' in body
    assert 'tieout_open_exceptions{code="unknown_customer"} 1.0' in body
    assert "tieout_oldest_unposted_seconds" in body


def test_openapi_schema_lists_the_contract_paths(client):
    response = client.get("/api/v1/schema", HTTP_ACCEPT="application/json")
    assert response.status_code == 200
    paths = response.json()["paths"]
    for path in ["/api/v1/events", "/api/v1/events/batch", "/api/v1/events/{id}/trace", "/api/v1/approvals",
                 "/api/v1/approvals/{id}/approve", "/api/v1/exceptions/{id}/retry", "/api/v1/ledger/trial-balance",
                 "/api/v1/journals", "/api/v1/invoices/{source_system}/{invoice_id}"]:
        assert any(p.replace("{pk}", "{id}") == path for p in paths), path
    assert client.get("/api/v1/docs").status_code == 200


def test_throttling_is_per_token(entity, integration):
    original = TokenRateThrottle.THROTTLE_RATES
    TokenRateThrottle.THROTTLE_RATES = {"token": "3/min"}
    try:
        statuses = [integration.get("/api/v1/events").status_code for _ in range(4)]
    finally:
        TokenRateThrottle.THROTTLE_RATES = original
    assert statuses == [200, 200, 200, 429]


def test_throttling_fails_open_when_redis_is_down(entity, integration, monkeypatch):
    monkeypatch.setattr(TokenRateThrottle, "_client", redis.Redis(port=1, socket_connect_timeout=0.2))
    response = integration.send(f.customer())
    assert response.status_code == 202
