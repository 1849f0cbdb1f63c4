"""What one reconciliation run checks (`Plan`, read from the run's range, mode and subject) and the values its
SQL needs (`Context`: the entity, its mapped accounts by posting-rule role, the currency's minor units); a
subject narrows a run to one object: a billing document `<document_type>:<source_system>:<id>`, a journal
`journal:<uuid>`, an ERP document `erp:<ref>`, the aggregate checks of an account `account:<code>` or the ERP
balance of an account in a month `account:<code>:<YYYY-MM>`; without one a run checks its date range."""
import datetime
import re
from dataclasses import dataclass, field

from config.money import minor_units
from ledger.models import AccountMapping, Entity, Journal

DOC_TYPES = ("invoice", "payment", "credit_note", "write_off", "refund")
# Billing ↔ ledger: the journals Tieout's ledger has booked, whether or not the ERP has acknowledged them yet
# (ERP delivery is the ledger ↔ ERP side's business, and a failed posting has its own exception). Journals
# waiting for approval are not booked: billing does not count their document either until it is approved.
BOOKED = "('ready', 'posting', 'posted', 'failed')"
R = AccountMapping.Role
_MONTH = re.compile(r"^\d{4}-(0[1-9]|1[0-2])$")
_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


class BadSubject(ValueError):
    pass


@dataclass
class Plan:
    billing: bool = False  # billing ↔ ledger document and invoice checks
    doc: tuple[str, str, str] | None = None  # ... of one document only
    aggregates: tuple[str, ...] = ()  # entity-level checks: ar_control_mismatch, unapplied_cash_mismatch
    erp: str | None = None  # "stream" (the range, incremental or full) | "objects" (the subject's journals/refs)
    journal_id: str | None = None  # the subject journal
    erp_ref: str | None = None  # the subject ERP document
    balance: tuple[tuple[str, ...], datetime.date, datetime.date] | None = None  # accounts, whole months


@dataclass
class Context:
    run_id: int
    entity: Entity
    date_from: datetime.date
    date_to: datetime.date
    full: bool
    since: datetime.datetime | None
    subject: str
    accounts: dict[str, tuple[int, str]] = field(default_factory=dict)  # role -> (account id, code)
    plan: Plan = field(default_factory=Plan)
    erp_names: bool = True  # the connector reads accounts back through the ERP's names (`erp_account_names`)
    parallel: bool = False  # checks may run on a second session (the run is not inside an outer transaction)

    @property
    def scale(self) -> int:
        return minor_units(self.entity.currency)

    def account_id(self, role: str) -> int | None:
        return self.accounts.get(role, (None, ""))[0]

    def account_code(self, role: str) -> str:
        return self.accounts.get(role, (None, ""))[1]

    def params(self, **extra) -> dict:
        values = {"entity": self.entity.pk, "from": self.date_from, "to": self.date_to, "scale": self.scale,
                  "ar": self.account_id(R.RECEIVABLE), "ar_code": self.account_code(R.RECEIVABLE),
                  "uc": self.account_id(R.UNAPPLIED_CASH), "uc_code": self.account_code(R.UNAPPLIED_CASH),
                  "clearing": self.account_id(R.CLEARING), "clearing_code": self.account_code(R.CLEARING),
                  "fees": self.account_id(R.FEES), "entity_code": self.entity.code, "erp_names": self.erp_names}
        values.update(extra)
        return values


def month_bounds(date_from: datetime.date, date_to: datetime.date) -> tuple[datetime.date, datetime.date]:
    """The whole months the range touches: first day of the first, last day of the last."""
    start = date_from.replace(day=1)
    after = (date_to.replace(day=1) + datetime.timedelta(days=32)).replace(day=1)
    return start, after - datetime.timedelta(days=1)


def context_for(run) -> Context:
    accounts = {m.role: (m.account_id, m.account.code)
                for m in AccountMapping.objects.select_related("account").filter(entity=run.entity)}
    ctx = Context(run_id=run.pk, entity=run.entity, date_from=run.date_from, date_to=run.date_to, full=run.full,
                  since=run.erp_modified_since, subject=run.subject, accounts=accounts)
    ctx.plan = plan_for(ctx)
    if ctx.plan.journal_id:
        # A journal of a billing document: its document's billing ↔ ledger checks run too.
        journal = Journal.objects.filter(pk=ctx.plan.journal_id, entity=run.entity).values(
            "document_type", "source_system", "document_id").first()
        if journal and journal["document_type"] in DOC_TYPES and journal["document_id"]:
            ctx.plan.billing = True
            ctx.plan.doc = (journal["document_type"], journal["source_system"], journal["document_id"])
    return ctx


def subject_problem(subject: str) -> str | None:
    """Why `subject` is not a subject a run can check, or None when it is."""
    try:
        plan_for(Context(run_id=0, entity=None, date_from=datetime.date.min, date_to=datetime.date.min,
                         full=False, since=None, subject=subject), check_only=True)
    except BadSubject as exc:
        return str(exc)
    return None


def plan_for(ctx: Context, *, check_only: bool = False) -> Plan:
    subject = ctx.subject
    if not subject:
        aggregates = ("ar_control_mismatch", "unapplied_cash_mismatch")
        balance = None
        if ctx.full and not check_only:
            codes = tuple(sorted({code for _, code in ctx.accounts.values()}))
            balance = (codes, *month_bounds(ctx.date_from, ctx.date_to))
        return Plan(billing=True, aggregates=aggregates, erp="stream", balance=balance)
    kind, _, rest = subject.partition(":")
    if kind == "journal":
        if not _UUID.match(rest):
            raise BadSubject(f"journal:{rest} is not a journal id")
        return Plan(erp="objects", journal_id=rest)
    if kind == "erp":
        if not rest:
            raise BadSubject("erp: needs the ERP document's reference")
        return Plan(erp="objects", erp_ref=rest)
    if kind == "account":
        code, _, month = rest.partition(":")
        if not code:
            raise BadSubject("account: needs an account code")
        if month:
            if not _MONTH.match(month):
                raise BadSubject(f"{month} is not a month (YYYY-MM)")
            first = datetime.date.fromisoformat(f"{month}-01")
            # The month's documents are read too: the balance counts only what they do not explain.
            return Plan(erp="stream", balance=((code,), *month_bounds(first, first)))
        if check_only:
            return Plan()
        aggregates = tuple(check for check, role in (("ar_control_mismatch", R.RECEIVABLE),
                                                     ("unapplied_cash_mismatch", R.UNAPPLIED_CASH))
                           if ctx.account_code(role) == code)
        return Plan(aggregates=aggregates)
    if kind in DOC_TYPES:
        source_system, _, document_id = rest.partition(":")
        if not source_system or not document_id:
            raise BadSubject(f"{subject} is not <document_type>:<source_system>:<id>")
        return Plan(billing=True, doc=(kind, source_system, document_id), erp="objects")
    raise BadSubject(f"{subject!r} is not a subject: journal:<uuid>, <document_type>:<source_system>:<id> "
                     "(invoice, payment, credit_note, write_off, refund), erp:<ref>, account:<code>[:<YYYY-MM>]")
