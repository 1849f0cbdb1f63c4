"""Receiving events: a new event is one statement that commits by itself (one round trip: its receipt with the
raw bytes and their SHA-256, the event, its audit entry), a batch one statement for all its new events; the
database judges duplicates (`INSERT ... ON CONFLICT DO NOTHING` on the event's unique identity), and a
delivery that meets an existing event is answered by a short transaction that keeps its receipt too (as is
what is refused: a receipt, always). Accepted events are handed to processing after commit.
"""
import hashlib
import json
import uuid
from dataclasses import dataclass, field

import psycopg
import structlog
from django.db import OperationalError, connection, transaction
from django.utils import timezone

from audit import services as audit
from billing_sync import ordering
from billing_sync.models import Event, Receipt
from billing_sync.schemas import validate_event
from billing_sync.services import processing
from config import correlation
from config.errors import Codes

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


class _PreparedCursor(psycopg.Cursor):
    """Server-side binding, prepared once per connection: the lean statement is parsed and planned once."""

    def execute(self, query, params=None, *, prepare=None, binary=None):
        return super().execute(query, params, prepare=True, binary=binary)


def _bound_cursor(cursor_class=psycopg.Cursor):
    """A cursor that sends the parameters apart from the statement, whatever the database settings say
    (`server_side_binding` is on by default, config/settings/base.py; a deployment may turn it off): a batch's
    megabyte of JSON and raw bytes is neither quoted here nor scanned by the server's parser. Wrapped as Django
    wraps its own, so query logging and `CaptureQueriesContext` still see it."""
    connection.close_if_health_check_failed()  # as Django's own `cursor()` does first
    connection.ensure_connection()
    return connection._prepare_cursor(cursor_class(connection.connection))


def _execute_lean(sql: str, params: dict):
    """Run the lean statement and return its row. It doubles as the connection's per-request health check
    (CONN_HEALTH_CHECKS: Django's own `cursor()` would send `SELECT 1` first, a round trip of its own):
    if a connection kept from an earlier request turns out dead, it is replaced and the statement sent
    once more. That is safe because the statement is idempotent by design: had the first one committed
    after all (the connection dying between its commit and its answer), the second writes nothing and the
    delivery is answered as the replay it then is, with a second receipt, as the client's own retry would."""
    reused = (connection.connection is not None and connection.health_check_enabled
              and not connection.health_check_done and not connection.in_atomic_block)
    if reused:
        connection.health_check_done = True  # the statement below is the check
    try:
        with _bound_cursor(_PreparedCursor) as cursor:
            cursor.execute(sql, params)
            return cursor.fetchone()
    except OperationalError:
        if not reused:
            raise
        log.warning("ingest.connection_replaced")
        connection.close()
    with _bound_cursor(_PreparedCursor) as cursor:
        cursor.execute(sql, params)
        return cursor.fetchone()


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

# The lean path: a new event's receipt, event and `event.received` audit entry in one statement, which is
# its own transaction (one round trip: no BEGIN, no COMMIT). The event goes first, under a receipt id drawn
# beforehand (the foreign key is checked at commit), so that a delivery whose identity or Idempotency-Key
# is taken writes nothing at all here and is answered by `_INSERT_SQL`'s transaction, which looks at the
# row it collided with. The audit entry's content carries the receipt id, so the statement completes it
# (`audit.entry_template`) and hashes it; its id is drawn after the transaction id (`tx`), as the sealer
# requires (audit/services/sealing.py).
_LEAN_SQL = """
WITH tx AS MATERIALIZED (SELECT pg_current_xact_id() AS xid),
k AS MATERIALIZED (SELECT nextval('billing_sync_receipt_id_seq') AS id FROM tx WHERE tx.xid IS NOT NULL),
e AS (
    INSERT INTO billing_sync_event (id, source_system, event_id, type, entity_code, occurred_at, payload, payload_hash,
                                    idempotency_key, status, correlation_id, received_at, receipt_id, sent_by_id,
                                    response_body, attempts, order_keys)
    SELECT %(id)s, %(ss)s, %(eid)s, %(type)s, %(entity)s, %(occurred_at)s, %(payload)s, %(phash)s, %(ikey)s,
           'accepted', %(ecid)s, %(now)s, k.id, %(user_id)s, %(response)s, 0, %(keys)s::text[] FROM k
    ON CONFLICT DO NOTHING
    RETURNING receipt_id
), r AS (
    INSERT INTO billing_sync_receipt (id, received_at, endpoint, client, remote_addr, headers, body, sha256, outcome,
                                      status_code, correlation_id)
    SELECT e.receipt_id, %(now)s, 'single', %(client)s, %(remote_addr)s, %(headers)s, %(body)s, %(sha)s,
           'accepted', 202, %(cid)s FROM e
    RETURNING id
), c AS (
    SELECT {content} AS content FROM r
), a AS (
    INSERT INTO audit_auditentry (at, actor, action, object_type, object_id, event_id, correlation_id, content,
                                  entry_hash)
    SELECT %(a_at)s, %(a_actor)s, %(a_action)s, %(a_object_type)s, %(a_object_id)s, %(a_event_id)s,
           %(a_correlation_id)s, c.content, {entry_hash} FROM c
    RETURNING id
)
SELECT (SELECT id FROM r), (SELECT count(*) FROM a)
"""


def _lean_sql() -> str:
    return _LEAN_SQL.format(content=audit.slot_filled_sql("%(a_content)s", "r.id"),
                            entry_hash=audit.entry_hash_sql("c.content"))


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


def event_receive(*, body: bytes, user, headers, remote_addr=None, allowed=None) -> Answer:
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
    params = {
        "now": now, "client": _client_label(user), "remote_addr": remote_addr,
        "headers": json.dumps(_kept_headers(headers)), "body": body,
        "sha": hashlib.sha256(body).hexdigest(), "cid": correlation.get() or "", "id": new_id,
        "ss": payload["source_system"], "eid": payload["event_id"], "type": payload["type"],
        "entity": payload["entity"], "occurred_at": payload["occurred_at"], "payload": canonical.decode(),
        "phash": payload_hash, "ikey": idem_key, "ecid": cid, "user_id": user.pk if user else None,
        "response": response_text, "keys": ordering.order_keys(payload),
    }
    entry = audit.entry_template(
        actor=user, action="event.received", object_type="event", object_id=new_id, event_id=new_id,
        correlation_id=cid, at=now, after={"source_system": payload["source_system"], "event_id": payload["event_id"],
                                           "type": payload["type"], "payload_sha256": payload_hash,
                                           "receipt": audit.DB_ID})
    receipt_id, audited = _execute_lean(_lean_sql(), {
        **params, "a_content": entry.content, "a_at": entry.at, "a_actor": entry.actor,
        "a_action": entry.action, "a_object_type": entry.object_type, "a_object_id": entry.object_id,
        "a_event_id": entry.event_id, "a_correlation_id": entry.correlation_id})
    if receipt_id is not None:
        if audited != 1:  # cannot happen (same statement); never answer 202 for an unaudited event
            raise RuntimeError(f"event {new_id} stored without its audit entry")
        # Right away in autocommit (the statement has committed); after the caller's commit inside one.
        routes = processing.events_routes([(new_id, payload)])
        transaction.on_commit(lambda: processing.events_schedule([new_id], routes))
        return Answer(202, response, raw=response_text.encode())
    # Its identity or Idempotency-Key is taken (or was, by a delivery that has since rolled back): the
    # receipt, the look-up and the answer in one transaction, as before the lean path.
    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute(_INSERT_SQL, params)
            receipt_id, inserted = cursor.fetchone()
        if inserted:  # the event it collided with was rolled back meanwhile: new after all
            audit.record(actor=user, action="event.received", object_type="event", object_id=new_id,
                         event_id=new_id, correlation_id=cid,
                         after={"source_system": payload["source_system"], "event_id": payload["event_id"],
                                "type": payload["type"], "payload_sha256": payload_hash, "receipt": receipt_id})
            routes = processing.events_routes([(new_id, payload)])
            transaction.on_commit(lambda: processing.events_schedule([new_id], routes))
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


# The whole batch in one statement, its own transaction (one round trip): the receipt, every new event
# (one multi-row INSERT ... ON CONFLICT DO NOTHING) and the audit entries (one multi-row INSERT: each new
# event's `event.received`, and `receipt.forbidden` when some were outside the token's binding), whose
# contents name the receipt id drawn here (`audit.entry_template`). The rows travel as one JSON parameter
# each, unpacked by the server: binding 1,000 rows as arrays costs ~30x more in client-side escaping.
# Events are inserted in identity order (see `event_batch_receive`) but numbered in the batch's order
# (`ix`, their `seq`): the batch's order is the acceptance order. The transaction id is taken first (`tx`)
# and the entries' ids drawn last, as the audit sealer requires (audit/services/sealing.py); the entries
# are written in the order of `n` (the forbidden one first, then the events' in identity order).
_BATCH_SQL = """
WITH tx AS MATERIALIZED (SELECT pg_current_xact_id() AS xid),
r AS (
    INSERT INTO billing_sync_receipt (received_at, endpoint, client, remote_addr, headers, body, sha256, outcome,
                                      status_code, correlation_id, detail)
    SELECT %(now)s, 'batch', %(client)s, %(remote_addr)s, %(headers)s::jsonb, %(body)s, %(sha)s, 'batch', 200, %(cid)s,
           %(detail)s::jsonb FROM tx WHERE tx.xid IS NOT NULL
    RETURNING id
), s AS (
    SELECT array_agg(n ORDER BY n) AS seqs
    FROM (SELECT nextval('billing_sync_event_seq') AS n FROM generate_series(1, %(count)s)) AS g
), e AS (
    INSERT INTO billing_sync_event (id, source_system, event_id, type, entity_code, occurred_at, payload,
                                    payload_hash, idempotency_key, status, correlation_id, received_at, receipt_id,
                                    sent_by_id, response_body, attempts, seq, order_keys)
    SELECT u.id, u.ss, u.eid, u.type, u.entity, u.occurred_at, u.payload, u.phash, NULL, 'accepted', u.cid,
           %(now)s, r.id, %(user_id)s, u.response, 0, s.seqs[u.ix], ARRAY(SELECT jsonb_array_elements_text(u.keys))
    FROM jsonb_to_recordset(%(rows)s::jsonb) AS u(id uuid, ss text, eid text, type text, entity text,
                                                   occurred_at timestamptz, payload jsonb, phash text, cid text,
                                                   response text, ix int, n int, keys jsonb)
    CROSS JOIN s CROSS JOIN r
    ORDER BY u.n
    ON CONFLICT DO NOTHING
    RETURNING id
), c AS (
    SELECT w.n, w.actor, w.action, w.object_type, {object_id} AS object_id, w.event_id, w.correlation_id,
           {content} AS content
    FROM jsonb_to_recordset(%(audit)s::jsonb) AS w(n int, actor text, action text, object_type text, object_id text,
                                                    event_id uuid, correlation_id text, content text, new uuid)
    CROSS JOIN r
    WHERE w.new IS NULL OR w.new IN (SELECT id FROM e)
), a AS (
    INSERT INTO audit_auditentry (at, actor, action, object_type, object_id, event_id, correlation_id, content,
                                  entry_hash)
    SELECT %(now)s, c.actor, c.action, c.object_type, c.object_id, c.event_id, c.correlation_id, c.content,
           {entry_hash}
    FROM c ORDER BY c.n
    RETURNING 1
)
SELECT r.id, (SELECT count(*) FROM a), e.id FROM r LEFT JOIN e ON true
"""


def _batch_sql() -> str:
    return _BATCH_SQL.format(object_id=audit.slot_filled_sql("w.object_id", "r.id"),
                             content=audit.slot_filled_sql("w.content", "r.id"),
                             entry_hash=audit.entry_hash_sql("c.content"))


def _json_text(value) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _audit_row(n: int, new, item: dict) -> dict:
    entry = audit.entry_template(**item)
    return {"n": n, "actor": entry.actor, "action": entry.action, "object_type": entry.object_type,
            "object_id": entry.object_id, "event_id": str(entry.event_id) if entry.event_id else None,
            "correlation_id": entry.correlation_id, "content": entry.content, "new": str(new) if new else None}


def event_batch_receive(*, body: bytes, user, headers, remote_addr=None, allowed=None) -> Answer:
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
        fresh[identity] = {"index": index, "id": new_id, "payload": payload, "hash": phash, "cid": cid, "response": response, "response_text": _dumps(response)}
    # Inserted in one fixed order (by identity), whatever the batch's order: two batches that share events
    # in different orders would otherwise each hold a key the other waits for, and deadlock.
    # Numbered in the batch's order (1-based, for the SQL array), inserted in identity order.
    for ix, r in enumerate(sorted(fresh.values(), key=lambda r: r["index"]), start=1):
        r["ix"] = ix
    rows = sorted(fresh.values(), key=lambda r: (r["payload"]["source_system"], r["payload"]["event_id"]))
    audit_rows = []
    if refused:
        audit_rows.append(_audit_row(0, None, {
            "actor": user, "action": "receipt.forbidden", "object_type": "receipt", "object_id": audit.DB_ID,
            "at": now, "after": {"endpoint": "batch", "status": 403, "code": Codes.SOURCE_NOT_ALLOWED,
                                 "events": refused}}))
    for n, r in enumerate(rows, start=1):
        r["n"] = n
        audit_rows.append(_audit_row(n, r["id"], {
            "actor": user, "action": "event.received", "object_type": "event", "object_id": r["id"],
            "event_id": r["id"], "correlation_id": r["cid"], "at": now,
            "after": {"source_system": r["payload"]["source_system"], "event_id": r["payload"]["event_id"],
                      "type": r["payload"]["type"], "payload_sha256": r["hash"], "receipt": audit.DB_ID}}))
    document = _json_text([
        {"id": str(r["id"]), "ss": r["payload"]["source_system"], "eid": r["payload"]["event_id"],
         "type": r["payload"]["type"], "entity": r["payload"]["entity"], "occurred_at": r["payload"]["occurred_at"],
         "payload": r["payload"], "phash": r["hash"], "cid": r["cid"], "response": r["response_text"], "ix": r["ix"],
         "n": r["n"], "keys": ordering.order_keys(r["payload"])}
        for r in rows])
    detail = {"events": len(events), "invalid": invalid_count, **({"forbidden": len(refused)} if refused else {})}
    with _bound_cursor() as cursor:
        cursor.execute(_batch_sql(), {
            "now": now, "client": _client_label(user), "remote_addr": remote_addr,
            "headers": _json_text(_kept_headers(headers)), "body": body, "sha": hashlib.sha256(body).hexdigest(),
            "cid": request_cid, "detail": _json_text(detail), "count": len(rows),
            "user_id": user.pk if user else None, "rows": document,
            "audit": _json_text(audit_rows)})
        found = cursor.fetchall()
    inserted = {row[2] for row in found if row[2] is not None}
    if found[0][1] != len(inserted) + (1 if refused else 0):  # cannot happen (one statement): never unaudited
        raise RuntimeError(f"batch receipt {found[0][0]}: {len(inserted)} events, {found[0][1]} audit entries")
    texts: list[str | None] = [None] * len(events)  # the JSON text of an answer already rendered
    for r in rows:
        if r["id"] in inserted:
            results[r["index"]] = {"status": 202, "body": r["response"]}
            texts[r["index"]] = '{"status":202,"body":%s}' % r["response_text"]
        else:
            pending.append((r["index"], r["payload"], r["hash"]))
    if pending:  # after the commit: an event's row never changes its identity, hash or first answer
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
                texts[index] = '{"status":200,"headers":{"Idempotent-Replayed":"true"},"body":%s}' % (
                    row["response_body"])
            else:
                results[index] = {"status": 409, "body": problem(
                    409, Codes.IDEMPOTENCY_CONFLICT, "Idempotency conflict",
                    f"event {payload['source_system']}/{payload['event_id']} was already received with a "
                    "different payload")}
    if inserted:
        ids = [r["id"] for r in sorted(rows, key=lambda r: r["ix"]) if r["id"] in inserted]  # batch order
        routes = processing.events_routes((r["id"], r["payload"]) for r in rows if r["id"] in inserted)
        transaction.on_commit(lambda: processing.events_schedule(ids, routes))
    # Rendered as DRF's JSONRenderer would (compact, UTF-8, U+2028/9 escaped), from the answers' texts
    # already made: a thousand event resources are not serialised twice.
    raw = '{"results":[%s]}' % ",".join(texts[i] if texts[i] is not None else _dumps(results[i])
                                        for i in range(len(results)))
    raw = raw.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")
    return Answer(200, {"results": results}, raw=raw.encode())
