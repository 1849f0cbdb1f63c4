"""Where the trace search leads (`portal.selectors.trace.locate`): the kind of thing found and what names it,
inside the reader's entities only. The pages' redirects are tested in tests/web/test_trace_pages.py."""
import uuid

import pytest
from django.contrib.auth import get_user_model
from django.db import transaction

from config import correlation
from exceptions_queue import selectors as queue_selectors
from ledger import selectors as ledger_selectors
from ledger import services as ledger
from portal.selectors.trace import Target, locate
from tests import factories as f

pytestmark = pytest.mark.django_db


def _user(username: str):
    return get_user_model().objects.get(username=username)  # fresh: config.roles caches the scope per object


@pytest.fixture
def book(entity, integration, finance):
    with correlation.bound(None), transaction.atomic():
        ledger.entity_setup(code="GB01", currency="GBP", name="Tieout UK", actor="test")
    integration.send(f.customer("cus_loc"))
    issued = f.invoice("inv_loc", customer_id="cus_loc")
    event_pk = integration.send(issued).json()["id"]
    over = integration.send(f.payment("pay_loc", customer_id="cus_loc", amount="999.00",
                                      allocations=[("inv_loc", "999.00")])).json()["id"]
    return {"event": uuid.UUID(event_pk), "event_id": issued["event_id"],
            "journal": ledger_selectors.journals().get(event_id=event_pk),
            "exception": queue_selectors.exceptions().get(event_id=over)}


def test_each_kind_of_reference_is_located(book):
    fiona = _user("fiona-ops")
    journal, exc = book["journal"], book["exception"]
    assert locate(fiona, str(book["event"]), "") == Target("event", (book["event"],))
    assert locate(fiona, str(journal.pk), "US01") == Target("journal", (journal.pk,))
    assert locate(fiona, str(exc.pk), "") == Target("exception", (exc.pk,))
    assert locate(fiona, journal.erp_document_ref, "") == Target("erp", ("US01", journal.erp_document_ref))
    assert locate(fiona, "inv_loc", "") == Target("invoice", (f.SOURCE, "inv_loc"))
    assert locate(fiona, book["event_id"], "") == Target("event", (book["event"],))  # the source's event id
    assert locate(fiona, "no-such-thing", "") is None


def test_nothing_is_located_outside_the_readers_entities(book):
    journal = book["journal"]
    assert locate(_user("fiona-ops"), str(journal.pk), "GB01") is None  # narrowed to an entity without it
    assert locate(_user("fiona-ops"), "inv_loc", "GB01") is None
    with correlation.bound(None):
        ledger.entity_access_set(user=_user("fiona-ops"), entity_codes=["GB01"], actor="test")
    fiona = _user("fiona-ops")
    for query in (str(book["event"]), str(journal.pk), str(book["exception"].pk), journal.erp_document_ref,
                  "inv_loc", book["event_id"]):
        assert locate(fiona, query, "") is None, query
