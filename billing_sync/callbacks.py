"""Status back to the source: Standard Webhooks telling a source system what became of its events. Services
call `notify(...)` in their transaction: with an active `SourceSystem` callback URL a `CallbackDelivery` row
and audit entry are written and delivery is queued after commit (Celery `callbacks`; `sweep_callbacks()`
re-queues what is due). The fixed body is signed (`webhook-id` stable across attempts, `webhook-timestamp`,
HMAC-SHA256 `webhook-signature` with a secret from the environment). `deliver()` leases the row, POSTs outside
any transaction, retries non-2xx with capped backoff up to `TIEOUT_CALLBACK_MAX_ATTEMPTS`, then fails into the
source's open `callback_failed` exception."""
import datetime
import hashlib
import json
import os
import random
import re
import threading
from dataclasses import dataclass
from urllib.parse import urlsplit

import requests
import structlog
from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import URLValidator
from django.db import transaction
from django.utils import timezone
from standardwebhooks import Webhook

from audit import services as audit
from billing_sync import selectors, tasks
from billing_sync.models import CallbackDelivery, Event, SourceSystem
from config.errors import ApiError, Codes, Conflict
from config.memo import memoized
from exceptions_queue import services as queue

log = structlog.get_logger("tieout.callbacks")

POSTED = CallbackDelivery.Kind.POSTED
EXCEPTION = CallbackDelivery.Kind.EXCEPTION
RESOLVED = CallbackDelivery.Kind.RESOLVED
# Event statuses the source is told about when an event moves to them (resolutions are told by `_resolve`).
KIND_FOR_STATUS = {Event.Status.POSTED: POSTED, Event.Status.EXCEPTION: EXCEPTION}

ACTOR = "system:callbacks"
USER_AGENT = "Tieout-Webhooks/1.0"
# While one worker sends, nobody else may: longer than the POST can take.
CLAIM_LEASE = datetime.timedelta(seconds=90)
# After the sweep queued a delivery it leaves it alone this long (a backlog must not pile up copies).
DISPATCH_LEASE = datetime.timedelta(seconds=60)
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,99}$")


def _iso(value: datetime.datetime) -> str:
    return value.isoformat().replace("+00:00", "Z")


# --------------------------------------------------------------------------------------------- configuration
def _source_snapshot(source: SourceSystem) -> dict:
    return audit.model_snapshot(source, ["name", "callback_url", "secret_env", "is_active"])


@transaction.atomic
def source_system_configure(*, name: str, callback_url: str, secret_env: str, is_active: bool = True,
                            actor) -> tuple[SourceSystem, str]:
    """Create or update a source system's callback settings; returns it and created|updated|unchanged."""
    name = (name or "").strip()
    callback_url = (callback_url or "").strip()
    secret_env = (secret_env or "").strip()
    errors = []
    if not name or len(name) > 100:
        errors.append({"field": "name", "message": "A name of 1 to 100 characters (the events' source_system)."})
    if callback_url:
        try:
            URLValidator(schemes=["http", "https"])(callback_url)
        except ValidationError:
            errors.append({"field": "callback_url", "message": "An http(s) URL."})
    if secret_env.startswith("whsec_"):
        # Somebody passed the secret itself: refuse without repeating it.
        errors.append({"field": "secret_env", "message": "The NAME of the environment variable that holds the "
                                                         "secret, not the secret."})
    elif callback_url and not ENV_NAME.match(secret_env):
        errors.append({"field": "secret_env", "message": "An environment variable name ([A-Za-z_][A-Za-z0-9_]*)."})
    if errors:
        raise ApiError("invalid source system settings", code=Codes.INVALID_REQUEST, status=422, errors=errors)
    source = SourceSystem.objects.select_for_update().filter(name=name).first()
    if source is None:
        source = SourceSystem.objects.create(name=name, callback_url=callback_url, secret_env=secret_env,
                                             is_active=is_active)
        audit.record(actor=actor, action="source_system.created", object_type="source_system", object_id=name,
                     after=_source_snapshot(source))
        return source, "created"
    before = _source_snapshot(source)
    wanted = {"callback_url": callback_url, "secret_env": secret_env, "is_active": is_active}
    changed = [field for field, value in wanted.items() if getattr(source, field) != value]
    if not changed:
        return source, "unchanged"
    for field in changed:
        setattr(source, field, wanted[field])
    source.updated_at = timezone.now()
    source.save(update_fields=[*changed, "updated_at"])
    audit.record(actor=actor, action="source_system.updated", object_type="source_system", object_id=name,
                 before=before, after=_source_snapshot(source))
    return source, "updated"


# --------------------------------------------------------------------------------------------- notify
def notify(*, event, kind, actor) -> CallbackDelivery | None:
    """Record that `event`'s source must hear `kind`; call inside the transaction that changed the event.

    Returns None when there is nothing to tell (no event, no kind) or nobody to tell (no active source
    system with a callback URL). Sending happens after commit, so a rolled-back change sends nothing.
    """
    if event is None or not kind:
        return None
    source = memoized(("callback_source", event.source_system), lambda: (
        SourceSystem.objects.filter(name=event.source_system, is_active=True).exclude(callback_url="")
        .only("pk", "name").first()))
    if source is None:
        return None
    delivery = CallbackDelivery.objects.create(source_system=source, event_id=event.pk, kind=kind,
                                               next_attempt_at=timezone.now())
    audit.record(actor=actor, action="callback.queued", object_type="callback_delivery", object_id=delivery.pk,
                 event_id=event.pk, after={"kind": kind, "source_system": source.name})
    transaction.on_commit(lambda: _after_commit(delivery.pk))
    return delivery


def _after_commit(delivery_id) -> None:
    try:
        _seal(delivery_id)
    except Exception as exc:  # the first attempt seals it instead; the change itself is committed
        log.warning("callback.seal_failed", delivery=str(delivery_id), error=str(exc))
    schedule([(delivery_id, 0)])


def _payload(delivery: CallbackDelivery) -> str:
    event = Event.objects.defer("payload", "response_body").get(pk=delivery.event_id)
    body = {"type": delivery.kind, "timestamp": _iso(delivery.created_at),
            "data": selectors.event_resources([event])[0]}
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False)


def _seal(delivery_id) -> None:
    """Fix the body right after the change committed: the event as that change left it."""
    with transaction.atomic():
        delivery = CallbackDelivery.objects.select_for_update().filter(pk=delivery_id, payload="").first()
        if delivery is not None:
            delivery.payload = _payload(delivery)
            delivery.save(update_fields=["payload"])


def schedule(items) -> None:
    """Queue deliveries, each with the attempt count it was queued at (a copy that finds more is stale)."""
    for delivery_id, attempt in items:
        try:
            tasks.deliver_callback.apply_async(args=[str(delivery_id), attempt])
        except Exception as exc:  # broker down: the sweep queues it again; the caller must not fail
            log.warning("callback.schedule_failed", delivery=str(delivery_id), error=str(exc))
            return


def sweep_callbacks(*, limit: int = 1000) -> int:
    """Queue every pending delivery whose next attempt is due (retries, lost messages, a crash mid-send)."""
    now = timezone.now()
    with transaction.atomic():
        due = list(CallbackDelivery.objects.select_for_update(skip_locked=True)
                   .filter(status=CallbackDelivery.Status.PENDING, next_attempt_at__lte=now)
                   .order_by("next_attempt_at").values_list("pk", "attempts")[:limit])
        if due:
            # Bookkeeping of the schedule only (no state change): the claim re-checks everything.
            CallbackDelivery.objects.filter(pk__in=[pk for pk, _ in due]).update(next_attempt_at=now + DISPATCH_LEASE)
            transaction.on_commit(lambda: schedule(due))
    return len(due)


# --------------------------------------------------------------------------------------------- deliver
@dataclass
class Outcome:
    status: str
    attempts: int = 0
    sent: bool = False
    status_code: int | None = None
    error: str = ""


def backoff(attempts: int) -> float:
    """Seconds before the next attempt after `attempts` failed ones: doubling, capped, with jitter."""
    ceiling = min(settings.TIEOUT_CALLBACK_BACKOFF_CAP, settings.TIEOUT_CALLBACK_BACKOFF_BASE * 2 ** (attempts - 1))
    # Half fixed, half random: never hammer at once, and many deliveries failing together spread out.
    return ceiling / 2 + random.uniform(0, ceiling / 2)


def deliver(delivery_id, *, attempt: int | None = None, actor=ACTOR) -> Outcome:
    """Send one delivery once, if it is still pending and it is its turn; record what happened.

    `attempt` is the attempt count the message was queued at: a copy that finds a different count was
    overtaken (duplicate message, sweep) and does nothing. Without it (a direct call) the delivery must
    be due. A delivered or failed delivery is never sent again from here.
    """
    claimed = _claim(delivery_id, attempt=attempt, actor=actor)
    if isinstance(claimed, Outcome):
        return claimed
    delivery, url, secret_env = claimed
    status_code, error = _send(delivery, url=url, secret_env=secret_env)
    return _record(delivery.pk, attempt_no=delivery.attempts, status_code=status_code, error=error, actor=actor)


def _claim(delivery_id, *, attempt, actor):
    with transaction.atomic():
        delivery = (CallbackDelivery.objects.select_for_update(of=("self",)).select_related("source_system")
                    .filter(pk=delivery_id).first())
        if delivery is None:
            return Outcome("missing")
        if delivery.status != CallbackDelivery.Status.PENDING:
            return Outcome(delivery.status, delivery.attempts)
        now = timezone.now()
        if attempt is None and delivery.next_attempt_at and delivery.next_attempt_at > now:
            return Outcome(delivery.status, delivery.attempts)
        if attempt is not None and attempt != delivery.attempts:
            return Outcome(delivery.status, delivery.attempts)
        source = delivery.source_system
        if not source.is_active or not source.callback_url:
            # Switched off after the change was recorded: the operator does not want it sent.
            delivery.status = CallbackDelivery.Status.FAILED
            delivery.next_attempt_at = None
            delivery.last_error = f"callbacks to {source.name} were switched off before this was delivered"
            delivery.save(update_fields=["status", "next_attempt_at", "last_error"])
            audit.record(actor=actor, action="callback.cancelled", object_type="callback_delivery",
                         object_id=delivery.pk, event_id=delivery.event_id, before={"status": "pending"},
                         after={"status": "failed", "error": delivery.last_error})
            return Outcome(delivery.status, delivery.attempts, error=delivery.last_error)
        if not delivery.payload:
            delivery.payload = _payload(delivery)
        delivery.attempts += 1
        delivery.next_attempt_at = now + CLAIM_LEASE
        delivery.save(update_fields=["payload", "attempts", "next_attempt_at"])
        return delivery, source.callback_url, source.secret_env


_local = threading.local()


def _session() -> requests.Session:
    """One session per thread: keep-alive connections to each receiver are reused between deliveries."""
    session = getattr(_local, "session", None)
    if session is None:
        session = requests.Session()
        session.headers.update({"User-Agent": USER_AGENT})
        _local.session = session
    return session


def _redact(message: str, url: str) -> str:
    # A callback URL may carry a token in its path or query: never copy it into an error message.
    parts = urlsplit(url)
    for secretish in {url, parts.path + (f"?{parts.query}" if parts.query else ""), parts.query}:
        if secretish and secretish != "/":
            message = message.replace(secretish, "<callback-url>")
    return message


def _send(delivery: CallbackDelivery, *, url: str, secret_env: str) -> tuple[int | None, str]:
    """One signed POST; (HTTP status or None, "" when delivered else why not). Never raises."""
    secret = os.environ.get(secret_env) if secret_env else None
    if not secret:
        return None, (f"signing secret missing: environment variable {secret_env} is not set" if secret_env
                      else "signing secret missing: the source system names no environment variable")
    try:
        webhook = Webhook(secret)
    except Exception:  # never echo the value: the message names the variable only
        return None, f"signing secret in {secret_env} is not a Standard Webhooks secret (whsec_<base64>)"
    now = datetime.datetime.now(datetime.timezone.utc)
    msg_id = str(delivery.pk)
    headers = {
        "Content-Type": "application/json",
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": webhook.sign(msg_id=msg_id, timestamp=now, data=delivery.payload),
    }
    timeout = (settings.TIEOUT_CALLBACK_CONNECT_TIMEOUT, settings.TIEOUT_CALLBACK_READ_TIMEOUT)
    try:
        # No redirects: a signed POST must reach the configured URL, not wherever a 3xx points.
        response = _session().post(url, data=delivery.payload.encode(), headers=headers, timeout=timeout,
                                   allow_redirects=False)
    except requests.Timeout as exc:
        return None, _redact(f"timeout ({type(exc).__name__}): {exc}", url)[:2000]
    except requests.RequestException as exc:
        return None, _redact(f"connection failed ({type(exc).__name__}): {exc}", url)[:2000]
    if 200 <= response.status_code < 300:
        return response.status_code, ""
    snippet = response.text[:500].strip() if response.content else ""
    return response.status_code, f"HTTP {response.status_code}" + (f": {snippet}" if snippet else "")


def _record(delivery_id, *, attempt_no: int, status_code: int | None, error: str, actor) -> Outcome:
    with transaction.atomic():
        delivery = CallbackDelivery.objects.select_for_update().get(pk=delivery_id)
        if delivery.status != CallbackDelivery.Status.PENDING:
            return Outcome(delivery.status, delivery.attempts, sent=True, status_code=status_code, error=error)
        now = timezone.now()
        sha = hashlib.sha256(delivery.payload.encode()).hexdigest()
        if not error:
            delivery.status = CallbackDelivery.Status.DELIVERED
            delivery.delivered_at = now
            delivery.next_attempt_at = None
            delivery.last_status_code = status_code
            delivery.last_error = ""
            delivery.save(update_fields=["status", "delivered_at", "next_attempt_at", "last_status_code",
                                         "last_error"])
            audit.record(actor=actor, action="callback.delivered", object_type="callback_delivery",
                         object_id=delivery.pk, event_id=delivery.event_id, before={"status": "pending"},
                         after={"status": "delivered", "kind": delivery.kind, "attempt": attempt_no,
                                "status_code": status_code, "payload_sha256": sha})
            if delivery.exception_id:
                _resolve_exception_when_all_delivered(delivery.exception_id, actor=actor)
            return Outcome(delivery.status, delivery.attempts, sent=True, status_code=status_code)
        if delivery.attempts != attempt_no:
            # Our lease ran out and a newer attempt owns the row: it will record its own outcome.
            return Outcome(delivery.status, delivery.attempts, sent=True, status_code=status_code, error=error)
        delivery.last_status_code = status_code
        delivery.last_error = error
        details = {"kind": delivery.kind, "attempt": attempt_no, "status_code": status_code, "error": error[:1000],
                   "payload_sha256": sha}
        if delivery.attempts >= settings.TIEOUT_CALLBACK_MAX_ATTEMPTS:
            delivery.status = CallbackDelivery.Status.FAILED
            delivery.next_attempt_at = None
            delivery.save(update_fields=["status", "next_attempt_at", "last_status_code", "last_error"])
            audit.record(actor=actor, action="callback.failed", object_type="callback_delivery",
                         object_id=delivery.pk, event_id=delivery.event_id, before={"status": "pending"},
                         after={"status": "failed", **details})
            _open_exception(delivery, actor=actor)
            log.warning("callback.failed", delivery=str(delivery.pk), attempts=delivery.attempts, error=error[:200])
        else:
            delivery.next_attempt_at = now + datetime.timedelta(seconds=backoff(delivery.attempts))
            delivery.save(update_fields=["next_attempt_at", "last_status_code", "last_error"])
            audit.record(actor=actor, action="callback.attempt_failed", object_type="callback_delivery",
                         object_id=delivery.pk, event_id=delivery.event_id,
                         after={**details, "next_attempt_at": delivery.next_attempt_at})
        return Outcome(delivery.status, delivery.attempts, sent=True, status_code=status_code, error=error)


# --------------------------------------------------------------------------------------------- give up, retry
def _open_exception(delivery: CallbackDelivery, *, actor) -> None:
    """Failed deliveries of one source system gather in its one open callback_failed exception.

    Not attached to the event: the event's status and its one open exception are about the books, and a
    receiver that is down must not turn posted events into exceptions (nor trigger callbacks about that).
    """
    # The source system's row lock serialises give-ups, so that two at once do not open two exceptions.
    source = SourceSystem.objects.select_for_update().get(pk=delivery.source_system_id)
    open_ids = (CallbackDelivery.objects.filter(source_system=source, exception__isnull=False)
                .exclude(exception__status="resolved").values_list("exception_id", flat=True))
    existing_id = open_ids.first()
    failed = 1 + (CallbackDelivery.objects.filter(exception_id=existing_id, status=CallbackDelivery.Status.FAILED)
                  .exclude(pk=delivery.pk).count() if existing_id else 0)
    event = Event.objects.only("source_system", "event_id").get(pk=delivery.event_id)
    message = (f"{failed} status callback(s) to source system {source.name} failed; latest: {delivery.kind} for "
               f"event {event.source_system}/{event.event_id} ({event.pk}) after {delivery.attempts} attempt(s): "
               f"{delivery.last_error[:500]}")
    exc = queue.exception_open_for_callback(source_system=source.name, message=message, existing_id=existing_id,
                                            event_id=delivery.event_id, actor=actor)
    delivery.exception = exc
    delivery.save(update_fields=["exception"])


def _resolve_exception_when_all_delivered(exception_id, *, actor) -> None:
    if CallbackDelivery.objects.filter(exception_id=exception_id).exclude(
            status=CallbackDelivery.Status.DELIVERED).exists():
        return
    try:
        queue.exception_resolve(exception_id=exception_id, actor=actor,
                                resolution="Every failed status callback was delivered on retry.")
    except Conflict:  # someone resolved it by hand meanwhile
        pass


@transaction.atomic
def callbacks_retry(*, exception_id, actor) -> int:
    """Retry from a callback_failed exception: its failed deliveries get a fresh set of attempts."""
    now = timezone.now()
    retried = []
    for delivery in CallbackDelivery.objects.select_for_update().filter(exception_id=exception_id,
                                                                        status=CallbackDelivery.Status.FAILED):
        before = {"status": delivery.status, "attempts": delivery.attempts}
        delivery.status = CallbackDelivery.Status.PENDING
        delivery.attempts = 0  # a person asked again: a fresh budget of attempts
        delivery.next_attempt_at = now
        delivery.save(update_fields=["status", "attempts", "next_attempt_at"])
        audit.record(actor=actor, action="callback.retry", object_type="callback_delivery", object_id=delivery.pk,
                     event_id=delivery.event_id, before=before, after={"status": "pending", "attempts": 0})
        retried.append((delivery.pk, 0))
    if retried:
        transaction.on_commit(lambda: schedule(retried))
    return len(retried)
