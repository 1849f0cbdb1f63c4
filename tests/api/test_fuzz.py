"""Schema-driven fuzzing of the whole v1 API with Schemathesis, in process, on the real test database.

The OpenAPI schema that the app serves (/api/v1/schema) is loaded through the WSGI application, and every
operation is called with generated requests (Schemathesis' examples, coverage and fuzzing phases) as a
source system (integration token) and as a controller. Each answer must pass four checks: no 5xx, a
status the schema documents for that operation, a body that matches the documented schema, and the
documented media type (problem+json for every error).

Half of the generated requests have their path (and entity) parameters replaced by real objects made by
`world` (an event, a journal, an invoice, an approval, an exception, an open period), so that the success
answers are checked against the schema too, not only the 404s of random ids.

Bounded: five examples per operation and role (about 50 s in all on 2 cores); marked slow.
"""
import pytest
import schemathesis
from django.core.signals import request_finished, request_started
from django.core.wsgi import get_wsgi_application
from django.db import close_old_connections
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance, response_schema_conformance, status_code_conformance,
)

from billing_sync.models import Event
from exceptions_queue.models import Approval, ExceptionRecord
from ledger.models import Journal
from tests import factories as f

pytestmark = [pytest.mark.django_db, pytest.mark.slow]

# Loaded when the module is collected (pytest-django has set Django up by then); generating the schema
# touches no database.
schema = schemathesis.openapi.from_wsgi("/api/v1/schema?format=json", get_wsgi_application())

CHECKS = [not_a_server_error, status_code_conformance, response_schema_conformance, content_type_conformance]
BUDGET = settings(max_examples=5, deadline=None, database=None, derandomize=True,
                  suppress_health_check=list(HealthCheck))


@pytest.fixture
def in_process_requests(world):
    """Keep the test's database connection across in-process requests.

    Django closes the connection when a request finishes (close_old_connections); inside the test's
    transaction that would lose it. Django's test client disconnects the same two signals around each of
    its requests and connects them again after, hence after `world`, which is made through it.
    """
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    yield
    request_started.connect(close_old_connections)
    request_finished.connect(close_old_connections)


@pytest.fixture
def world(entity, integration):
    """Real objects for the path parameters: what each placeholder of the schema's paths should name."""
    customer = f.customer()
    integration.send(customer)
    invoice = f.invoice(customer_id=customer["data"]["customer_id"], lines=[("100.00", "0")])
    invoice_event = integration.send(invoice).json()["id"]
    invoice_id = invoice["data"]["invoice_id"]
    integration.send(f.write_off(invoice_id, "10.00"))  # waits for a controller: an approval
    integration.send(f.invoice(customer_id="nobody"))  # unknown customer: an exception
    journal = Journal.objects.filter(event_id=invoice_event).first() or Journal.objects.first()
    return {
        "id": {"/events/": str(Event.objects.get(pk=invoice_event).pk), "/journals/": str(journal.pk),
               "/approvals/": str(Approval.objects.get().pk), "/exceptions/": str(ExceptionRecord.objects.get().pk)},
        "source_system": f.SOURCE, "invoice_id": invoice_id, "entity": "US01", "period": "2026-11",
    }


def seed(case, world) -> None:
    """Point the case's path (and entity query) parameters at the objects of `world`."""
    for name in list(case.path_parameters):
        if name == "id":
            prefix = next((p for p in world["id"] if case.operation.path.startswith(f"/api/v1{p}")), None)
            if prefix:
                case.path_parameters[name] = world["id"][prefix]
        elif name in world:
            case.path_parameters[name] = world[name]
    if isinstance(case.query, dict) and "entity" in case.query:
        case.query["entity"] = world["entity"]


def call(case, seeded, world, api):
    if seeded:
        seed(case, world)
    case.call_and_validate(headers={"Authorization": f"Bearer {api.token}"}, checks=CHECKS)


@schema.parametrize()
@schema.given(seeded=st.booleans())
@BUDGET
def test_fuzz_as_a_source_system(case, seeded, world, integration, in_process_requests):
    call(case, seeded, world, integration)


@schema.parametrize()
@schema.given(seeded=st.booleans())
@BUDGET
def test_fuzz_as_a_controller(case, seeded, world, controller, in_process_requests):
    call(case, seeded, world, controller)
