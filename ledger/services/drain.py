"""Concurrent per-journal posting: a drain claims an entity's due journals in chunks and keeps up to
TIEOUT_POSTING_IN_FLIGHT of them in flight to the ERP at once from one worker process, within the ERP's request
rate (a token bucket in Redis shared by every process: `ledger.connectors.ratelimit`), each outcome recorded in
a transaction by the posting services (`journals_settle_posted` for the journals the ERP took, set-based, one
transaction for the answers that came in together; `_release` for each failed attempt): the claim, its lease,
the look-up before sending again, every exception code and audit entry are `journal_post`'s.
Waking. The outbox relay does not send one task per journal to an external per-journal ERP; it rings the
entity's doorbell: a Redis key set with NX, and a `post_ready_journals` task only when the key was not set.
A drain keeps the key alive while it runs; when it finds nothing more to claim it deletes the key and claims
once more, so that a journal whose relay found the key set (committed before the relay ran) is claimed either
by that last look or by the drainer its own relay woke. A drain that claimed a full chunk wakes another
drainer (up to TIEOUT_POSTING_DRAINERS per entity), so every worker process takes part in a backlog. A drain
stops after TIEOUT_POSTING_DRAIN_SECONDS and hands over to a fresh task (other work on the queue gets its
turn). If a drainer dies, its key expires after TIEOUT_POSTING_WAKE_TTL seconds and the outbox sweep rings
again for every entity with due ready journals; its claimed journals come back when their lease ends and are
posted one at a time (`post_journal`, looking them up first), not in a chunk.
"""
import concurrent.futures
import time
import uuid

import redis
import structlog
from django.conf import settings
from django.db import connection
from django.db.models import Min, Q
from django.utils import timezone

from config import correlation
from ledger import connectors, tasks
from ledger.connectors.ratelimit import TokenBucket, redis_client
from ledger.models import Entity, Journal
from ledger.services.posting import Claim, _release, _send, journals_claim, journals_settle_posted

log = structlog.get_logger("tieout.posting")
RETRY_CLAIM_AFTER = 0.05  # seconds: a claim that came back short is tried again this soon while posts are in flight
SETTLE_GATHER_SECONDS = 0.005  # how long a drain waits for more answers to record them in the same transaction


def _wake_key(entity_id) -> str:
    return f"tieout:posting:wake:{entity_id}"


def _drainers_key(entity_id) -> str:
    return f"tieout:posting:drainers:{entity_id}"


def _timer_key(entity_id) -> str:
    return f"tieout:posting:timer:{entity_id}"


def concurrent_posting(connector_name: str, posting_mode: str) -> bool:
    """Whether an entity's journals go through drains (an external ERP, one document per journal, a worker)."""
    return (posting_mode == Entity.PostingMode.SINGLE and not connectors.connector_class(connector_name).in_database
            and not settings.CELERY_TASK_ALWAYS_EAGER)


def posting_wake(entity_id) -> bool:
    """Ring the entity's doorbell: a drain is sent (True) unless one is already on its way or running (raises
    when neither Redis nor the broker took it: the outbox row stays undispatched for the sweep)."""
    client = redis_client()
    key = _wake_key(entity_id)
    if not client.set(key, "1", nx=True, ex=int(settings.TIEOUT_POSTING_WAKE_TTL)):
        return False
    member = _placeholder(client, entity_id)
    try:
        tasks.post_ready_journals.apply_async(args=[str(entity_id)], kwargs={"member": member}, queue="posting")
    except Exception:
        client.delete(key)
        client.zrem(_drainers_key(entity_id), member)
        raise
    return True


def posting_wake_due() -> int:
    """The sweep's backstop: ring for every drained entity with ready journals due now (a drainer that died
    with the key set, a lost message). Cheap when a drain is running: the key is set and nothing is sent.
    Returns how many drains it sent."""
    now = timezone.now()
    entity_ids = (Journal.objects.filter(Q(next_attempt_at__isnull=True) | Q(next_attempt_at__lte=now),
                                         Q(posting_claimed_until__isnull=True) | Q(posting_claimed_until__lt=now),
                                         status=Journal.Status.READY,
                                         entity__posting_mode=Entity.PostingMode.SINGLE)
                  .values_list("entity_id", "entity__erp_connector").distinct())
    rung = 0
    for entity_id, connector_name in entity_ids:
        if concurrent_posting(connector_name, Entity.PostingMode.SINGLE):
            try:
                rung += posting_wake(entity_id)
            except Exception as exc:
                log.warning("posting.wake_failed", entity=str(entity_id), error=str(exc))
    return rung


def _placeholder(client, entity_id) -> str:
    """A drainer's place in the entity's set of drainers, taken before its task is sent (so that fan-out counts
    the drainers on their way, not only the running ones)."""
    member = uuid.uuid4().hex
    client.zadd(_drainers_key(entity_id), {member: time.time() + settings.TIEOUT_POSTING_WAKE_TTL})
    return member


def _post_one(connector, bucket: TokenBucket, claim: Claim):
    """In a posting thread: the ERP request(s) of one claimed journal; a 429 pauses the shared bucket for the
    ERP's Retry-After. The claim's token paid for the first request; a post after a look-up takes another."""
    journal = claim.journal

    def token():
        left = bucket.acquire(max_wait=settings.TIEOUT_POSTING_TOKEN_WAIT_SECONDS)
        if left:
            raise connectors.TransientError(f"the ERP's request rate is spent for {left:.1f}s more",
                                            retry_after=left)

    try:
        with correlation.bound(journal.correlation_id or None):
            return _send(connector, journal, claim.look_up_first, before_post=token if claim.look_up_first else None)
    except connectors.TransientError as exc:
        if getattr(exc, "http_status", None) == 429:
            bucket.pause(exc.retry_after if exc.retry_after is not None else settings.TIEOUT_ERP_PAUSE_SECONDS)
        raise
    finally:
        if connection.connection is not None:  # a connector that read the database: its thread's own connection
            connection.close()


class _Drainer:
    def __init__(self, entity: Entity, member: str, actor: str):
        self.entity = entity
        self.member = member
        self.actor = actor
        self.client = redis_client()
        self.posted = 0
        self.failed = 0
        self.fanned_out = 0.0

    # ----------------------------------------------------------------------------------- Redis bookkeeping
    def heartbeat(self) -> None:
        ttl = settings.TIEOUT_POSTING_WAKE_TTL
        try:
            pipe = self.client.pipeline(transaction=False)
            pipe.zadd(_drainers_key(self.entity.pk), {self.member: time.time() + ttl})
            pipe.zremrangebyscore(_drainers_key(self.entity.pk), "-inf", time.time())
            pipe.expire(_drainers_key(self.entity.pk), int(ttl) + 60)
            pipe.expire(_wake_key(self.entity.pk), int(ttl))  # only if set: a drain that is running keeps it
            pipe.execute()
        except redis.RedisError as exc:
            log.warning("posting.drain_heartbeat_failed", entity=self.entity.code, error=str(exc))

    def fan_out(self) -> None:
        """A full claim: more is waiting. Wake one more drainer while fewer than TIEOUT_POSTING_DRAINERS are
        running or on their way."""
        if settings.CELERY_TASK_ALWAYS_EAGER or time.monotonic() - self.fanned_out < 1.0:
            return
        self.fanned_out = time.monotonic()
        try:
            key = _drainers_key(self.entity.pk)
            self.client.zremrangebyscore(key, "-inf", time.time())
            if self.client.zcard(key) >= settings.TIEOUT_POSTING_DRAINERS:
                return
            member = _placeholder(self.client, self.entity.pk)
            tasks.post_ready_journals.apply_async(args=[str(self.entity.pk)], kwargs={"member": member},
                                                  queue="posting")
        except Exception as exc:  # the drain goes on alone
            log.warning("posting.fan_out_failed", entity=self.entity.code, error=str(exc))

    def hand_over(self, countdown: float = 0.0) -> None:
        """Leave the rest to a fresh drain (the doorbell stays rung for it), now or after `countdown`."""
        if settings.CELERY_TASK_ALWAYS_EAGER:
            return
        try:
            # The doorbell is kept for the usual TTL, not the countdown: if this worker dies holding the countdown,
            # the sweep rings again within TTL + its interval (a live countdown longer than that only costs a drain
            # that finds the bucket paused and hands over again).
            self.client.set(_wake_key(self.entity.pk), "1", ex=int(settings.TIEOUT_POSTING_WAKE_TTL))
            member = _placeholder(self.client, self.entity.pk)
            tasks.post_ready_journals.apply_async(args=[str(self.entity.pk)], kwargs={"member": member},
                                                  queue="posting", countdown=countdown)
        except Exception as exc:  # the sweep rings again once the key expires
            log.warning("posting.hand_over_failed", entity=self.entity.code, error=str(exc))

    def leave(self) -> None:
        try:
            self.client.zrem(_drainers_key(self.entity.pk), self.member)
        except redis.RedisError:
            pass

    def release_doorbell(self) -> None:
        try:
            self.client.delete(_wake_key(self.entity.pk))
        except redis.RedisError as exc:
            log.warning("posting.wake_release_failed", entity=self.entity.code, error=str(exc))

    def set_timer(self) -> None:
        """The fast path of the retries the drain recorded: one delayed drain per entity at the earliest due
        time (the outbox sweep sends whatever is due anyway, a little later)."""
        if settings.CELERY_TASK_ALWAYS_EAGER:
            return
        due = (Journal.objects.filter(entity=self.entity, status=Journal.Status.READY,
                                      next_attempt_at__gt=timezone.now())
               .aggregate(due=Min("next_attempt_at"))["due"])
        if due is None:
            return
        countdown = max(0.0, (due - timezone.now()).total_seconds())
        try:
            key = _timer_key(self.entity.pk)
            set_for = self.client.get(key)
            if set_for is not None and float(set_for) <= due.timestamp() + 0.5:
                return  # a timer at least as early is on its way
            self.client.set(key, str(due.timestamp()), px=int(countdown * 1000) + 1000)
            tasks.post_ready_journals.apply_async(args=[str(self.entity.pk)], queue="posting", countdown=countdown)
        except Exception as exc:
            log.warning("posting.timer_failed", entity=self.entity.code, error=str(exc))

    # ------------------------------------------------------------------------------------------ the loop
    def settle(self, finished: list[tuple[Claim, concurrent.futures.Future]], connector_name: str) -> None:
        """Record the answers that came in: the journals the ERP took in one transaction (set-based), each failed
        attempt in its own (`_release`: the retry's due time, or the failure and its exception)."""
        posted = []
        for claim, future in finished:
            journal_id = claim.journal.pk
            exc = future.exception()
            if exc is None:
                posted.append((claim, future.result()))
            elif isinstance(exc, connectors.base.ConnectorError):
                try:
                    _release(journal_id, claim.attempt_id, exc, actor=self.actor)
                except Exception as error:  # the database failed us: the lease brings the journal back
                    log.error("posting.settle_failed", ref=f"journal:{journal_id}", error=repr(error))
                    continue
                self.failed += 1
                log.warning("posting.attempt_failed", ref=f"journal:{journal_id}", error=str(exc),
                            next_attempt_at=str(exc.next_attempt_at) if exc.scheduled else None)
            else:
                # A bug, not an ERP answer: the journal stays claimed; its lease ends and it is posted alone.
                log.error("posting.crashed", ref=f"journal:{journal_id}", error=repr(exc))
        if posted:
            try:
                self.posted += journals_settle_posted(results=posted, connector_name=connector_name,
                                                      actor=self.actor)
            except Exception as error:  # as above: the leases bring them back, and the look-up finds them
                log.error("posting.settle_failed", journals=len(posted), error=repr(error))

    def run(self, connector) -> None:
        in_flight = max(1, int(settings.TIEOUT_POSTING_IN_FLIGHT))
        bucket = TokenBucket.for_connector(connector)
        deadline = time.monotonic() + settings.TIEOUT_POSTING_DRAIN_SECONDS
        pending: dict = {}
        next_claim = 0.0  # monotonic time before which no claim is tried (the last one came back short)
        short = False  # the last claim found fewer due journals than it could take
        beat = 0.0
        with concurrent.futures.ThreadPoolExecutor(max_workers=in_flight, thread_name_prefix="posting") as pool:
            while True:
                now = time.monotonic()
                if now - beat >= 1.0:
                    self.heartbeat()
                    beat = now
                token_wait = 0.0
                free = in_flight - len(pending)
                # Claims come in chunks (a quarter of the room at least): one transaction for several journals.
                if now < deadline and now >= next_claim and (free >= max(1, in_flight // 4) or not pending):
                    granted, token_wait = bucket.take(free)
                    if granted:
                        claims = journals_claim(entity=self.entity, connector_name=connector.name, limit=granted,
                                                actor=self.actor)
                        bucket.give_back(granted - len(claims))
                        for claim in claims:
                            pending[pool.submit(_post_one, connector, bucket, claim)] = claim
                        short = len(claims) < granted
                        if short:
                            next_claim = now + RETRY_CLAIM_AFTER
                        elif granted == free:
                            self.fan_out()
                if pending:
                    # Wake for the first answer, or in time to claim again when there is room for more.
                    room = len(pending) < in_flight and now < deadline
                    timeout = min(1.0, max(0.005, token_wait or RETRY_CLAIM_AFTER)) if room else 1.0
                    done, rest = concurrent.futures.wait(pending, timeout=timeout,
                                                         return_when=concurrent.futures.FIRST_COMPLETED)
                    if done and rest and len(done) < in_flight // 4:
                        # A few milliseconds more: answers recorded together cost one transaction, not several.
                        done |= concurrent.futures.wait(rest, timeout=SETTLE_GATHER_SECONDS)[0]
                    self.settle([(pending.pop(future), future) for future in done], connector.name)
                    continue
                # Nothing in flight.
                if now >= deadline:
                    self.hand_over()  # its drain rings off properly (the doorbell, a last look) when nothing is due
                    break
                if token_wait > 0:  # no token: the ERP's rate, or a Retry-After pause
                    if token_wait > settings.TIEOUT_POSTING_DRAIN_MAX_SLEEP:
                        self.hand_over(countdown=token_wait)
                        break
                    time.sleep(token_wait)
                    continue
                if short:
                    # Nothing due: give the doorbell back, then look once more (a journal committed just before
                    # its relay found the doorbell rung is seen now, or its own relay wakes a new drainer).
                    self.release_doorbell()
                    granted, token_wait = bucket.take(in_flight)
                    if not granted:  # the look needs a token for what it may find
                        if token_wait > settings.TIEOUT_POSTING_DRAIN_MAX_SLEEP:
                            self.hand_over(countdown=token_wait)
                            break
                        time.sleep(token_wait)
                        continue
                    claims = journals_claim(entity=self.entity, connector_name=connector.name, limit=granted,
                                            actor=self.actor)
                    bucket.give_back(granted - len(claims))
                    if not claims:
                        break
                    for claim in claims:
                        pending[pool.submit(_post_one, connector, bucket, claim)] = claim
                    short = len(claims) < granted
                    continue
                time.sleep(0.01)  # not reached in practice: no token and no wait means Redis answered oddly
        self.set_timer()


def posting_drain(*, entity_id, member: str | None = None, actor="system") -> dict:
    """Post the entity's due ready journals, many at once, until none is left or the drain's time is up."""
    entity = Entity.objects.filter(pk=entity_id).first()
    if entity is None:
        return {"posted": 0, "failed": 0}
    drainer = _Drainer(entity, member or uuid.uuid4().hex, actor)
    try:
        drainer.heartbeat()
        if entity.posting_mode != Entity.PostingMode.SINGLE or \
                connectors.connector_class(entity.erp_connector).in_database:
            _one_by_one(entity)  # the entity changed how it posts since it was woken
            return {"posted": 0, "failed": 0}
        try:
            connector = connectors.get_connector(entity)
        except connectors.PermanentError:
            _one_by_one(entity)  # misconfigured: `journal_post` fails each journal with the connector's message
            return {"posted": 0, "failed": 0}
        drainer.run(connector)
    finally:
        drainer.leave()
    return {"posted": drainer.posted, "failed": drainer.failed}


def _one_by_one(entity: Entity) -> None:
    """Hand the entity's ready journals to `post_journal`, which knows every other way of posting one."""
    now = timezone.now()
    ids = (Journal.objects.filter(Q(next_attempt_at__isnull=True) | Q(next_attempt_at__lte=now),
                                  entity=entity, status=Journal.Status.READY)
           .values_list("pk", flat=True)[:1000])
    for journal_id in ids:
        tasks.post_journal.apply_async(args=[str(journal_id)], queue="posting")
