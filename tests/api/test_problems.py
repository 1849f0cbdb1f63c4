"""Every error answer under /api/ is an RFC 9457 problem document, and the schema lists each one.

The specific findings of the schema-driven fuzzing (tests/api/test_fuzz.py), pinned as plain tests:
OPTIONS on the receive endpoints (was 500), malformed or unknown ids and paths (was Django's HTML 404),
wrong methods, media types and sizes, an unhandled exception.
"""
import json

import pytest

from billing_sync.views import events as views
from billing_sync.models import Receipt
from tests import factories as f

pytestmark = pytest.mark.django_db

PROBLEM = "application/problem+json"


def assert_problem(response, status: int, code: str):
    assert response.status_code == status, response.content[:300]
    assert response["Content-Type"] == PROBLEM
    body = response.json()
    assert body["status"] == status and body["code"] == code
    assert body["type"] == f"https://tieout.dev/problems/{code}"
    assert body["title"] and body["detail"]
    assert response["X-Correlation-ID"]
    return body


@pytest.mark.parametrize("path", ["/api/v1/events", "/api/v1/events/batch", "/api/v1/journals",
                                  "/api/v1/approvals", "/api/v1/exceptions"])
def test_options_answers_200_with_the_allowed_methods(integration, controller, path):
    api = integration if path.startswith("/api/v1/events") else controller
    response = api.client.options(path)
    assert response.status_code == 200
    assert "POST" in response["Allow"] or "GET" in response["Allow"]
    body = response.json()
    assert body["renders"] == ["application/json"]
    assert "actions" not in body  # no serializer introspection (it was the 500)


def test_options_needs_a_token_like_everything_else(client):
    assert_problem(client.options("/api/v1/events"), 401, "not_authenticated")


@pytest.mark.parametrize("path", ["/api/v1/events/null,null", "/api/v1/events/null,null/trace",
                                  "/api/v1/journals/not-a-uuid", "/api/v1/approvals/0/approve",
                                  "/api/v1/exceptions/%00/retry"])
def test_a_malformed_id_is_a_404_problem(controller, integration, path):
    api = integration if path.startswith("/api/v1/events") else controller
    response = api.client.post(path) if path.endswith(("approve", "retry")) else api.client.get(path)
    assert_problem(response, 404, "not_found")


@pytest.mark.parametrize("method", ["get", "post", "delete"])
def test_an_unknown_path_under_api_is_a_404_problem(controller, method):
    assert_problem(getattr(controller.client, method)("/api/v1/nope"), 404, "not_found")
    assert_problem(getattr(controller.client, method)("/api/v2/events"), 404, "not_found")


def test_an_unknown_path_elsewhere_keeps_the_html_page(client):
    response = client.get("/no-such-page")
    assert response.status_code == 404
    assert response["Content-Type"].startswith("text/html")


def test_an_unknown_path_is_404_even_without_a_token(client):
    assert_problem(client.get("/api/v1/nope"), 404, "not_found")


def test_a_method_the_endpoint_lacks_is_a_405_problem_with_allow(controller, integration):
    response = controller.client.delete("/api/v1/journals")
    assert_problem(response, 405, "method_not_allowed")
    assert response["Allow"] == "GET, HEAD, OPTIONS"
    response = integration.client.put("/api/v1/events", data="{}", content_type="application/json")
    assert_problem(response, 405, "method_not_allowed")


def test_a_body_that_is_not_json_is_a_415_problem(controller):
    response = controller.client.post("/api/v1/journals/manual", data="entity=US01", content_type="text/plain")
    assert_problem(response, 415, "unsupported_media_type")
    response = controller.client.post("/api/v1/approvals/00000000-0000-0000-0000-000000000000/approve",
                                      data="<comment/>", content_type="application/xml")
    assert_problem(response, 415, "unsupported_media_type")


def test_a_body_over_the_limit_is_a_413_problem(entity, integration, controller, settings):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 2048
    big = f.customer()
    big["data"]["name"] = "x" * 4000
    # The receive endpoints read the body themselves (request.body and Django's limit) ...
    assert_problem(integration.send(big), 413, "payload_too_large")
    assert_problem(integration.post("/api/v1/events/batch", {"events": [big]}), 413, "payload_too_large")
    # ... the JSON endpoints through DRF's parser, which now applies the same limit.
    body = {"entity": "US01", "accounting_date": "2026-01-31", "description": "x" * 4000,
            "lines": [{"account": "1000", "debit": "1.00"}, {"account": "4000", "credit": "1.00"}]}
    assert_problem(controller.post("/api/v1/journals/manual", body), 413, "payload_too_large")
    # Under the limit, the same endpoints answer as before.
    assert integration.send(f.customer()).status_code == 202


def test_an_oversized_body_without_a_token_is_still_a_401_with_a_receipt(client, settings):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 100
    response = client.post("/api/v1/events", data=json.dumps({"pad": "x" * 500}), content_type="application/json")
    assert_problem(response, 401, "not_authenticated")
    receipt = Receipt.objects.get(outcome="unauthorized")
    assert receipt.status_code == 401 and bytes(receipt.body) == b""


def test_an_unhandled_exception_is_a_500_problem_without_internals(integration, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("secret internals")

    monkeypatch.setattr(views.selectors, "events_visible_to", broken)
    integration.client.raise_request_exception = False
    response = integration.client.get("/api/v1/events")
    body = assert_problem(response, 500, "server_error")
    assert "secret" not in response.content.decode() and body["detail"] == "Internal server error"


def test_throttled_and_validation_problems_keep_their_codes(entity, controller):
    response = controller.client.get("/api/v1/ledger/trial-balance")
    body = assert_problem(response, 400, "invalid_request")
    assert body["errors"] == [{"field": "entity", "message": "This field is required."}]


def _schema(api):
    response = api.client.get("/api/v1/schema", HTTP_ACCEPT="application/json")
    assert response.status_code == 200
    return response.json()


def test_the_schema_has_a_problem_component(controller):
    problem = _schema(controller)["components"]["schemas"]["Problem"]
    assert set(problem["required"]) == {"type", "title", "status", "detail", "code"}
    assert problem["properties"]["errors"]["items"]["required"] == ["field", "message"]


def test_every_operation_lists_its_error_answers_as_problems(controller):
    schema = _schema(controller)
    operations = [(path, method, op) for path, item in schema["paths"].items()
                  for method, op in item.items() if method in {"get", "post"}]
    assert len(operations) >= 30
    ref = {"$ref": "#/components/schemas/Problem"}
    for path, method, op in operations:
        responses = op["responses"]
        expected = {"401", "403", "404", "429"}
        if method == "post":
            expected |= {"400", "409", "413", "415", "422"}
        assert expected <= set(responses), (method, path, sorted(responses))
        for status, response in responses.items():
            if int(status) >= 400:
                assert response["content"] == {PROBLEM: {"schema": ref}}, (method, path, status)
                assert response["description"]
    # The descriptions that views wrote themselves are kept, with the problem body added.
    post = schema["paths"]["/api/v1/events"]["post"]["responses"]
    assert post["409"]["description"] == "idempotency_conflict"
    assert set(post) >= {"200", "202"}
