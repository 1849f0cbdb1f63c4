"""Acceptance order per document: events that conflict (one changes a document the other touches, per
`Event.order_keys`) run in acceptance order (`Event.seq`), as if one at a time, however many workers; others
run in parallel. An event is held behind an earlier conflicting one that is pending or parked (open exception
with a dependency key); only an event providing that key passes and wakes the parked ones, or one that makes it
available through an event parked on what it provides (`_unlocked`: else a cycle holds both). Business-rule
refusals block nothing. `successors_of` wakes held events and the sweep catches lost wake-ups; deciding under
the row lock on committed states stops two workers running conflicting events."""
import json

from django.db import connection

SUCCESSOR_LIMIT = 100  # events woken at once; the rest are reached by the chain of wake-ups and the sweep


def document_key(kind: str, source_system: str, document_id) -> str:
    """A document's key, as order keys and dependency keys write it: `invoice:billing-prod:in_1`."""
    return f"{kind}:{source_system}:{document_id}"


WRITE = "w|"  # marks, in `order_keys`, a document the event changes (beside its plain key)


def documents_of(payload: dict) -> tuple[set[str], set[str], list[str]]:
    """The documents an event changes, those it only reads, and those it creates (parked events may
    wait for them). Computed from the validated payload alone, at acceptance, so that the order is
    fixed before any worker sees the event.

    Reads matter for order only against changes: two invoices of one customer both read the customer
    and do not wait for each other, but both wait for an earlier `customer.upserted` of it.
    """
    ss, kind, data = payload["source_system"], payload["type"], payload.get("data") or {}
    writes: set[str] = set()
    reads: set[str] = set()
    provides: list[str] = []
    if kind == "customer.upserted":
        provides.append(document_key("customer", ss, data["customer_id"]))
    elif kind in ("invoice.issued", "invoice.amended"):
        provides.append(document_key("invoice", ss, data["invoice_id"]))
        reads.add(document_key("customer", ss, data["customer_id"]))
    elif kind == "invoice.voided":
        writes.add(document_key("invoice", ss, data["invoice_id"]))
    elif kind in ("payment.received", "payment.applied"):
        key = document_key("payment", ss, data["payment_id"])
        if kind == "payment.received":
            provides.append(key)
            reads.add(document_key("customer", ss, data["customer_id"]))
        writes.add(key)
        writes.update(document_key("invoice", ss, a["invoice_id"]) for a in data.get("allocations") or ())
    elif kind == "payment.refunded":
        writes.update((document_key("payment", ss, data["payment_id"]), document_key("refund", ss, data["refund_id"])))
        if data.get("invoice_id"):
            writes.add(document_key("invoice", ss, data["invoice_id"]))
    elif kind == "credit_note.issued":
        writes.update((document_key("invoice", ss, data["invoice_id"]),
                       document_key("credit_note", ss, data["credit_note_id"])))
    elif kind == "write_off.requested":
        writes.update((document_key("invoice", ss, data["invoice_id"]),
                       document_key("write_off", ss, data["write_off_id"])))
    writes.update(provides)
    return writes, reads - writes, provides


def order_keys(payload: dict) -> list[str]:
    """What `Event.order_keys` stores: every document touched, and each changed one again marked `w|`."""
    writes, reads, _ = documents_of(payload)
    return sorted(writes | reads | {WRITE + k for k in writes})


def _probe(keys: list[str]) -> list[str]:
    """The array that overlaps the `order_keys` of exactly the events in conflict with this one: any
    event touching a document this one changes, and any event changing a document this one reads."""
    writes = {k[len(WRITE):] for k in keys if k.startswith(WRITE)}
    reads = {k for k in keys if not k.startswith(WRITE)} - writes
    return sorted(writes | {WRITE + k for k in reads})


def _parking(x: str) -> str:
    """SQL: the exception (alias) parks its event on a document: open, with a dependency key."""
    return f"{x}.status <> 'resolved' AND {x}.dependency_key IS NOT NULL"


# Pending events with any of the probe's keys, found through the partial GIN index on `order_keys` (accepted and
# exception events) alone, in a subquery the planner cannot merge (OFFSET 0) so that the callers' `ORDER BY seq`
# (and `LIMIT`) cannot lead it down the `seq` index instead: on fresh statistics of a backlog it walked every accepted
# event after the one given, looking for the keys (140 ms a look-up at 150,000 accepted events; 0.05 ms through
# the GIN index). The status is the index's own predicate, with `<> 'exception'` outside for accepted ones only,
# not `status = 'accepted'`: that equality is also served by the (status, received_at) btree, which the planner
# ANDed in on a partition never analysed (a new month's first burst: 16-30 ms a look-up). Statistics taken
# before a burst mislead it too; beat's `tables-analyze` takes them again (audit.services.tables_analyze).
# tests/billing_sync/test_ordering_plans.py reads the plans.
def _pending_with(keys: str) -> str:
    return f"""(SELECT e.id, e.seq, e.status, e.type, e.order_keys, e.source_system FROM billing_sync_event e
       WHERE e.order_keys && {keys} AND e.status IN ('accepted', 'exception') OFFSET 0) e"""


# Earlier events in conflict that are still pending, with the dependency a parked one waits for.
# Reads through the partial GIN index on order_keys, which holds only accepted and exception events.
_PENDING_BEFORE = f"""
SELECT e.id, e.seq, e.status, e.type, e.order_keys, x.dependency_key, (x.id IS NOT NULL) AS parked, e.source_system
FROM {_pending_with("%s::text[]")}
LEFT JOIN exceptions_queue_exceptionrecord x
       ON x.event_id = e.id AND {_parking('x')}
WHERE e.seq < %s
ORDER BY e.seq
"""

# What each type creates, read back from its stored keys (see documents_of): a parked event may wait for it.
_PROVIDED_KIND = {"customer.upserted": "customer:", "invoice.issued": "invoice:", "invoice.amended": "invoice:",
                  "payment.received": "payment:"}


def provides_from_keys(type_: str, keys: list[str]) -> list[str]:
    kind = _PROVIDED_KIND.get(type_)
    if kind is None:
        return []
    return sorted(k[len(WRITE):] for k in keys if k.startswith(WRITE + kind))


def _pending_before(seq: int, keys: list[str]) -> list[dict]:
    with connection.cursor() as cursor:
        cursor.execute(_PENDING_BEFORE, [_probe(keys), seq])
        rows = [dict(zip(("id", "seq", "status", "type", "keys", "dependency", "parked", "source_system"), r))
                for r in cursor.fetchall()]
    # An `exception` event that waits for no document (a business rule refused it, a journal failed to
    # post, a callback failed) is done as far as order goes: it holds nothing.
    return [r for r in rows if r["status"] == "accepted" or r["parked"]]


# Events parked on one of some documents (dependency keys), with what each would provide once woken.
_PARKED_ON = f"""
SELECT e.type, e.order_keys FROM billing_sync_event e
JOIN exceptions_queue_exceptionrecord x
  ON x.event_id = e.id AND {_parking('x')}
WHERE x.dependency_key = ANY(%s) AND e.status = 'exception'
"""


def _unlocked(provides) -> frozenset:
    """What an event makes available: the documents it provides, then those that the events parked on them
    provide once woken, and so on (an invoice, then the payment parked on that invoice). An earlier event parked
    on one of these waits for this event too, through the parked providers: holding it behind would be a cycle
    (the refund of a payment parked on the payment, the payment parked on the invoice, the invoice's issue
    held behind the refund)."""
    found = set(provides)
    frontier = sorted(found)
    while frontier:
        with connection.cursor() as cursor:
            cursor.execute(_PARKED_ON, [frontier])
            new = {key for type_, keys in cursor.fetchall() for key in provides_from_keys(type_, keys)} - found
        found |= new
        frontier = sorted(new)
    return frozenset(found)


def _blockers(seq: int, keys: list[str], provides, memo: dict) -> list[dict]:
    """The earlier pending events that hold an event back: all of them but those waiting only for what it
    makes available (which it may pass). Its own documents first; only when some still hold it, also what the
    events parked on them would provide (`_unlocked`: one more look, and only for a provider that is held)."""
    found = _pending_before(seq, keys)
    if not provides:
        return found
    provided = frozenset(provides)
    found = [row for row in found if not _waits_for(row, provided, memo)]
    if found:
        unlocked = _unlocked(provided)
        if unlocked != provided:
            found = [row for row in found if not _waits_for(row, unlocked, memo)]
    return found


def blocker(*, seq: int, keys: list[str], provides: list[str]):
    """The first earlier pending event that holds this one, or None when it may be processed now."""
    if not keys:
        return None
    found = _blockers(seq, keys, provides, {})
    return found[0]["id"] if found else None


def held_by(event):
    """The event holding this accepted one back, or None."""
    return blocker(seq=event.seq, keys=event.order_keys, provides=provides_from_keys(event.type, event.order_keys))


def _waits_for(row: dict, provided: frozenset, memo: dict) -> bool:
    """Whether a pending event waits only for documents in `provided` (so their provider may pass it).

    Parked: its dependency is one of them. Accepted: it is held (by what holds it given what it provides
    itself: an accepted provider that may pass its parked predecessors is not waiting, it is running),
    and every event holding it waits for them too (the events queued behind a parked payment, when its
    invoice arrives).
    """
    key = (row["id"], provided)
    if key not in memo:
        if row["status"] != "accepted":
            # Parked on a document that exists already (an earlier provider committed, the wake-up that sends
            # it back to `accepted` has not run yet): it is due to run before this one, as one at a time it
            # would have been woken before this event arrived, so it holds. Only a first provider passes.
            memo[key] = row["dependency"] in provided and not dependency_exists(row["dependency"],
                                                                                 row["source_system"])
        else:
            memo[key] = False  # seq decreases along the recursion, so it ends; this only guards re-entry
            holders = _blockers(row["seq"], row["keys"], provides_from_keys(row["type"], row["keys"]), memo)
            memo[key] = bool(holders) and all(_waits_for(h, provided, memo) for h in holders)
    return memo[key]


# Whether the document a dependency key names exists, as SQL over a key expression and the parked event's source
# system (the key is `document_key(kind, that source system, document id)`, or `entity:<code>`): split by the
# source system it was made with, not at a colon, since a source system or a document id may hold one (a wrong
# split could find another document and send an event round for ever). The one test behind the hold check's,
# the recheck's and the sweep's reading of parked events.
def _exists_sql(k: str, ss: str) -> str:
    def kind(name, table, column):
        prefix = f"'{name}:' || {ss} || ':'"
        return (f"(left({k}, length({prefix})) = {prefix} AND EXISTS (SELECT 1 FROM {table} d"
                f" WHERE d.source_system = {ss} AND d.{column} = substr({k}, length({prefix}) + 1)))")
    return f"""(CASE split_part({k}, ':', 1)
        WHEN 'customer' THEN {kind("customer", "billing_sync_customer", "customer_id")}
        WHEN 'invoice' THEN {kind("invoice", "billing_sync_invoice", "invoice_id")}
        WHEN 'payment' THEN {kind("payment", "billing_sync_payment", "payment_id")}
        WHEN 'entity' THEN EXISTS (SELECT 1 FROM ledger_entity d WHERE d.code = substr({k}, length('entity:') + 1))
        ELSE false END)"""


def dependency_exists(dependency: str, source_system: str) -> bool:
    """Whether the document an event of this source system parked on (its dependency key) exists now."""
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT {_exists_sql('k.v', 'k.ss')} FROM (SELECT %s::text AS v, %s::text AS ss) k",
                       [dependency, source_system])
        return cursor.fetchone()[0]


_SUCCESSORS = f"""
SELECT e.id FROM {_pending_with("%s::text[]")}
WHERE e.seq > %s AND e.status <> 'exception'
ORDER BY e.seq
LIMIT %s
"""


def successors_of(*, seq: int, keys: list[str]) -> list:
    """Accepted events after this one on its documents: those it may have been holding."""
    if not keys:
        return []
    with connection.cursor() as cursor:
        cursor.execute(_SUCCESSORS, [_probe(keys), seq, SUCCESSOR_LIMIT])
        return [r[0] for r in cursor.fetchall()]


_PROVIDERS = f"""
SELECT e.id FROM {_pending_with("%s::text[]")}
WHERE e.status <> 'exception' AND e.type = ANY(%s)
ORDER BY e.seq
LIMIT %s
"""


def accepted_providers_of(dependency: str) -> list:
    """Accepted events that would provide this document: held, they may pass now that an event parked on it
    (what held them may be waiting for that event: see `_unlocked`)."""
    kind = dependency.partition(":")[0] + ":"
    types = [t for t, k in _PROVIDED_KIND.items() if k == kind]
    if not types:
        return []
    with connection.cursor() as cursor:
        cursor.execute(_PROVIDERS, [[WRITE + dependency], types, SUCCESSOR_LIMIT])
        return [r[0] for r in cursor.fetchall()]


# The same for many events at once (a processing chunk's), in one statement: each one's successors in `seq`
# order, one event after the other, as so many `successors_of` calls would list them.
_SUCCESSORS_MANY = f"""
SELECT x.id
FROM jsonb_array_elements(%s::jsonb) WITH ORDINALITY AS p(v, n)
CROSS JOIN LATERAL (
    SELECT e.id, e.seq FROM {_pending_with("ARRAY(SELECT jsonb_array_elements_text(p.v->'probe'))")}
    WHERE e.seq > (p.v->>'seq')::bigint AND e.status <> 'exception'
    ORDER BY e.seq
    LIMIT %s) x
ORDER BY p.n, x.seq
"""


def successors_of_many(events: list[tuple[int, list[str]]]) -> list:
    """`successors_of` for each (seq, keys), concatenated in the order given."""
    probes = [{"seq": seq, "probe": _probe(keys)} for seq, keys in events if keys]
    if not probes:
        return []
    with connection.cursor() as cursor:
        cursor.execute(_SUCCESSORS_MANY, [json.dumps(probes), SUCCESSOR_LIMIT])
        return [r[0] for r in cursor.fetchall()]


# Accepted events, oldest first, except those whose recorded holder is still parked on a dependency that
# they do not provide (those still wait for it; a provider may pass it, so it must not be left behind), nor
# make available through an event parked on what they provide (they may pass it too: see `_unlocked`; one
# step of it here, the wake-up of `providers_wake` covers the rest).
def _provides(event: str, key: str) -> str:
    """SQL: the event (alias) provides the document named by the key (expression), as `provides_from_keys`."""
    by_type = " OR ".join(f"({event}.type = '{t}' AND {key} LIKE '{k}%%')" for t, k in _PROVIDED_KIND.items())
    return f"('{WRITE}' || {key} = ANY({event}.order_keys) AND ({by_type}))"


_SWEEPABLE = f"""
SELECT e.id FROM billing_sync_event e
WHERE e.status = 'accepted' AND e.received_at <= %s
  AND NOT EXISTS (SELECT 1 FROM exceptions_queue_exceptionrecord x
                  WHERE x.event_id = e.held_by_id AND {_parking('x')}
                    AND NOT {_provides("e", "x.dependency_key")}
                    AND NOT EXISTS (SELECT 1 FROM billing_sync_event p
                                    JOIN exceptions_queue_exceptionrecord y
                                      ON y.event_id = p.id AND {_parking('y')}
                                    WHERE p.status = 'exception'
                                      AND {_provides("p", "x.dependency_key")} AND {_provides("e", "y.dependency_key")}))
ORDER BY e.seq
LIMIT %s
"""


def accepted_not_parked_behind(*, received_before, limit: int) -> list:
    """What the events sweep may schedule again: accepted events not waiting behind a parked one."""
    with connection.cursor() as cursor:
        cursor.execute(_SWEEPABLE, [received_before, limit])
        return [r[0] for r in cursor.fetchall()]


# Events parked on a document that exists (the wake-up after its provider committed was lost with a killed
# worker, or has not run yet), parked before the cutoff, oldest first.
_PARKED_ON_AVAILABLE = f"""
SELECT e.id FROM exceptions_queue_exceptionrecord x
JOIN billing_sync_event e ON e.id = x.event_id AND e.status = 'exception'
WHERE {_parking('x')} AND x.updated_at <= %s
  AND {_exists_sql("x.dependency_key", "e.source_system")}
ORDER BY e.seq
LIMIT %s
"""


def parked_on_available(*, parked_before, limit: int) -> list:
    """What the parked-events sweep sends back through processing: events still parked on a document that
    exists."""
    with connection.cursor() as cursor:
        cursor.execute(_PARKED_ON_AVAILABLE, [parked_before, limit])
        return [r[0] for r in cursor.fetchall()]


# Held events whose recorded holder holds them no more: done, or in `exception` waiting for no document.
_HELD_RELEASED = f"""
SELECT e.id FROM billing_sync_event e JOIN billing_sync_event h ON h.id = e.held_by_id
WHERE e.id = ANY(%s::uuid[]) AND e.status = 'accepted' AND h.status <> 'accepted'
  AND NOT (h.status = 'exception' AND EXISTS (
      SELECT 1 FROM exceptions_queue_exceptionrecord x
      WHERE x.event_id = h.id AND {_parking('x')}))
ORDER BY e.seq
"""


def held_released(event_ids) -> list:
    """Of these events, those still accepted whose recorded holder is no longer pending or parked."""
    with connection.cursor() as cursor:
        cursor.execute(_HELD_RELEASED, [[str(i) for i in event_ids]])
        return [r[0] for r in cursor.fetchall()]
