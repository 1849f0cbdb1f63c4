"""Billing-sync write paths: receive events (single and batch), process them into canonical documents
and journals, and react to approvals, retries and arriving dependencies.

Receipt is one short transaction: the receipt row, the event row (whose unique identity makes the
database the judge of duplicates: `INSERT ... ON CONFLICT DO NOTHING`) and the audit entry. Processing
runs after commit in a Celery task (`process_event`) under the event's row lock, so a duplicate
delivery, a second worker or a retry can never produce a second canonical change or journal.
"""
import hashlib
import json
import uuid
from dataclasses import dataclass, field
from decimal import Decimal

import structlog
from django.db import connection, transaction
from django.utils import timezone

from audit import services as audit
from billing_sync import callbacks, documents, ordering
from billing_sync.models import Customer, Event, Invoice, Payment, Receipt
from billing_sync.schemas import validate_event
from config import correlation
from config.errors import BusinessRuleError, Codes
from exceptions_queue import services as queue
from exceptions_queue.models import ExceptionRecord
from ledger.models import Entity, Journal

log = structlog.get_logger("tieout.billing_sync")

KEPT_HEADERS = ("Content-Type", "Idempotency-Key", "User-Agent", "X-Correlation-ID", "Content-Length")
MAX_BATCH = 1000


def canonical_bytes(payload) -> bytes:
    return json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def event_resource(*, event_id, source_system, external_id, type_, entity, status, correlation_id, received_at,
                   journal_ids=(), exception=None) -> dict:
    return {
        "id": str(event_id), "source_system": source_system, "event_id": external_id, "type": type_,
        "entity": entity, "status": status, "correlation_id": correlation_id,
        "received_at": received_at.isoformat().replace("+00:00", "Z"),
        "journal_ids": [str(j) for j in journal_ids], "exception": exception,
        "links": {"trace": f"/api/v1/events/{event_id}/trace"},
    }


def problem(status: int, code: str, title: str, detail: str, errors=None) -> dict:
    body = {"type": f"https://tieout.dev/problems/{code}", "title": title, "status": status, "detail": detail,
            "code": code}
    if errors is not None:
        body["errors"] = errors
    return body


@dataclass
class Answer:
    status: int
    body: dict
    replayed: bool = False
    headers: dict = field(default_factory=dict)
    raw: bytes | None = None  # exact bytes to send (first answers and replays are byte-identical)


def _dumps(body: dict) -> str:
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False)


def _kept_headers(headers) -> dict:
    return {name: headers[name] for name in KEPT_HEADERS if name in headers}


def _client_label(user) -> str:
    return user.get_username() if user is not None and user.is_authenticated else ""


def receipt_reject(*, body: bytes, endpoint: str, user, headers, remote_addr, status: int, outcome: str,
                   detail: dict | None = None) -> None:
    """Keep a body we refused (401/403/422/409 before any event row): nothing sent to us is lost."""
    with transaction.atomic():
        receipt = Receipt.objects.create(
            endpoint=endpoint, client=_client_label(user), remote_addr=remote_addr, headers=_kept_headers(headers),
            body=body, sha256=hashlib.sha256(body).hexdigest(), outcome=outcome, status_code=status,
            correlation_id=correlation.get() or "", detail=detail)
        audit.record(actor=user if user is not None and user.is_authenticated else "anonymous",
                     action=f"receipt.{outcome}", object_type="receipt", object_id=receipt.pk,
                     after={"endpoint": endpoint, "status": status, "sha256": receipt.sha256})


def _parse(body: bytes):
    try:
        return json.loads(body), None
    except (ValueError, UnicodeDecodeError) as exc:
        return None, [{"field": "non_field_errors", "message": f"Malformed JSON: {exc}"}]


_INSERT_SQL = """
WITH r AS (
    INSERT INTO billing_sync_receipt (received_at, endpoint, client, remote_addr, headers, body, sha256, outcome,
                                      status_code, correlation_id)
    VALUES (%(now)s, 'single', %(client)s, %(remote_addr)s, %(headers)s, %(body)s, %(sha)s, 'accepted', 202, %(cid)s)
    RETURNING id
), e AS (
    INSERT INTO billing_sync_event (id, source_system, event_id, type, entity_code, occurred_at, payload, payload_hash,
                                    idempotency_key, status, correlation_id, received_at, receipt_id, sent_by_id,
                                    response_body, attempts, order_keys)
    SELECT %(id)s, %(ss)s, %(eid)s, %(type)s, %(entity)s, %(occurred_at)s, %(payload)s, %(phash)s, %(ikey)s,
           'accepted', %(ecid)s, %(now)s, r.id, %(user_id)s, %(response)s, 0, %(keys)s::text[] FROM r
    ON CONFLICT DO NOTHING
    RETURNING id
)
SELECT r.id, e.id FROM r LEFT JOIN e ON true
"""


def _key_maps_to(existing: dict, idem_key: str | None, source_system: str) -> bool:
    """An Idempotency-Key, when sent, must name this event: its own key, or a key no other event holds."""
    if idem_key is None or existing["idempotency_key"] == idem_key:
        return True
    if existing["idempotency_key"] is not None:
        return False
    return not Event.objects.filter(source_system=source_system, idempotency_key=idem_key).exists()


def _outside_binding(payload: dict) -> dict:
    """The answer to a valid event its token may not send (`allowed` said no): before any replay lookup."""
    return problem(403, Codes.SOURCE_NOT_ALLOWED, "Not allowed for this token",
                   f"this token may not send events of source system {payload['source_system']!r} "
                   f"for entity {payload['entity']!r}")


def receive_event(*, body: bytes, user, headers, remote_addr=None, allowed=None) -> Answer:
    """Answer one delivery of one event: 202 new, 200 replay, 403 outside the token's binding (`allowed`,
    a predicate on the envelope), 409 conflict, 422 invalid."""
    payload, errors = _parse(body)
    if errors is None:
        errors = validate_event(payload)
    if errors:
        answer = Answer(422, problem(422, Codes.INVALID_EVENT, "The event breaks the schema",
                                     f"{len(errors)} field(s) are invalid", errors))
        receipt_reject(body=body, endpoint="single", user=user, headers=headers, remote_addr=remote_addr,
                       status=422, outcome=Receipt.Outcome.INVALID, detail={"errors": errors})
        return answer
    if allowed is not None and not allowed(payload):
        receipt_reject(body=body, endpoint="single", user=user, headers=headers, remote_addr=remote_addr, status=403,
                       outcome=Receipt.Outcome.FORBIDDEN, detail={"code": Codes.SOURCE_NOT_ALLOWED, **{
                           k: payload[k] for k in ("source_system", "event_id", "entity")}})
        return Answer(403, _outside_binding(payload))
    idem_key = headers.get("Idempotency-Key") or None
    canonical = canonical_bytes(payload)
    payload_hash = hashlib.sha256(canonical).hexdigest()
    now = timezone.now()
    new_id = uuid.uuid4()
    cid = payload.get("correlation_id") or correlation.get_or_new()
    response = event_resource(event_id=new_id, source_system=payload["source_system"], external_id=payload["event_id"],
                              type_=payload["type"], entity=payload["entity"], status=Event.Status.ACCEPTED,
                              correlation_id=cid, received_at=now)
    response_text = _dumps(response)
    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute(_INSERT_SQL, {
                "now": now, "client": _client_label(user), "remote_addr": remote_addr,
                "headers": json.dumps(_kept_headers(headers)), "body": body,
                "sha": hashlib.sha256(body).hexdigest(), "cid": correlation.get() or "", "id": new_id,
                "ss": payload["source_system"], "eid": payload["event_id"], "type": payload["type"],
                "entity": payload["entity"], "occurred_at": payload["occurred_at"], "payload": canonical.decode(),
                "phash": payload_hash, "ikey": idem_key, "ecid": cid, "user_id": user.pk if user else None,
                "response": response_text, "keys": ordering.order_keys(payload),
            })
            receipt_id, inserted = cursor.fetchone()
        if inserted:
            audit.record(actor=user, action="event.received", object_type="event", object_id=new_id,
                         event_id=new_id, correlation_id=cid,
                         after={"source_system": payload["source_system"], "event_id": payload["event_id"],
                                "type": payload["type"], "payload_sha256": payload_hash, "receipt": receipt_id})
            transaction.on_commit(lambda: schedule_processing([new_id]))
            return Answer(202, response, raw=response_text.encode())
        existing = (Event.objects.filter(source_system=payload["source_system"], event_id=payload["event_id"])
                    .values("id", "payload_hash", "response_body", "idempotency_key").first())
        if existing is not None and existing["payload_hash"] == payload_hash and (
                _key_maps_to(existing, idem_key, payload["source_system"])):
            Receipt.objects.filter(pk=receipt_id).update(outcome=Receipt.Outcome.REPLAYED, status_code=200)
            return Answer(200, {}, replayed=True, headers={"Idempotent-Replayed": "true"},
                          raw=existing["response_body"].encode())
        if existing is None:
            detail = f"Idempotency-Key {idem_key!r} was already used for another event"
        else:
            detail = (f"event {payload['source_system']}/{payload['event_id']} was already received with a "
                      "different payload")
        Receipt.objects.filter(pk=receipt_id).update(outcome=Receipt.Outcome.CONFLICT, status_code=409)
        audit.record(actor=user, action="receipt.conflict", object_type="receipt", object_id=receipt_id,
                     event_id=existing["id"] if existing else None, after={"detail": detail})
        return Answer(409, problem(409, Codes.IDEMPOTENCY_CONFLICT, "Idempotency conflict", detail))


# One JSON parameter unpacked by the server: binding 1,000 rows as text[] arrays costs ~30x more in
# client-side escaping than passing a single JSON document. Rows are inserted in identity order (see
# receive_batch) but numbered in the batch's order (`ix`): the batch's order is the acceptance order.
_BATCH_SQL = """
WITH s AS (
    SELECT array_agg(n ORDER BY n) AS seqs
    FROM (SELECT nextval('billing_sync_event_seq') AS n FROM generate_series(1, %(count)s)) AS g
)
INSERT INTO billing_sync_event (id, source_system, event_id, type, entity_code, occurred_at, payload, payload_hash,
                                idempotency_key, status, correlation_id, received_at, receipt_id, sent_by_id,
                                response_body, attempts, seq, order_keys)
SELECT u.id, u.ss, u.eid, u.type, u.entity, u.occurred_at, u.payload, u.phash, NULL, 'accepted', u.cid,
       %(now)s, %(receipt)s, %(user_id)s, u.response, 0, s.seqs[u.ix],
       ARRAY(SELECT jsonb_array_elements_text(u.keys))
FROM jsonb_to_recordset(%(rows)s::jsonb) AS u(id uuid, ss text, eid text, type text, entity text,
                                               occurred_at timestamptz, payload jsonb, phash text, cid text,
                                               response text, ix int, keys jsonb)
CROSS JOIN s
ON CONFLICT DO NOTHING
RETURNING id
"""


def receive_batch(*, body: bytes, user, headers, remote_addr=None, allowed=None) -> Answer:
    """Up to 1,000 events in one request and one transaction; one answer per event, in order (an event
    outside the token's binding, see `receive_event`, gets its own 403)."""
    document, errors = _parse(body)
    if errors is None:
        if not isinstance(document, dict) or not isinstance(document.get("events"), list):
            errors = [{"field": "events", "message": "Must be a list of events."}]
        elif not document["events"]:
            errors = [{"field": "events", "message": "Must not be empty."}]
        elif len(document["events"]) > MAX_BATCH:
            errors = [{"field": "events", "message": f"At most {MAX_BATCH} events per batch."}]
    if errors:
        receipt_reject(body=body, endpoint="batch", user=user, headers=headers, remote_addr=remote_addr,
                       status=422, outcome=Receipt.Outcome.INVALID, detail={"errors": errors})
        return Answer(422, problem(422, Codes.INVALID_EVENT, "The batch breaks the schema", "Invalid batch", errors))
    events = document["events"]
    now = timezone.now()
    request_cid = correlation.get_or_new()
    results: list[dict | None] = [None] * len(events)
    fresh: dict[tuple[str, str], dict] = {}  # identity -> first new row in this batch
    pending: list[tuple[int, dict, str]] = []  # (index, payload, hash) needing a look at existing rows
    invalid_count = 0
    refused: list[dict] = []
    for index, payload in enumerate(events):
        errs = validate_event(payload)
        if errs:
            invalid_count += 1
            errs = [{"field": f"events[{index}].{e['field']}", "message": e["message"]} for e in errs]
            results[index] = {"status": 422, "body": problem(422, Codes.INVALID_EVENT, "The event breaks the schema",
                                                             f"{len(errs)} field(s) are invalid", errs)}
            continue
        if allowed is not None and not allowed(payload):
            refused.append({"index": index, **{k: payload[k] for k in ("source_system", "event_id", "entity")}})
            results[index] = {"status": 403, "body": _outside_binding(payload)}
            continue
        canonical = canonical_bytes(payload)
        phash = hashlib.sha256(canonical).hexdigest()
        identity = (payload["source_system"], payload["event_id"])
        if identity in fresh:
            pending.append((index, payload, phash))
            continue
        new_id = uuid.uuid4()
        cid = payload.get("correlation_id") or request_cid
        response = event_resource(event_id=new_id, source_system=identity[0], external_id=identity[1],
                                  type_=payload["type"], entity=payload["entity"], status=Event.Status.ACCEPTED,
                                  correlation_id=cid, received_at=now)
        fresh[identity] = {"index": index, "id": new_id, "payload": payload, "canonical": canonical.decode(),
                           "hash": phash, "cid": cid, "response": response}
    # Inserted in one fixed order (by identity), whatever the batch's order: two batches that share events
    # in different orders would otherwise each hold a key the other waits for, and deadlock.
    # Numbered in the batch's order (1-based, for the SQL array), inserted in identity order.
    for ix, r in enumerate(sorted(fresh.values(), key=lambda r: r["index"]), start=1):
        r["ix"] = ix
    rows = sorted(fresh.values(), key=lambda r: (r["payload"]["source_system"], r["payload"]["event_id"]))
    with transaction.atomic():
        receipt = Receipt.objects.create(
            received_at=now, endpoint="batch", client=_client_label(user), remote_addr=remote_addr,
            headers=_kept_headers(headers), body=body, sha256=hashlib.sha256(body).hexdigest(),
            outcome=Receipt.Outcome.BATCH, status_code=200, correlation_id=request_cid,
            detail={"events": len(events), "invalid": invalid_count,
                    **({"forbidden": len(refused)} if refused else {})})
        if refused:
            audit.record(actor=user, action="receipt.forbidden", object_type="receipt", object_id=receipt.pk,
                         after={"endpoint": "batch", "status": 403, "code": Codes.SOURCE_NOT_ALLOWED,
                                "events": refused})
        inserted: set = set()
        if rows:
            with connection.cursor() as cursor:
                document = ",".join(
                    '{"id":"%s","ss":%s,"eid":%s,"type":%s,"entity":%s,"occurred_at":%s,"payload":%s,"phash":"%s",'
                    '"cid":%s,"response":%s,"ix":%d,"keys":%s}' % (
                        r["id"], json.dumps(r["payload"]["source_system"]), json.dumps(r["payload"]["event_id"]),
                        json.dumps(r["payload"]["type"]), json.dumps(r["payload"]["entity"]),
                        json.dumps(r["payload"]["occurred_at"]), r["canonical"], r["hash"], json.dumps(r["cid"]),
                        json.dumps(_dumps(r["response"])), r["ix"], json.dumps(ordering.order_keys(r["payload"])))
                    for r in rows)
                cursor.execute(_BATCH_SQL, {"now": now, "receipt": receipt.pk, "user_id": user.pk if user else None,
                                            "rows": f"[{document}]", "count": len(rows)})
                inserted = {row[0] for row in cursor.fetchall()}

        for r in rows:
            if r["id"] in inserted:
                results[r["index"]] = {"status": 202, "body": r["response"]}
            else:
                pending.append((r["index"], r["payload"], r["hash"]))
        if pending:
            identities = {(p["source_system"], p["event_id"]) for _, p, _ in pending}
            existing = {}
            for row in Event.objects.filter(source_system__in={i[0] for i in identities},
                                            event_id__in={i[1] for i in identities}).values(
                    "id", "source_system", "event_id", "payload_hash", "response_body"):
                existing[(row["source_system"], row["event_id"])] = row
            for index, payload, phash in pending:
                row = existing.get((payload["source_system"], payload["event_id"]))
                if row is not None and row["payload_hash"] == phash:
                    results[index] = {"status": 200, "headers": {"Idempotent-Replayed": "true"},
                                      "body": json.loads(row["response_body"])}
                else:
                    results[index] = {"status": 409, "body": problem(
                        409, Codes.IDEMPOTENCY_CONFLICT, "Idempotency conflict",
                        f"event {payload['source_system']}/{payload['event_id']} was already received with a "
                        "different payload")}
        if inserted:
            audit.record_many([
                {"actor": user, "action": "event.received", "object_type": "event", "object_id": r["id"],
                 "event_id": r["id"], "correlation_id": r["cid"],
                 "after": {"source_system": r["payload"]["source_system"], "event_id": r["payload"]["event_id"],
                           "type": r["payload"]["type"], "payload_sha256": r["hash"], "receipt": receipt.pk}}
                for r in rows if r["id"] in inserted])
            ids = [r["id"] for r in sorted(rows, key=lambda r: r["ix"]) if r["id"] in inserted]  # batch order
            transaction.on_commit(lambda: schedule_processing(ids))
    return Answer(200, {"results": results})


def schedule_processing(event_ids) -> None:
    """Hand accepted events to the workers (batched off the request path; the sweep covers any loss)."""
    from billing_sync import dispatch

    dispatch.schedule(event_ids)


def sweep_accepted(*, older_than_seconds: int = 30) -> int:
    """Events accepted but never processed (broker outage, crash after commit): schedule them again.

    Not those held behind an event parked in the queue: that one wakes them when it is done, and until
    then looking again would find them held again.
    """
    cutoff = timezone.now() - timezone.timedelta(seconds=older_than_seconds)
    ids = ordering.accepted_not_parked_behind(received_before=cutoff, limit=5000)
    if ids:
        schedule_processing(ids)
    return len(ids)


# --------------------------------------------------------------------------------------------- processing
# What an event's exception is about (the workflow's subject kind), by event type.
PROCESS_BY_TYPE = {
    "customer.upserted": ExceptionRecord.Process.CUSTOMER,
    "invoice.issued": ExceptionRecord.Process.INVOICE,
    "invoice.amended": ExceptionRecord.Process.INVOICE,
    "invoice.voided": ExceptionRecord.Process.INVOICE,
    "payment.received": ExceptionRecord.Process.PAYMENT,
    "payment.applied": ExceptionRecord.Process.PAYMENT,
    "payment.refunded": ExceptionRecord.Process.PAYMENT,
    "credit_note.issued": ExceptionRecord.Process.CREDIT,
    "write_off.requested": ExceptionRecord.Process.WRITE_OFF,
}
# The payload field naming the document an event is about, most specific first (a credit note names its
# invoice too; a payment names its customer).
SOURCE_REF_FIELDS = ("credit_note_id", "write_off_id", "refund_id", "payment_id", "invoice_id", "customer_id")


def source_ref_of(payload: dict) -> str:
    data = (payload or {}).get("data") or {}
    for name in SOURCE_REF_FIELDS:
        value = data.get(name)
        if isinstance(value, str) and value:
            return value[:200]
    return ""


def _amount_of(event) -> Decimal | None:
    data = event.payload.get("data", {})
    value = data.get("total") or data.get("amount")
    try:
        return Decimal(value) if isinstance(value, str) else None
    except ArithmeticError:
        return None


def process_event(*, event_id, actor="system") -> str:
    """Process one accepted event under its row lock; returns its new status. Safe to call twice.

    An event held behind an earlier one on the same documents (billing_sync/ordering.py) is left
    `accepted`, untouched: the event holding it wakes it when it is done.
    """
    with transaction.atomic():
        event = Event.objects.select_for_update().filter(pk=event_id).first()
        if event is None or event.status != Event.Status.ACCEPTED:
            return event.status if event else "missing"
        holder = ordering.held_by(event)
        if holder is not None:
            if event.held_by_id != holder:  # recorded once per holder, not at every look
                event.held_by_id = holder
                event.save(update_fields=["held_by"])
                audit.record(actor=actor, action="event.held", object_type="event", object_id=event.pk,
                             event_id=event.pk, after={"behind": str(holder)})
            return event.status
        seq, keys = event.seq, event.order_keys
        # Whatever the outcome, the events queued behind this one may go next.
        transaction.on_commit(lambda: wake_successors(seq=seq, keys=keys))
        with correlation.bound(event.correlation_id or None):
            event.attempts += 1
            try:
                with transaction.atomic():
                    outcome = documents.apply(event, actor=actor)
            except BusinessRuleError as exc:
                event.status = Event.Status.EXCEPTION
                event.processed_at = timezone.now()
                event.save(update_fields=["status", "processed_at", "attempts"])
                queue.exception_open_for_event(
                    event=event, process=PROCESS_BY_TYPE[event.type], code=exc.code, message=exc.detail,
                    dependency=exc.dependency, amount=_amount_of(event), source_ref=source_ref_of(event.payload),
                    actor=actor)
                audit.record(actor=actor, action="event.exception", object_type="event", object_id=event.pk,
                             event_id=event.pk, after={"status": "exception", "code": exc.code,
                                                       "message": exc.detail})
                callbacks.notify(event=event, kind=callbacks.EXCEPTION, actor=actor)
                if exc.dependency:
                    # The document may have committed while we processed (its wake-up found no waiting
                    # exception yet): look again once ours is committed, so nothing waits forever.
                    dependency, waiting_id = exc.dependency, event.pk
                    transaction.on_commit(lambda: recheck_dependency(event_id=waiting_id, dependency=dependency))
                return event.status
            event.status = outcome.status
            event.processed_at = timezone.now()
            event.save(update_fields=["status", "processed_at", "attempts"])
            audit.record(actor=actor, action="event.processed", object_type="event", object_id=event.pk,
                         event_id=event.pk, before={"status": "accepted"},
                         after={"status": event.status, "journals": [str(j.pk) for j in outcome.journals],
                                "changes": outcome.changes})
            if event.attempts > 1:  # only a retried event can have an exception to close
                queue.exceptions_resolve_for_event(event=event, resolution="Processed successfully on retry.",
                                                   actor=actor)
            if outcome.provides:
                # In this transaction, not after it: the events that waited for these documents are
                # `accepted` again the moment they exist, so nothing accepted after them can pass them.
                wake_dependents(outcome.provides)
    return event.status


def wake_successors(*, seq: int, keys: list[str]) -> int:
    """After an event was processed, parked or resolved: schedule the events queued behind it."""
    ids = ordering.successors_of(seq=seq, keys=keys)
    if ids:
        schedule_processing(ids)
    return len(ids)


def wake_dependents(keys: list[str]) -> int:
    """Documents arrived: send the events that waited for them back through processing."""
    event_ids = queue.events_waiting_for(keys)
    for event_id in event_ids:
        event_requeue(event_id=event_id, actor="system", reason="dependency arrived")
    return len(event_ids)


def dependency_exists(dependency: str) -> bool:
    kind, _, rest = dependency.partition(":")
    if kind == "entity":
        return Entity.objects.filter(code=rest).exists()
    source_system, _, document_id = rest.partition(":")
    model, field_name = {"customer": (Customer, "customer_id"), "invoice": (Invoice, "invoice_id"),
                         "payment": (Payment, "payment_id")}.get(kind, (None, None))
    if model is None:
        return False
    return model.objects.filter(source_system=source_system, **{field_name: document_id}).exists()


def recheck_dependency(*, event_id, dependency: str) -> bool:
    if dependency_exists(dependency):
        return event_requeue(event_id=event_id, actor="system", reason=f"{dependency} arrived")
    return False


def event_requeue(*, event_id, actor, reason: str) -> bool:
    """An event in `exception` goes back to `accepted` and is scheduled for processing again."""
    with transaction.atomic():
        event = Event.objects.select_for_update().get(pk=event_id)
        if event.status != Event.Status.EXCEPTION:
            return False
        event.status = Event.Status.ACCEPTED
        event.save(update_fields=["status"])
        audit.record(actor=actor, action="event.requeued", object_type="event", object_id=event.pk, event_id=event.pk,
                     before={"status": "exception"}, after={"status": "accepted", "reason": reason})
        transaction.on_commit(lambda: schedule_processing([event.pk]))
    return True


def event_reprocess(*, event_id, actor) -> str:
    """Retry from the exception queue: reprocess now, in the caller's transaction, and report the outcome."""
    event = Event.objects.select_for_update().get(pk=event_id)
    if event.status != Event.Status.EXCEPTION:
        return event.status
    event.status = Event.Status.ACCEPTED
    event.save(update_fields=["status"])
    audit.record(actor=actor, action="event.retry", object_type="event", object_id=event.pk, event_id=event.pk,
                 before={"status": "exception"}, after={"status": "accepted"})
    return process_event(event_id=event_id, actor=actor)


def _derived_status(current: str, journal_statuses: list[str], has_open_exception: bool) -> str:
    """An event's status from its journals and whether an exception is open (API.md's meanings)."""
    live = [s for s in journal_statuses if s != Journal.Status.REJECTED]
    if has_open_exception:
        return Event.Status.EXCEPTION
    if current == Event.Status.EXCEPTION and not journal_statuses:
        return Event.Status.IGNORED  # resolved by a person without processing: nothing was booked
    if journal_statuses and not live:
        return Event.Status.REJECTED
    if Journal.Status.PENDING_APPROVAL in live:
        return Event.Status.PENDING_APPROVAL
    if live and all(s == Journal.Status.POSTED for s in live):
        return Event.Status.POSTED
    return Event.Status.PROCESSED


def event_refresh_status(*, event_id, actor="system") -> str:
    """Derive an event's status from its journals and open exception after a journal changed."""
    return events_refresh_status(event_ids=[event_id], actor=actor).get(event_id, "missing")


def events_refresh_status(*, event_ids, actor="system") -> dict:
    """The same for many events at once (a batch document acknowledged): a few queries, not a few per event."""
    events = list(Event.objects.select_for_update().filter(pk__in=event_ids).order_by("pk"))
    ids = [e.pk for e in events if e.status not in (Event.Status.ACCEPTED, Event.Status.IGNORED)]
    journal_statuses: dict = {}
    for event_id, status in Journal.objects.filter(event_id__in=ids).values_list("event_id", "status"):
        journal_statuses.setdefault(event_id, []).append(status)
    open_exceptions = set(ExceptionRecord.objects.filter(event_id__in=ids).exclude(
        status=ExceptionRecord.Status.RESOLVED).values_list("event_id", flat=True))
    result, changed = {}, []
    for event in events:
        if event.pk not in ids:
            result[event.pk] = event.status
            continue
        new = _derived_status(event.status, journal_statuses.get(event.pk, []), event.pk in open_exceptions)
        result[event.pk] = new
        if new != event.status:
            changed.append((event, event.status, new))
    for new in {n for _, _, n in changed}:
        Event.objects.filter(pk__in=[e.pk for e, _, n in changed if n == new]).update(status=new)
    for event, before, _ in changed:
        if before == Event.Status.EXCEPTION:  # resolved or re-derived: it no longer holds its documents
            seq, keys = event.seq, event.order_keys
            transaction.on_commit(lambda seq=seq, keys=keys: wake_successors(seq=seq, keys=keys))
    if changed:
        audit.record_many([{"actor": actor, "action": "event.status_changed", "object_type": "event",
                            "object_id": event.pk, "event_id": event.pk, "before": {"status": before},
                            "after": {"status": new}} for event, before, new in changed])
    for event, _, new in changed:
        event.status = new
        callbacks.notify(event=event, kind=callbacks.KIND_FOR_STATUS.get(new), actor=actor)  # posted, exception
    return result
