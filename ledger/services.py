"""Ledger write paths: entity set-up, journal creation and reversal, release/rejection, posting, periods.

Each function is one state change: atomic, row-locked where a race matters, audited in the same
transaction. Journals that are ready to post get an outbox row in the same transaction; after commit
the relay hands them to Celery, and a periodic sweep re-sends anything a crash left behind.
"""
import datetime
import uuid
from dataclasses import dataclass, field
from decimal import Decimal

import structlog
from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import F
from django.utils import timezone

from audit import services as audit
from config import correlation, roles
from config.errors import BusinessRuleError, Codes, TieoutError
from ledger import connectors, hooks
from ledger.models import (
    Account, AccountMapping, Entity, EntityAccess, ErpBatch, ErpBatchLine, Journal, JournalLine, Outbox, Period, PostingAttempt,
)
from ledger.money import ZERO, parse_money_input, quantize

log = structlog.get_logger("tieout.ledger")

DEFAULT_CHART = [
    ("1010", "Payment clearing", Account.Type.ASSET),
    ("1200", "Accounts receivable", Account.Type.ASSET),
    ("2200", "Sales tax payable", Account.Type.LIABILITY),
    ("2300", "Unapplied cash", Account.Type.LIABILITY),
    ("4000", "Revenue", Account.Type.INCOME),
    ("4900", "Sales returns and allowances", Account.Type.CONTRA_INCOME),
    ("6100", "Payment processing fees", Account.Type.EXPENSE),
    ("6200", "Bad debt expense", Account.Type.EXPENSE),
]
DEFAULT_MAPPINGS = {
    AccountMapping.Role.CLEARING: "1010",
    AccountMapping.Role.RECEIVABLE: "1200",
    AccountMapping.Role.TAX_PAYABLE: "2200",
    AccountMapping.Role.UNAPPLIED_CASH: "2300",
    AccountMapping.Role.REVENUE: "4000",
    AccountMapping.Role.RETURNS: "4900",
    AccountMapping.Role.FEES: "6100",
    AccountMapping.Role.BAD_DEBT: "6200",
}


# --------------------------------------------------------------------------------------------- entities
@transaction.atomic
def entity_setup(*, code: str, currency: str, name: str | None = None, erp: str = "builtin",
                 actor=None) -> tuple[Entity, bool]:
    """Create an entity with the default chart and mappings; running it again changes nothing."""
    code = code.strip().upper()
    currency = currency.strip().upper()
    if erp not in connectors.REGISTRY:
        raise TieoutError(f"unknown ERP connector {erp!r}", code=Codes.INVALID_REQUEST)
    entity, created = Entity.objects.select_for_update().get_or_create(
        code=code, defaults={"currency": currency, "name": name or code, "erp_connector": erp})
    if not created and entity.currency != currency:
        raise TieoutError(f"entity {code} exists with currency {entity.currency}", code=Codes.INVALID_REQUEST)
    if created:
        audit.record(actor=actor, action="entity.created", object_type="entity", object_id=entity.code,
                     after=audit.model_snapshot(entity, ["code", "name", "currency", "erp_connector"]))
    accounts = {a.code: a for a in entity.accounts.all()}
    for account_code, account_name, account_type in DEFAULT_CHART:
        if account_code not in accounts:
            account = Account.objects.create(entity=entity, code=account_code, name=account_name, type=account_type)
            accounts[account_code] = account
            audit.record(actor=actor, action="account.created", object_type="account",
                         object_id=f"{entity.code}:{account_code}",
                         after={"code": account_code, "name": account_name, "type": account_type})
    existing_roles = set(entity.mappings.values_list("role", flat=True))
    for role, account_code in DEFAULT_MAPPINGS.items():
        if role not in existing_roles:
            AccountMapping.objects.create(entity=entity, role=role, account=accounts[account_code])
            audit.record(actor=actor, action="account_mapping.created", object_type="account_mapping",
                         object_id=f"{entity.code}:{role}", after={"role": role, "account": account_code})
    return entity, created


@transaction.atomic
def account_mapping_set(*, entity: Entity, role: str, account_code: str, actor) -> AccountMapping:
    account = Account.objects.filter(entity=entity, code=account_code).first()
    if account is None:
        raise TieoutError(f"no account {account_code} in {entity.code}", code=Codes.NO_ACCOUNT_MAPPING)
    mapping = AccountMapping.objects.select_for_update().filter(entity=entity, role=role).first()
    before = {"role": role, "account": mapping.account.code} if mapping else None
    if mapping:
        mapping.account = account
        mapping.save(update_fields=["account"])
    else:
        mapping = AccountMapping.objects.create(entity=entity, role=role, account=account)
    audit.record(actor=actor, action="account_mapping.changed", object_type="account_mapping",
                 object_id=f"{entity.code}:{role}", before=before, after={"role": role, "account": account_code})
    return mapping


SECRET_SETTING_SUFFIX = "_env"


def erp_settings_problems(connector: str, erp_settings) -> list[str]:
    """What is wrong with an ERP configuration; secrets themselves are refused (name an env var instead)."""
    if connector not in connectors.REGISTRY:
        return [f"unknown ERP connector {connector!r}"]
    if not isinstance(erp_settings, dict):
        return ["ERP settings must be a JSON object"]
    return [f"setting {key!r} looks like a secret: store the name of an environment variable in "
            f"{key}{SECRET_SETTING_SUFFIX} instead"
            for key in erp_settings
            if any(word in key.lower() for word in ("secret", "password", "token", "key"))
            and not key.endswith(SECRET_SETTING_SUFFIX)]


@transaction.atomic
def entity_configure_erp(*, entity: Entity, connector: str, erp_settings: dict, actor,
                         posting_mode: str | None = None) -> Entity:
    """Point an entity at its ERP. Settings name environment variables for secrets; values are refused."""
    problems = erp_settings_problems(connector, erp_settings)
    if problems:
        raise TieoutError("; ".join(problems), code=Codes.INVALID_REQUEST)
    entity = Entity.objects.select_for_update().get(pk=entity.pk)
    before = {"erp_connector": entity.erp_connector, "erp_settings": entity.erp_settings,
              "posting_mode": entity.posting_mode}
    entity.erp_connector = connector
    entity.erp_settings = {k: v for k, v in erp_settings.items() if v not in (None, "")}
    if posting_mode:
        entity.posting_mode = posting_mode
    entity.save(update_fields=["erp_connector", "erp_settings", "posting_mode"])
    audit.record(actor=actor, action="entity.erp_configured", object_type="entity", object_id=entity.code,
                 before=before, after={"erp_connector": entity.erp_connector, "erp_settings": entity.erp_settings,
                                       "posting_mode": entity.posting_mode})
    return entity


@transaction.atomic
def account_create(*, entity: Entity, code: str, name: str, type_: str, actor, erp_account: str = "") -> Account:
    account = Account.objects.create(entity=entity, code=code, name=name, type=type_, erp_account=erp_account)
    audit.record(actor=actor, action="account.created", object_type="account", object_id=f"{entity.code}:{code}",
                 after={"code": code, "name": name, "type": type_, "erp_account": erp_account})
    return account


@transaction.atomic
def account_update(*, entity: Entity, account_code: str, name: str, is_active: bool, erp_account: str,
                   actor) -> Account:
    account = Account.objects.select_for_update().get(entity=entity, code=account_code)
    fields = ["name", "is_active", "erp_account"]
    before = audit.model_snapshot(account, fields)
    account.name, account.is_active, account.erp_account = name, is_active, erp_account
    account.save(update_fields=fields)
    audit.record(actor=actor, action="account.changed", object_type="account",
                 object_id=f"{entity.code}:{account_code}", before=before, after=audit.model_snapshot(account, fields))
    return account


@transaction.atomic
def account_set_erp_name(*, entity: Entity, account_code: str, erp_account: str, actor) -> Account:
    account = Account.objects.select_for_update().filter(entity=entity, code=account_code).first()
    if account is None:
        raise TieoutError(f"no account {account_code} in {entity.code}", code=Codes.NO_ACCOUNT_MAPPING)
    before = account.erp_account
    account.erp_account = erp_account
    account.save(update_fields=["erp_account"])
    audit.record(actor=actor, action="account.erp_mapped", object_type="account",
                 object_id=f"{entity.code}:{account_code}", before={"erp_account": before},
                 after={"erp_account": erp_account})
    return account


@transaction.atomic
def entity_rename(*, entity: Entity, name: str, actor) -> Entity:
    entity = Entity.objects.select_for_update().get(pk=entity.pk)
    before = entity.name
    entity.name = name
    entity.save(update_fields=["name"])
    audit.record(actor=actor, action="entity.renamed", object_type="entity", object_id=entity.code,
                 before={"name": before}, after={"name": name})
    return entity


@transaction.atomic
def entity_access_set(*, user, entity_codes: list[str] | None, actor) -> EntityAccess:
    """Grant `user` exactly these entities (None: every entity, present and future). Audited."""
    access, created = EntityAccess.objects.select_for_update().get_or_create(user=user)
    before = None if created else {"all_entities": access.all_entities,
                                   "entities": sorted(access.entities.values_list("code", flat=True))}
    if entity_codes is None:
        entities = []
    else:
        entities = list(Entity.objects.filter(code__in=set(entity_codes)))
        unknown = set(entity_codes) - {e.code for e in entities}
        if unknown:
            raise TieoutError(f"unknown entities: {', '.join(sorted(unknown))}", code=Codes.UNKNOWN_ENTITY,
                              status=422)
    access.all_entities = entity_codes is None
    access.save()
    access.entities.set(entities)
    after = {"all_entities": access.all_entities, "entities": sorted(e.code for e in entities)}
    if after != before:
        audit.record(actor=actor, action="user.entities_granted", object_type="user",
                     object_id=user.get_username(), before=before, after=after)
    user.__dict__.pop("_tieout_entities", None)
    return access


def entity_test_connection(*, entity: Entity) -> str:
    """Ask the entity's ERP who we are; raises a connector error with the ERP's message when it fails."""
    return connectors.get_connector(entity).test_connection()


# --------------------------------------------------------------------------------------------- periods
def period_is_closed(entity: Entity, day: datetime.date) -> bool:
    return Period.objects.filter(entity=entity, year=day.year, month=day.month, status=Period.Status.CLOSED).exists()


def require_open_period(entity: Entity, day: datetime.date) -> None:
    if period_is_closed(entity, day):
        raise BusinessRuleError(Codes.PERIOD_CLOSED,
                                f"period {day:%Y-%m} of {entity.code} is closed; nothing is posted into it")


@transaction.atomic
def period_set_status(*, entity: Entity, year: int, month: int, status: str, actor) -> Period:
    period, _ = Period.objects.get_or_create(entity=entity, year=year, month=month)
    period = Period.objects.select_for_update().get(pk=period.pk)
    before = period.status
    if before == status:
        return period
    period.status = status
    period.closed_at = timezone.now() if status == Period.Status.CLOSED else None
    period.closed_by = audit.actor_label(actor) if status == Period.Status.CLOSED else ""
    period.save(update_fields=["status", "closed_at", "closed_by"])
    audit.record(actor=actor, action=f"period.{'closed' if status == Period.Status.CLOSED else 'reopened'}",
                 object_type="period", object_id=f"{entity.code}:{year}-{month:02d}",
                 before={"status": before}, after={"status": status})
    return period


# --------------------------------------------------------------------------------------------- journals
@dataclass
class LineSpec:
    debit: Decimal = ZERO
    credit: Decimal = ZERO
    role: str | None = None
    account_code: str | None = None  # an explicit account (an invoice line's revenue_account)
    customer_id: str = ""
    invoice_id: str = ""
    payment_id: str = ""
    jurisdiction: str = ""
    memo: str = ""


@dataclass
class JournalSpec:
    entity: Entity
    accounting_date: datetime.date
    kind: str
    lines: list[LineSpec]
    event_id: object = None
    source_system: str = ""
    document_type: str = ""
    document_id: str = ""
    document_version: int | None = None
    description: str = ""
    needs_approval: bool = False
    reverses: Journal | None = None
    extra: dict = field(default_factory=dict)


def _resolve_accounts(entity: Entity, lines: list[LineSpec]) -> dict[str, Account]:
    wanted = {line.role for line in lines if line.role}
    codes = {line.account_code for line in lines if line.account_code}
    mapped = {m.role: m.account for m in AccountMapping.objects.select_related("account")
              .filter(entity=entity, role__in=wanted)}
    missing = wanted - set(mapped)
    if missing:
        raise BusinessRuleError(Codes.NO_ACCOUNT_MAPPING,
                                f"{entity.code} has no account mapped for {', '.join(sorted(missing))}")
    by_code = {a.code: a for a in Account.objects.filter(entity=entity, code__in=codes, is_active=True)}
    unknown = codes - set(by_code)
    if unknown:
        raise BusinessRuleError(Codes.NO_ACCOUNT_MAPPING,
                                f"{entity.code} has no active account {', '.join(sorted(unknown))}")
    resolved = {f"role:{k}": v for k, v in mapped.items()}
    resolved.update({f"code:{k}": v for k, v in by_code.items()})
    return resolved


def journal_create(spec: JournalSpec, *, actor) -> Journal:
    """Write a balanced journal (and its outbox row when it can post at once). Caller holds the transaction."""
    if not transaction.get_connection().in_atomic_block:
        raise RuntimeError("journal_create runs inside the caller's transaction")
    entity = spec.entity
    require_open_period(entity, spec.accounting_date)
    currency = entity.currency
    lines = []
    for line in spec.lines:
        debit, credit = quantize(line.debit, currency), quantize(line.credit, currency)
        if debit == ZERO and credit == ZERO:
            continue  # a zero fee or zero tax produces no line
        if debit < ZERO or credit < ZERO:
            raise TieoutError(f"journal for {spec.kind} has a negative amount", code=Codes.INVALID_STATE, status=500)
        lines.append((line, debit, credit))
    total_debit = sum((d for _, d, _ in lines), ZERO)
    total_credit = sum((c for _, _, c in lines), ZERO)
    if total_debit != total_credit or not lines:
        # The database would refuse it at commit too; this is the readable message.
        raise TieoutError(f"journal for {spec.kind} does not balance ({total_debit} / {total_credit})",
                          code=Codes.INVALID_STATE, status=500)
    accounts = _resolve_accounts(entity, [line for line, _, _ in lines])
    status = Journal.Status.PENDING_APPROVAL if spec.needs_approval else Journal.Status.READY
    cid = correlation.get() or ""
    journal = Journal.objects.create(
        entity=entity, status=status, accounting_date=spec.accounting_date, event_id=spec.event_id,
        reverses=spec.reverses, kind=spec.kind, source_system=spec.source_system,
        document_type=spec.document_type, document_id=spec.document_id, document_version=spec.document_version,
        description=spec.description[:300], correlation_id=cid, created_by=audit.actor_label(actor))
    JournalLine.objects.bulk_create([
        JournalLine(journal=journal, line_no=index, account=accounts[f"role:{line.role}" if line.role
                                                                      else f"code:{line.account_code}"],
                    debit=debit, credit=credit, customer_id=line.customer_id, invoice_id=line.invoice_id,
                    payment_id=line.payment_id, jurisdiction=line.jurisdiction, memo=line.memo[:300])
        for index, (line, debit, credit) in enumerate(lines, start=1)
    ])
    audit.record(actor=actor, action="journal.created", object_type="journal", object_id=journal.pk,
                 event_id=spec.event_id,
                 after={"status": status, "kind": spec.kind, "accounting_date": spec.accounting_date,
                        "reverses": spec.reverses.pk if spec.reverses else None,
                        "lines": [{"account": accounts[f"role:{ln.role}" if ln.role else f"code:{ln.account_code}"].code,
                                   "debit": d, "credit": c, "customer_id": ln.customer_id,
                                   "invoice_id": ln.invoice_id, "jurisdiction": ln.jurisdiction}
                                  for ln, d, c in lines]})
    if status == Journal.Status.READY:
        _enqueue(journal)
    return journal


def journal_reversal(*, original: Journal, accounting_date: datetime.date, kind: str, event_id, actor,
                     description: str = "") -> Journal:
    """A new journal with every line of `original` on the other side; `original` itself never changes."""
    lines = [LineSpec(debit=line.credit, credit=line.debit, account_code=line.account.code,
                      customer_id=line.customer_id, invoice_id=line.invoice_id, payment_id=line.payment_id,
                      jurisdiction=line.jurisdiction, memo=f"reversal of line {line.line_no}")
             for line in original.lines.select_related("account").order_by("line_no")]
    return journal_create(JournalSpec(
        entity=original.entity, accounting_date=accounting_date, kind=kind, lines=lines, event_id=event_id,
        source_system=original.source_system, document_type=original.document_type,
        document_id=original.document_id, document_version=original.document_version,
        description=description or f"Reversal of {original.pk}", reverses=original), actor=actor)


def _enqueue(journal: Journal) -> None:
    outbox = Outbox.objects.create(journal=journal)
    transaction.on_commit(lambda: relay([outbox.pk]))


def relay(outbox_ids: list[int]) -> None:
    """Hand outbox rows to Celery (after commit). A crash before this line is repaired by the sweep."""
    from ledger.tasks import post_journal

    rows = (Outbox.objects.filter(pk__in=outbox_ids, dispatched_at__isnull=True)
            .values_list("pk", "journal_id", "journal__entity__erp_connector", "journal__entity__posting_mode"))
    for pk, journal_id, connector_name, posting_mode in rows:
        if posting_mode == Entity.PostingMode.BATCH and connector_name != "builtin":
            continue  # batch mode: the sweep gathers ready journals into batches (form_erp_batches)
        if connectors.connector_class(connector_name).in_database and not settings.CELERY_TASK_ALWAYS_EAGER:
            # The built-in ledger needs no network: post right here rather than pay a broker round trip
            # and a second task. Whatever goes wrong falls back to the queue (and the sweep).
            try:
                journal_post(journal_id=journal_id)
                Outbox.objects.filter(pk=pk, dispatched_at__isnull=True).update(
                    dispatched_at=timezone.now(), dispatch_count=F("dispatch_count") + 1)
                continue
            except Exception as exc:
                log.warning("outbox.inline_post_failed", outbox=pk, error=str(exc))
        try:
            post_journal.apply_async(args=[str(journal_id)], queue="posting")
        except Exception as exc:  # broker down: the sweep re-sends; the API must not fail for it
            log.warning("outbox.relay_failed", outbox=pk, error=str(exc))
            continue
        Outbox.objects.filter(pk=pk, dispatched_at__isnull=True).update(
            dispatched_at=timezone.now(), dispatch_count=F("dispatch_count") + 1)


def sweep_outbox(*, older_than_seconds: int) -> int:
    """Re-send outbox rows that were never dispatched (crash between commit and enqueue, broker outage)."""
    cutoff = timezone.now() - datetime.timedelta(seconds=older_than_seconds)
    ids = list(Outbox.objects.filter(dispatched_at__isnull=True, created_at__lte=cutoff)
               .order_by("created_at").values_list("pk", flat=True)[:1000])
    if ids:
        relay(ids)
    # A worker died while it held a journal (SIGKILL, OOM): once the lease is over, post it again;
    # journal_post looks it up in the ERP first, so an entry the ERP already took is not sent twice.
    expired = list(Journal.objects.filter(status=Journal.Status.POSTING, posting_claimed_until__lt=timezone.now())
                   .values_list("pk", flat=True)[:1000])
    for journal_id in expired:
        with transaction.atomic():
            journal = Journal.objects.select_for_update().get(pk=journal_id)
            if journal.status == Journal.Status.POSTING and journal.posting_claimed_until < timezone.now():
                _enqueue(journal)
    # Journals still ready long after dispatch (a lost message) get a fresh outbox row.
    stale = (Journal.objects.filter(status=Journal.Status.READY, created_at__lte=cutoff - datetime.timedelta(minutes=10))
             .exclude(outbox__dispatched_at__gte=cutoff - datetime.timedelta(minutes=10))
             .values_list("pk", flat=True)[:1000])
    for journal_id in stale:
        with transaction.atomic():
            journal = Journal.objects.select_for_update().get(pk=journal_id)
            if journal.status == Journal.Status.READY:
                _enqueue(journal)
    return len(ids)


@transaction.atomic
def journal_release(*, journal_id, actor) -> Journal:
    """An approved journal becomes ready to post (its period must still be open)."""
    journal = Journal.objects.select_for_update().select_related("entity").get(pk=journal_id)
    if journal.status != Journal.Status.PENDING_APPROVAL:
        raise TieoutError(f"journal {journal.pk} is {journal.status}, not pending approval", code=Codes.INVALID_STATE,
                          status=409)
    require_open_period(journal.entity, journal.accounting_date)
    journal.status = Journal.Status.READY
    journal.save(update_fields=["status"])
    audit.record(actor=actor, action="journal.released", object_type="journal", object_id=journal.pk,
                 event_id=journal.event_id, before={"status": "pending_approval"}, after={"status": "ready"})
    _enqueue(journal)
    return journal


@transaction.atomic
def journal_reject(*, journal_id, actor) -> Journal:
    journal = Journal.objects.select_for_update().get(pk=journal_id)
    if journal.status != Journal.Status.PENDING_APPROVAL:
        raise TieoutError(f"journal {journal.pk} is {journal.status}, not pending approval", code=Codes.INVALID_STATE,
                          status=409)
    journal.status = Journal.Status.REJECTED
    journal.save(update_fields=["status"])
    audit.record(actor=actor, action="journal.rejected", object_type="journal", object_id=journal.pk,
                 event_id=journal.event_id, before={"status": "pending_approval"}, after={"status": "rejected"})
    return journal


# --------------------------------------------------------------------------------------------- posting
@dataclass
class PostOutcome:
    journal_id: object
    status: str
    erp_document_ref: str | None = None




def journal_post(*, journal_id, actor="system") -> PostOutcome:
    """Post one journal through its entity's connector. Safe to run twice and after a crash.

    The built-in connector posts inside our own transaction. An external ERP is called outside any
    transaction, between a claim (status `posting`, a lease, an attempt row) and the acknowledgement.
    Once a journal has been attempted, every later attempt looks it up by our reference first: a
    crash or an ambiguous failure may have left it in the ERP, and it must never be created twice.
    """
    with transaction.atomic():
        journal = Journal.objects.select_for_update().select_related("entity").filter(pk=journal_id).first()
        if journal is None:
            raise TieoutError(f"no journal {journal_id}", code=Codes.NOT_FOUND, status=404)
        if journal.status not in (Journal.Status.READY, Journal.Status.POSTING):  # failed: only a retry re-posts
            return PostOutcome(journal.pk, journal.status, journal.erp_document_ref)
        with correlation.bound(journal.correlation_id or None):
            if period_is_closed(journal.entity, journal.accounting_date):
                _fail(journal, Codes.PERIOD_CLOSED,
                      f"period {journal.accounting_date:%Y-%m} of {journal.entity.code} is closed", actor=actor)
                return PostOutcome(journal.pk, journal.status)
            connector = connectors.get_connector(journal.entity)
            if connector.in_database:
                result = connector.post_journal(journal)
                _mark_posted(journal, result, connector.name, actor=actor)
                return PostOutcome(journal.pk, Journal.Status.POSTED, result.erp_document_ref)
            if journal.entity.posting_mode == Entity.PostingMode.BATCH:
                if journal.erp_batch_id is None:
                    _batch_add(journal, actor=actor)
                return PostOutcome(journal.pk, journal.status)
            attempt, look_up_first = _claim(journal, connector.name, actor=actor)
    with correlation.bound(journal.correlation_id or None):
        try:
            result = connector.lookup(journal) if look_up_first else None
            if result is None:
                result = connector.post_journal(journal)
        except connectors.base.ConnectorError as exc:
            _release(journal.pk, attempt.pk, exc, actor=actor)
            raise
        with transaction.atomic():
            journal = Journal.objects.select_for_update().select_related("entity").get(pk=journal_id)
            if journal.status == Journal.Status.POSTED:
                return PostOutcome(journal.pk, journal.status, journal.erp_document_ref)
            _mark_posted(journal, result, connector.name, actor=actor, attempt_id=attempt.pk)
    return PostOutcome(journal.pk, Journal.Status.POSTED, result.erp_document_ref)


def _claim(journal: Journal, connector_name: str, *, actor) -> tuple[PostingAttempt, bool]:
    now = timezone.now()
    if journal.status == Journal.Status.POSTING and journal.posting_claimed_until and \
            journal.posting_claimed_until > now:
        wait = (journal.posting_claimed_until - now).total_seconds()
        raise connectors.TransientError("another worker is posting this journal", retry_after=wait)
    # An attempt still in progress was abandoned by a worker that died (SIGKILL, OOM, a crash in the
    # connector). Transient ERP failures are bounded by the task's retries; deaths are bounded here, so a
    # task that kills its worker every time is parked instead of looping.
    lost = journal.attempts.filter(outcome=PostingAttempt.Outcome.IN_PROGRESS).update(
        outcome=PostingAttempt.Outcome.ABANDONED, finished_at=now, message="the worker stopped before the ERP answered")
    if lost:
        journal.deliveries_lost += lost
        journal.save(update_fields=["deliveries_lost"])
    if journal.deliveries_lost >= settings.TIEOUT_POSTING_MAX_DELIVERIES:
        raise connectors.PermanentError(
            f"parked after {journal.deliveries_lost} deliveries whose worker died; last error: "
            f"{journal.last_error or 'none'}")
    # Any earlier attempt may have reached the ERP (a crash, an ambiguous answer): look before sending.
    look_up_first = journal.status == Journal.Status.POSTING or journal.attempts.exists()
    before = journal.status
    journal.status = Journal.Status.POSTING
    journal.posting_claimed_until = now + datetime.timedelta(seconds=settings.TIEOUT_POSTING_LEASE_SECONDS)
    journal.posting_attempts += 1
    journal.save(update_fields=["status", "posting_claimed_until", "posting_attempts"])
    attempt = PostingAttempt.objects.create(journal=journal, started_at=now, connector=connector_name,
                                            outcome=PostingAttempt.Outcome.IN_PROGRESS)
    if before != Journal.Status.POSTING:
        audit.record(actor=actor, action="journal.posting", object_type="journal", object_id=journal.pk,
                     event_id=journal.event_id, before={"status": before},
                     after={"status": "posting", "attempt": journal.posting_attempts})
    return attempt, look_up_first


def _release(journal_id, attempt_id, exc, *, actor) -> None:
    """An attempt failed: record its outcome and free the journal for the next try (or the exception)."""
    outcome = {connectors.TransientError: PostingAttempt.Outcome.TRANSIENT,
               connectors.AmbiguousError: PostingAttempt.Outcome.AMBIGUOUS}.get(type(exc),
                                                                                 PostingAttempt.Outcome.PERMANENT)
    with transaction.atomic():
        journal = Journal.objects.select_for_update().get(pk=journal_id)
        PostingAttempt.objects.filter(pk=attempt_id).update(finished_at=timezone.now(), outcome=outcome,
                                                            message=f"{exc}: {exc.erp_message}"[:4000])
        if journal.status == Journal.Status.POSTING:
            journal.status = Journal.Status.READY
            journal.posting_claimed_until = None
            journal.last_error = exc.erp_message[:4000]
            journal.save(update_fields=["status", "posting_claimed_until", "last_error"])
            audit.record(actor=actor, action="journal.attempt_failed", object_type="journal", object_id=journal.pk,
                         event_id=journal.event_id, before={"status": "posting"},
                         after={"status": "ready", "outcome": outcome, "error": exc.erp_message[:1000]})


def _mark_posted(journal: Journal, result: connectors.PostResult, connector_name: str, *, actor,
                 attempt_id=None) -> None:
    now = timezone.now()
    before = journal.status
    journal.status = Journal.Status.POSTED
    journal.erp_document_ref = result.erp_document_ref
    journal.posted_at = now
    journal.posting_claimed_until = None
    if attempt_id is None:
        journal.posting_attempts += 1
    journal.last_error = ""
    journal.save(update_fields=["status", "erp_document_ref", "posted_at", "posting_attempts", "posting_claimed_until",
                                "last_error"])
    outcome = PostingAttempt.Outcome.ALREADY_POSTED if result.already_existed else PostingAttempt.Outcome.POSTED
    if attempt_id is None:
        PostingAttempt.objects.create(journal=journal, started_at=now, finished_at=now, connector=connector_name,
                                      outcome=outcome, erp_document_ref=result.erp_document_ref)
    else:
        PostingAttempt.objects.filter(pk=attempt_id).update(finished_at=now, outcome=outcome,
                                                            erp_document_ref=result.erp_document_ref)
    Outbox.objects.filter(journal=journal, dispatched_at__isnull=True).update(dispatched_at=now)
    audit.record(actor=actor, action="journal.posted", object_type="journal", object_id=journal.pk,
                 event_id=journal.event_id, before={"status": before},
                 after={"status": "posted", "erp_document_ref": result.erp_document_ref})
    hooks.journals_posted.send(journals=[journal], actor=actor)


def _fail(journal: Journal, code: str, message: str, *, actor) -> None:
    journal.attempts.filter(outcome=PostingAttempt.Outcome.IN_PROGRESS).update(
        outcome=PostingAttempt.Outcome.ABANDONED, finished_at=timezone.now(),
        message="the worker stopped before the ERP answered")
    before = journal.status
    journal.status = Journal.Status.FAILED
    journal.posting_claimed_until = None
    journal.last_error = message
    journal.save(update_fields=["status", "posting_claimed_until", "last_error"])
    Outbox.objects.filter(journal=journal, dispatched_at__isnull=True).update(dispatched_at=timezone.now())
    PostingAttempt.objects.create(journal=journal, finished_at=timezone.now(), connector=journal.entity.erp_connector,
                                  outcome=PostingAttempt.Outcome.PERMANENT, message=message)
    audit.record(actor=actor, action="journal.failed", object_type="journal", object_id=journal.pk,
                 event_id=journal.event_id, before={"status": before}, after={"status": "failed", "error": message})
    hooks.journal_failed.send(journal=journal, code=code, message=message, actor=actor)


def journal_post_failed(*, journal_id, message: str, actor="system") -> None:
    """The posting task gave up (retries spent or a permanent ERP error): record it and open an exception."""
    with transaction.atomic():
        journal = Journal.objects.select_for_update().select_related("entity").get(pk=journal_id)
        if journal.status in (Journal.Status.POSTED, Journal.Status.FAILED):
            return
        _fail(journal, Codes.POSTING_FAILED, message, actor=actor)


@transaction.atomic
def journal_retry(*, journal_id, actor) -> Journal:
    """Send a failed journal to the ERP again (from its exception's retry)."""
    journal = Journal.objects.select_for_update().get(pk=journal_id)
    if journal.status != Journal.Status.FAILED:
        return journal
    journal.status = Journal.Status.READY
    journal.deliveries_lost = 0  # a person asked again: a fresh budget of deliveries
    journal.erp_batch = None  # a failed batch is not sent again: the journal joins a new one
    journal.save(update_fields=["status", "deliveries_lost", "erp_batch"])
    audit.record(actor=actor, action="journal.retry", object_type="journal", object_id=journal.pk,
                 event_id=journal.event_id, before={"status": "failed"}, after={"status": "ready"})
    _enqueue(journal)
    return journal


# --------------------------------------------------------------------------------------------- batch mode
def _batch_add(journal: Journal, *, actor) -> ErpBatch:
    """Add a ready journal to its entity's open batch for the day (caller holds the journal's lock)."""
    entity = journal.entity
    for _ in range(3):
        batch = (ErpBatch.objects.select_for_update()
                 .filter(entity=entity, accounting_date=journal.accounting_date, status=ErpBatch.Status.OPEN).first())
        if batch is not None:
            break
        try:
            with transaction.atomic():
                batch = ErpBatch.objects.create(entity=entity, accounting_date=journal.accounting_date)
            batch = ErpBatch.objects.select_for_update().get(pk=batch.pk)
            break
        except IntegrityError:  # another worker opened today's batch first: use that one
            continue
    else:
        raise connectors.TransientError("could not open a batch; will retry")
    sums: dict[int, list[Decimal]] = {}
    for line in journal.lines.all():
        pair = sums.setdefault(line.account_id, [ZERO, ZERO])
        pair[0] += line.debit
        pair[1] += line.credit
    existing = {row.account_id: row for row in ErpBatchLine.objects.filter(batch=batch, account_id__in=sums)}
    for account_id, (debit, credit) in sums.items():
        row = existing.get(account_id)
        if row is None:
            ErpBatchLine.objects.create(batch=batch, account_id=account_id, debit=debit, credit=credit)
        else:
            row.debit += debit
            row.credit += credit
            row.save(update_fields=["debit", "credit"])
    batch.journal_count += 1
    batch.save(update_fields=["journal_count"])
    before = journal.status
    journal.status = Journal.Status.POSTING
    journal.erp_batch = batch
    journal.save(update_fields=["status", "erp_batch"])
    audit.record(actor=actor, action="journal.batched", object_type="journal", object_id=journal.pk,
                 event_id=journal.event_id, before={"status": before},
                 after={"status": "posting", "erp_batch": batch.pk})
    if batch.journal_count >= settings.TIEOUT_BATCH_MAX_JOURNALS:
        _batch_close(batch, actor=actor)
    return batch


def _batch_close(batch: ErpBatch, *, actor) -> None:
    """Stop adding to a batch, net each account to one side, and hand it to the posting queue."""
    for row in ErpBatchLine.objects.select_for_update().filter(batch=batch):
        net = row.debit - row.credit
        if net == ZERO:
            row.delete()
            continue
        row.debit, row.credit = (net, ZERO) if net > ZERO else (ZERO, -net)
        row.save(update_fields=["debit", "credit"])
    batch.status = ErpBatch.Status.READY
    batch.closed_at = timezone.now()
    batch.save(update_fields=["status", "closed_at"])
    audit.record(actor=actor, action="erp_batch.closed", object_type="erp_batch", object_id=batch.pk,
                 after={"journals": batch.journal_count, "accounting_date": batch.accounting_date})
    transaction.on_commit(lambda: _send_batch(batch.pk))


def _send_batch(batch_id) -> None:
    from ledger.tasks import post_erp_batch

    try:
        post_erp_batch.apply_async(args=[str(batch_id)], queue="posting")
    except Exception as exc:  # the sweep re-sends
        log.warning("erp_batch.send_failed", batch=str(batch_id), error=str(exc))


_BATCH_LINES_SQL = """
INSERT INTO ledger_erpbatchline (batch_id, account_id, debit, credit)
SELECT %s, account_id, GREATEST(SUM(debit) - SUM(credit), 0), GREATEST(SUM(credit) - SUM(debit), 0)
FROM ledger_journalline WHERE journal_id = ANY(%s)
GROUP BY account_id HAVING SUM(debit) <> SUM(credit)
"""


def form_erp_batches(*, actor="system") -> int:
    """Gather ready journals of batch-mode entities into closed batches, set-based.

    The relay does not hand batch-mode journals to one task each (that would serialise every worker on
    the day's open batch); they wait `ready` and this, run by the sweep, moves up to
    TIEOUT_BATCH_MAX_JOURNALS of them per entity and day into a batch in a few statements: the batch's
    net lines by one INSERT ... SELECT ... GROUP BY, the journals by one UPDATE. SKIP LOCKED lets two
    sweeps run at once without waiting on each other or taking the same journal.
    """
    formed = 0
    with transaction.atomic():
        rows = list(Journal.objects.select_for_update(skip_locked=True, of=("self",))
                    .filter(status=Journal.Status.READY, erp_batch__isnull=True,
                            entity__posting_mode=Entity.PostingMode.BATCH)
                    .exclude(entity__erp_connector="builtin")
                    .order_by("created_at").values_list("pk", "entity_id", "accounting_date", "event_id")[:20_000])
        groups: dict = {}
        for pk, entity_id, day, event_id in rows:
            groups.setdefault((entity_id, day), []).append((pk, event_id))
        size = settings.TIEOUT_BATCH_MAX_JOURNALS
        now = timezone.now()
        for (entity_id, day), members in groups.items():
            for start in range(0, len(members), size):
                chunk = members[start:start + size]
                ids = [pk for pk, _ in chunk]
                batch = ErpBatch.objects.create(entity_id=entity_id, accounting_date=day, status=ErpBatch.Status.READY,
                                                journal_count=len(ids), closed_at=now)
                with transaction.get_connection().cursor() as cursor:
                    cursor.execute(_BATCH_LINES_SQL, [batch.pk, ids])
                Journal.objects.filter(pk__in=ids).update(status=Journal.Status.POSTING, erp_batch=batch)
                Outbox.objects.filter(journal_id__in=ids, dispatched_at__isnull=True).update(dispatched_at=now)
                audit.record_many([{"actor": actor, "action": "journal.batched", "object_type": "journal",
                                    "object_id": pk, "event_id": event_id, "before": {"status": "ready"},
                                    "after": {"status": "posting", "erp_batch": str(batch.pk)}}
                                   for pk, event_id in chunk]
                                  + [{"actor": actor, "action": "erp_batch.closed", "object_type": "erp_batch",
                                      "object_id": batch.pk, "after": {"journals": len(ids), "accounting_date": day}}])
                transaction.on_commit(lambda batch_id=batch.pk: _send_batch(batch_id))
                formed += 1
    return formed


def sweep_erp_batches(*, window_seconds: float) -> int:
    """Form batches from waiting journals, close batches whose window has passed, re-send stuck ones."""
    now = timezone.now()
    count = form_erp_batches()
    for batch_id in ErpBatch.objects.filter(status=ErpBatch.Status.OPEN,
                                            created_at__lte=now - datetime.timedelta(seconds=window_seconds)
                                            ).values_list("pk", flat=True)[:500]:
        with transaction.atomic():
            batch = ErpBatch.objects.select_for_update().get(pk=batch_id)
            if batch.status == ErpBatch.Status.OPEN:
                _batch_close(batch, actor="system")
                count += 1
    stale = ErpBatch.objects.filter(status=ErpBatch.Status.READY, closed_at__lte=now - datetime.timedelta(
        seconds=window_seconds)) | ErpBatch.objects.filter(status=ErpBatch.Status.POSTING, posting_claimed_until__lt=now)
    for batch_id in stale.values_list("pk", flat=True)[:500]:
        _send_batch(batch_id)
        count += 1
    return count


def erp_batch_post(*, batch_id, actor="system") -> PostOutcome:
    """Post a closed batch as one ERP document; on acknowledgement every member journal is posted."""
    with transaction.atomic():
        batch = ErpBatch.objects.select_for_update().select_related("entity").get(pk=batch_id)
        if batch.status not in (ErpBatch.Status.READY, ErpBatch.Status.POSTING):
            return PostOutcome(batch.pk, batch.status, batch.erp_document_ref)
        now = timezone.now()
        if batch.status == ErpBatch.Status.POSTING and batch.posting_claimed_until and batch.posting_claimed_until > now:
            raise connectors.TransientError("another worker is posting this batch",
                                            retry_after=(batch.posting_claimed_until - now).total_seconds())
        if batch.posting_attempts >= settings.TIEOUT_POSTING_MAX_DELIVERIES:
            raise connectors.PermanentError(f"batch parked after {batch.posting_attempts} delivery attempts; "
                                            f"last error: {batch.last_error or 'none'}")
        look_up_first = batch.posting_attempts > 0
        batch.status = ErpBatch.Status.POSTING
        batch.posting_attempts += 1
        batch.posting_claimed_until = now + datetime.timedelta(seconds=settings.TIEOUT_POSTING_LEASE_SECONDS)
        batch.save(update_fields=["status", "posting_attempts", "posting_claimed_until"])
        connector = connectors.get_connector(batch.entity)
    try:
        result = connector.lookup(batch) if look_up_first else None
        if result is None:
            result = connector.post_journal(batch)
    except connectors.base.ConnectorError as exc:
        with transaction.atomic():
            batch = ErpBatch.objects.select_for_update().get(pk=batch_id)
            if batch.status == ErpBatch.Status.POSTING:
                batch.status = ErpBatch.Status.READY
                batch.posting_claimed_until = None
                batch.last_error = exc.erp_message[:4000]
                batch.save(update_fields=["status", "posting_claimed_until", "last_error"])
        raise
    with transaction.atomic():
        batch = ErpBatch.objects.select_for_update().get(pk=batch_id)
        if batch.status == ErpBatch.Status.POSTED:
            return PostOutcome(batch.pk, batch.status, batch.erp_document_ref)
        now = timezone.now()
        batch.status = ErpBatch.Status.POSTED
        batch.erp_document_ref = result.erp_document_ref
        batch.posted_at = now
        batch.posting_claimed_until = None
        batch.save(update_fields=["status", "erp_document_ref", "posted_at", "posting_claimed_until"])
        audit.record(actor=actor, action="erp_batch.posted", object_type="erp_batch", object_id=batch.pk,
                     after={"erp_document_ref": result.erp_document_ref, "journals": batch.journal_count})
        _mark_batch_journals_posted(batch, result, connector.name, actor=actor)
    return PostOutcome(batch.pk, ErpBatch.Status.POSTED, result.erp_document_ref)


def _mark_batch_journals_posted(batch: ErpBatch, result: connectors.PostResult, connector_name: str, *,
                                actor) -> None:
    """Every member journal is posted by the batch's acknowledgement: set-based, so a batch of 500 costs
    a handful of statements rather than a dozen per journal."""
    journals = list(Journal.objects.select_for_update().filter(erp_batch=batch, status=Journal.Status.POSTING)
                    .only("pk", "event_id"))
    if not journals:
        return
    now = timezone.now()
    ids = [j.pk for j in journals]
    Journal.objects.filter(pk__in=ids).update(status=Journal.Status.POSTED, erp_document_ref=result.erp_document_ref,
                                              posted_at=now, posting_claimed_until=None, last_error="")
    PostingAttempt.objects.bulk_create([
        PostingAttempt(journal_id=pk, started_at=now, finished_at=now, connector=connector_name,
                       outcome=PostingAttempt.Outcome.POSTED, erp_document_ref=result.erp_document_ref,
                       message=f"in batch {batch.pk}") for pk in ids])
    Outbox.objects.filter(journal_id__in=ids, dispatched_at__isnull=True).update(dispatched_at=now)
    audit.record_many([{"actor": actor, "action": "journal.posted", "object_type": "journal", "object_id": j.pk,
                        "event_id": j.event_id, "before": {"status": "posting"},
                        "after": {"status": "posted", "erp_document_ref": result.erp_document_ref,
                                  "erp_batch": str(batch.pk)}} for j in journals])
    hooks.journals_posted.send(journals=journals, actor=actor)


def erp_batch_failed(*, batch_id, message: str, actor="system") -> None:
    """The batch could not be posted: it and its journals fail, each journal with its exception."""
    with transaction.atomic():
        batch = ErpBatch.objects.select_for_update().get(pk=batch_id)
        if batch.status in (ErpBatch.Status.POSTED, ErpBatch.Status.FAILED):
            return
        batch.status = ErpBatch.Status.FAILED
        batch.posting_claimed_until = None
        batch.last_error = message[:4000]
        batch.save(update_fields=["status", "posting_claimed_until", "last_error"])
        audit.record(actor=actor, action="erp_batch.failed", object_type="erp_batch", object_id=batch.pk,
                     after={"error": message[:1000]})
        for journal in Journal.objects.select_for_update().select_related("entity").filter(
                erp_batch=batch, status=Journal.Status.POSTING):
            _fail(journal, Codes.POSTING_FAILED, f"batch {batch.pk}: {message}", actor=actor)


# --------------------------------------------------------------------------------------------- manual journals
MANUAL_JOURNAL_MAX_LINES = 200


def _manual_money(value, currency: str, field: str, errors: list[dict]) -> Decimal:
    """A line's debit or credit: blank is 0; otherwise the API's money rules (no floats, no exponents)."""
    try:
        amount = parse_money_input(value, currency)
    except ValueError as exc:
        errors.append({"field": field, "message": f"Money {exc}."})
        return ZERO
    if amount is None:
        return ZERO
    if amount < ZERO:
        errors.append({"field": field, "message": "Must not be negative."})
        return ZERO
    return amount


@dataclass(frozen=True)
class ManualJournalDraft:
    """A manual journal that passed every check: lines `(account_code, debit, credit, memo)`, balanced."""

    entity: Entity
    accounting_date: datetime.date
    description: str
    lines: tuple
    total: Decimal


def manual_journal_check(*, entity: Entity, accounting_date: datetime.date, lines, description: str,
                         user) -> ManualJournalDraft:
    """Check a journal a person writes by hand: balanced, into an open period, on active accounts of `entity`.

    `lines` are `(account_code, debit, credit, memo)`; each line has exactly one side. Every problem is
    refused up front with its field named (code `invalid_request`, `unknown_account`,
    `unbalanced_journal` or `period_closed`); the database's balance trigger stands behind the check.
    Whether it then needs approval is the approval policy's business (`exceptions_queue`).
    """
    if not roles.has_role(user, *roles.WORKERS):
        raise TieoutError("only finance operations, controllers and admins write manual journals",
                          code=Codes.PERMISSION_DENIED, status=403)
    if not roles.may_see_entity(user, entity.code):
        raise TieoutError(f"no entity {entity.code}", code=Codes.NOT_FOUND, status=404)
    currency = entity.currency
    errors: list[dict] = []
    description = (description or "").strip()
    if not description:
        errors.append({"field": "description", "message": "Say what the journal is for: the approver reads it."})
    elif len(description) > 300:
        errors.append({"field": "description", "message": "Must be at most 300 characters."})
    if not isinstance(accounting_date, datetime.date):
        errors.append({"field": "accounting_date", "message": "Must be a date in YYYY-MM-DD form."})
    parsed = []
    for index, line in enumerate(lines or []):
        account_code, debit, credit, memo = (tuple(line) + ("", "", "", ""))[:4]
        account_code = (account_code or "").strip()
        debit = _manual_money(debit, currency, f"lines[{index}].debit", errors)
        credit = _manual_money(credit, currency, f"lines[{index}].credit", errors)
        if not account_code and debit == ZERO and credit == ZERO:
            continue  # an empty row of the form
        if not account_code:
            errors.append({"field": f"lines[{index}].account", "message": "Choose an account."})
        if (debit > ZERO) == (credit > ZERO):
            errors.append({"field": f"lines[{index}].debit",
                           "message": "Enter a debit or a credit (one side per line, more than 0)."})
        parsed.append((index, account_code, debit, credit, (memo or "").strip()[:300]))
    if len(parsed) < 2:
        errors.append({"field": "lines", "message": "A journal needs at least two lines."})
    if len(parsed) > MANUAL_JOURNAL_MAX_LINES:
        errors.append({"field": "lines", "message": f"At most {MANUAL_JOURNAL_MAX_LINES} lines."})
    if errors:
        raise TieoutError("the journal has errors", code=Codes.INVALID_REQUEST, status=422, errors=errors,
                          title="The journal was refused")
    accounts = {a.code: a for a in Account.objects.filter(entity=entity, code__in={p[1] for p in parsed})}
    for index, code, *_ in parsed:
        account = accounts.get(code)
        if account is None:
            errors.append({"field": f"lines[{index}].account", "message": f"{entity.code} has no account {code}."})
        elif not account.is_active:
            errors.append({"field": f"lines[{index}].account", "message": f"Account {code} is not active."})
    if errors:
        raise TieoutError("; ".join(e["message"] for e in errors), code=Codes.UNKNOWN_ACCOUNT, status=422,
                          errors=errors, title="The journal was refused")
    total_debit = sum((p[2] for p in parsed), ZERO)
    total_credit = sum((p[3] for p in parsed), ZERO)
    if total_debit != total_credit:
        message = (f"Debits ({total_debit}) and credits ({total_credit}) differ by "
                   f"{abs(total_debit - total_credit)}; a journal must balance.")
        raise TieoutError(message, code=Codes.UNBALANCED_JOURNAL, status=422, title="The journal does not balance",
                          errors=[{"field": "lines", "message": message}])
    if period_is_closed(entity, accounting_date):
        message = f"Period {accounting_date:%Y-%m} of {entity.code} is closed; choose a date in an open period."
        raise TieoutError(message, code=Codes.PERIOD_CLOSED, status=422, title="The period is closed",
                          errors=[{"field": "accounting_date", "message": message}])
    return ManualJournalDraft(entity=entity, accounting_date=accounting_date, description=description,
                              lines=tuple((code, d, c, memo) for _, code, d, c, memo in parsed), total=total_debit)


@transaction.atomic
def manual_journal_book(*, draft: ManualJournalDraft, user, needs_approval: bool,
                        request_key: str | None = None) -> tuple[Journal, bool]:
    """Book a checked manual journal; returns `(journal, created)`.

    Waiting for approval when `needs_approval` (approve releases it, reject refuses it for good), else
    ready to post at once. With a `request_key` (a form's hidden token, an API Idempotency-Key), the same
    key from the same person returns the journal it first created (`created` False).
    """
    entity, accounting_date, currency = draft.entity, draft.accounting_date, draft.entity.currency
    if request_key:
        identity = uuid.uuid5(uuid.UUID("5d0c1c3e-7f43-4d8e-9b4e-2f0d3c9a61a7"), f"{user.pk}:{request_key}")
        document_id = f"MJ-{identity.hex[:12].upper()}"
        # Two submits of one form at once: the second waits here for the first, then finds its journal.
        with transaction.get_connection().cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", [f"manual_journal:{document_id}"])
        existing = Journal.objects.filter(entity=entity, kind="manual", document_id=document_id).first()
        if existing is not None:
            same = (existing.accounting_date == accounting_date and sorted(
                (ln.account.code, ln.debit, ln.credit) for ln in existing.lines.select_related("account")) == sorted(
                (code, quantize(d, currency), quantize(c, currency)) for code, d, c, _ in draft.lines))
            if not same:
                raise TieoutError("this request (form or Idempotency-Key) was already used for a different journal; "
                                  "start a new one to write another", code=Codes.IDEMPOTENCY_CONFLICT, status=409)
            return existing, False
    else:
        document_id = f"MJ-{uuid.uuid4().hex[:12].upper()}"
    journal = journal_create(JournalSpec(
        entity=entity, accounting_date=accounting_date, kind="manual",
        lines=[LineSpec(debit=d, credit=c, account_code=code, memo=memo) for code, d, c, memo in draft.lines],
        document_type="manual_journal", document_id=document_id, description=draft.description,
        needs_approval=needs_approval), actor=user)
    return journal, True
