"""Ledger reads: trial balance, an invoice's receivable balance, journal lists (django-filter), entities and
entity access, active accounts, journals' reconciliation status (installed from above); for the reports, the
receivable and unapplied-cash items as of a date, an account's balance split into items and other lines, one
read-only snapshot to read them in, and a period's posted lines for the ledger export. Reads for a signed-in
person are narrowed to their entities with `config.roles.scope`."""
import contextlib
import datetime
from decimal import Decimal

import django_filters
from django.db import connection, transaction
from django.db.models import Sum
from django.db.models.functions import Coalesce

from config import roles
from config.money import ZERO
from ledger.models import Account, AccountMapping, Entity, EntityAccess, ItemBalance, Journal, JournalLine

def trial_balance(*, entity: Entity, as_of: datetime.date | None = None) -> dict:
    """Debits, credits and balance per account over posted journals up to `as_of`."""
    lines = JournalLine.objects.filter(journal__entity=entity, journal__status=Journal.Status.POSTED)
    if as_of:
        lines = lines.filter(journal__accounting_date__lte=as_of)
    sums = {row["account_id"]: row for row in lines.values("account_id").annotate(
        debit=Coalesce(Sum("debit"), ZERO), credit=Coalesce(Sum("credit"), ZERO))}
    accounts = []
    total_debit = total_credit = ZERO
    for account in Account.objects.filter(entity=entity).order_by("code"):
        row = sums.get(account.pk, {"debit": ZERO, "credit": ZERO})
        if account.pk not in sums and not account.is_active:
            continue
        total_debit += row["debit"]
        total_credit += row["credit"]
        accounts.append({"code": account.code, "name": account.name, "type": account.type,
                         "debit": row["debit"], "credit": row["credit"], "balance": row["debit"] - row["credit"]})
    return {"entity": entity, "as_of": as_of, "accounts": accounts,
            "total_debit": total_debit, "total_credit": total_credit}


def receivable_balance(*, entity: Entity, source_system: str, invoice_id: str) -> Decimal:
    """An invoice's balance on the receivable account in the ledger (posted journals)."""
    receivable = AccountMapping.objects.filter(entity=entity, role=AccountMapping.Role.RECEIVABLE).values("account_id")
    result = JournalLine.objects.filter(
        journal__entity=entity, journal__status=Journal.Status.POSTED, journal__source_system=source_system,
        account_id__in=receivable, invoice_id=invoice_id,
    ).aggregate(d=Coalesce(Sum("debit"), ZERO), c=Coalesce(Sum("credit"), ZERO))
    return result["d"] - result["c"]


class JournalFilter(django_filters.FilterSet):
    entity = django_filters.CharFilter(field_name="entity__code")
    status = django_filters.CharFilter()
    event = django_filters.UUIDFilter(field_name="event_id")
    accounting_date_from = django_filters.DateFilter(field_name="accounting_date", lookup_expr="gte")
    accounting_date_to = django_filters.DateFilter(field_name="accounting_date", lookup_expr="lte")
    erp_document_ref = django_filters.CharFilter()

    class Meta:
        model = Journal
        fields = ["entity", "status", "event", "erp_document_ref"]


def entity_codes_granted(user) -> frozenset[str] | None:
    """The entity codes `user` was granted (EntityAccess), or None when granted every entity.

    `config.roles.entity_codes` asks this (admins see everything without asking).
    """
    access = entity_access_of(user)
    if access is None:
        return frozenset()
    if access.all_entities:
        return None
    return frozenset(access.entities.values_list("code", flat=True))


def entity_access_of(user) -> EntityAccess | None:
    """The user's entity grant (all entities, or the listed ones), None when never granted any."""
    return EntityAccess.objects.filter(user=user).first()


def entity_for_code(code: str) -> Entity | None:
    return Entity.objects.filter(code=code).first()


def entities():
    """Every entity, by code."""
    return Entity.objects.order_by("code")


def entities_for(user):
    """The entities `user` may see, by code."""
    return roles.scope(entities(), user, "code")


def entity_codes_for(user) -> list[str]:
    """The codes of the entities `user` may see, in order."""
    return list(entities_for(user).values_list("code", flat=True))


def entity_currencies() -> dict[str, str]:
    """Each entity's currency, by entity code."""
    return dict(Entity.objects.values_list("code", "currency"))


def accounts_active(entity: Entity):
    """The accounts of `entity` that may be posted to, by code."""
    return Account.objects.filter(entity=entity, is_active=True).order_by("code")


def manual_journal_for(user, pk) -> Journal | None:
    """A manual journal of one of `user`'s entities (with its entity), None when there is no such journal."""
    return roles.scope(Journal.objects.select_related("entity"), user, "entity__code").filter(
        pk=pk, kind="manual").first()


def journals():
    return (Journal.objects.select_related("entity", "reverses")
            .prefetch_related("lines__account").order_by("-created_at", "id"))


def journals_for_event_ids(event_ids) -> dict:
    out: dict = {}
    for event_id, journal_id in Journal.objects.filter(event_id__in=event_ids).order_by("created_at").values_list(
            "event_id", "id"):
        out.setdefault(event_id, []).append(journal_id)
    return out



# --------------------------------------------------------------------------------------------- subledgers
# Receivables and unapplied cash as open items (`ItemBalance`, kept by the database from posted journals):
# an invoice's balance on the receivable account, a payment's on unapplied cash. Everything here counts
# posted journals only, as `trial_balance` and `receivable_balance` do, so the items of an account add up
# to that account's trial-balance figure whenever every line on it carries its document.

# Which lines are items of which type: the rule of migration 0010 (the trigger that keeps ItemBalance).
ITEM_ACCOUNT_TYPES = {ItemBalance.ItemType.INVOICE: Account.Type.ASSET,
                      ItemBalance.ItemType.PAYMENT: Account.Type.LIABILITY}
_ITEM_LINE = {ItemBalance.ItemType.INVOICE: "l.invoice_id <> ''",
              ItemBalance.ItemType.PAYMENT: "(l.invoice_id = '' AND l.payment_id <> '')"}
# The complement, spelled so that the line indexes serve it (the few lines that name no item).
_OTHER_LINE = {ItemBalance.ItemType.INVOICE: "l.invoice_id = ''",
               ItemBalance.ItemType.PAYMENT: "(l.invoice_id <> '' OR l.payment_id = '')"}
_ITEM_ID = {ItemBalance.ItemType.INVOICE: "l.invoice_id", ItemBalance.ItemType.PAYMENT: "l.payment_id"}


@contextlib.contextmanager
def report_snapshot():
    """Run a report's queries in one read-only snapshot, without JIT compilation.

    One snapshot (REPEATABLE READ, when this is the outermost transaction; inside a caller's transaction,
    theirs): a report that compares two figures (an aging's total and its control account) must read both
    from the same moment, or a journal posted in between would show as a difference that is not there.
    No JIT: the report queries are planned to be short (index reads of the open items), but the planner
    cannot tell how few lines lack an invoice id and estimates the worst, and PostgreSQL would then spend
    longer compiling the query than running it.
    """
    outermost = not connection.in_atomic_block
    with transaction.atomic(), connection.cursor() as cursor:
        if outermost:
            cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        cursor.execute("SET LOCAL jit = off")
        yield


def stream_rows(sql: str, params: dict, *, chunk: int = 2000):
    """The rows of `sql`, read from a server-side cursor `chunk` at a time in one `report_snapshot` (an
    export of a busy month never holds it all in memory). A generator: the snapshot lasts while it is read."""
    with report_snapshot(), connection.chunked_cursor() as cursor:
        with connection.cursor() as settings:
            # Every row will be read: plan for the whole result, not for the first rows (a cursor's default),
            # which, with the planner's low guess of how many items are open, nests loops over big tables.
            settings.execute("SET LOCAL cursor_tuple_fraction = 1")
        cursor.execute(sql, params)
        while rows := cursor.fetchmany(chunk):
            yield from rows


def role_account(entity: Entity, role: str) -> Account | None:
    """The account a posting-rule role is mapped to in `entity` (None when it is not mapped)."""
    mapping = AccountMapping.objects.select_related("account").filter(entity=entity, role=role).first()
    return mapping.account if mapping else None


def item_balances_sql(*, account: Account, item_type: str, from_lines: bool = False) -> str:
    """A query of the balances of `account`'s items at a date, for the layers above to join their documents to.

    One row per item open at `%(as_of)s` (a non-zero balance, debit minus credit, over the posted journals
    dated on or before it): `(source_system, item_id, first_date, amount)`. Parameters: `%(account)s`,
    `%(entity)s`, `%(as_of)s` (`item_params` builds them). `first_date` is a payment's first accounting date
    (its receipt); NULL for invoices.

    The rows are the item balances kept by the database (today's, whatever the date) less what was posted
    after `as_of`, summed per item first and matched to them by key (a full join: an item settled since
    then has no open balance today), so the work is the open items plus the postings since `as_of`, not
    every line ever posted, and the layers above look up only the items open at the date: fast for today
    and recent dates, slower the further back. When the account is not of the type the item rule counts (a
    remapped chart), or with `from_lines`, the items are summed from every line instead (the same figures,
    the tests check).
    """
    line, item_id = _ITEM_LINE[item_type], _ITEM_ID[item_type]
    payment = item_type == ItemBalance.ItemType.PAYMENT
    if from_lines or account.type != ITEM_ACCOUNT_TYPES[item_type]:
        return f"""
            SELECT j.source_system, {item_id} AS item_id,
                   {"min(j.accounting_date)" if payment else "NULL::date"} AS first_date,
                   sum(l.debit - l.credit) AS amount
            FROM ledger_journalline l JOIN ledger_journal j ON j.id = l.journal_id
            WHERE l.account_id = %(account)s AND {line} AND j.entity_id = %(entity)s AND j.status = 'posted'
              AND j.accounting_date <= %(as_of)s
            GROUP BY 1, 2 HAVING sum(l.debit - l.credit) <> 0"""
    # An item with nothing open today has no row in the open-items index: its first date is looked up by key.
    first_date = ("coalesce(b.first_date, (SELECT b2.first_date FROM ledger_itembalance b2 WHERE b2.account_id = "
                  "%(account)s AND b2.source_system = a.source_system AND b2.item_type = 'payment' "
                  "AND b2.item_id = a.item_id))" if payment else "NULL::date")
    return f"""
        SELECT coalesce(b.source_system, a.source_system) AS source_system, coalesce(b.item_id, a.item_id) AS item_id,
               {first_date} AS first_date, coalesce(b.balance, 0) - coalesce(a.amount, 0) AS amount
        FROM (SELECT b.source_system, b.item_id, b.first_date, b.balance FROM ledger_itembalance b
              WHERE b.account_id = %(account)s AND b.item_type = '{item_type}' AND b.balance <> 0) b
        FULL JOIN (SELECT j.source_system, {item_id} AS item_id, sum(l.debit - l.credit) AS amount
                   FROM ledger_journal j JOIN ledger_journalline l ON l.journal_id = j.id
                   WHERE j.entity_id = %(entity)s AND j.status = 'posted' AND j.accounting_date > %(as_of)s
                     AND l.account_id = %(account)s AND {line}
                   GROUP BY 1, 2) a ON a.source_system = b.source_system AND a.item_id = b.item_id
        WHERE coalesce(b.balance, 0) - coalesce(a.amount, 0) <> 0"""


def item_params(*, account: Account, as_of: datetime.date) -> dict:
    return {"account": account.pk, "entity": account.entity_id, "as_of": as_of}


def item_account_other(*, account: Account, item_type: str, as_of: datetime.date):
    """What `account`'s lines that name no item of `item_type` add up to (debit minus credit, posted journals,
    up to `as_of`): a manual journal on the receivable account, say. The account's balance (the trial
    balance's figure) is this plus what its items carry (the sum of `item_balances_sql`'s rows), which the
    agings sum in their own query."""
    with connection.cursor() as cursor:
        # The account's lines that are not items: few (they are what breaks the tie), read by the line index,
        # each journal looked up by its key (a join would let the planner, who cannot tell how few they are,
        # scan every journal).
        cursor.execute(f"""
            SELECT coalesce(sum(l.debit - l.credit), 0)
            FROM ledger_journalline l
            WHERE l.account_id = %(account)s AND {_OTHER_LINE[item_type]}
              AND (SELECT j.status = 'posted' AND j.accounting_date <= %(as_of)s
                   FROM ledger_journal j WHERE j.id = l.journal_id)""", item_params(account=account, as_of=as_of))
        return cursor.fetchone()[0]


# --------------------------------------------------------------------------------------------- exports
EXPORT_LINE_COLUMNS = ("journal_id", "accounting_date", "posted_at", "kind", "source_system", "document_type",
                       "document_id", "description", "erp_document_ref", "event_id", "line_no", "account",
                       "account_name", "account_type", "debit", "credit", "customer_id", "invoice_id", "payment_id",
                       "jurisdiction", "memo")


def posted_lines(*, entity: Entity, date_from: datetime.date, date_to: datetime.date):
    """Every line of `entity`'s posted journals dated `date_from` to `date_to` (both included), as tuples of
    EXPORT_LINE_COLUMNS, in accounting date, posting and line order (a journal's lines together). A
    generator over one snapshot, read in chunks (see `stream_rows`)."""
    return stream_rows("""
        SELECT j.id, j.accounting_date, j.posted_at, j.kind, j.source_system, j.document_type, j.document_id,
               j.description, coalesce(j.erp_document_ref, ''), j.event_id, l.line_no, a.code, a.name, a.type,
               l.debit, l.credit, l.customer_id, l.invoice_id, l.payment_id, l.jurisdiction, l.memo
        FROM ledger_journal j
        JOIN ledger_journalline l ON l.journal_id = j.id
        JOIN ledger_account a ON a.id = l.account_id
        WHERE j.entity_id = %(entity)s AND j.status = 'posted'
          AND j.accounting_date BETWEEN %(date_from)s AND %(date_to)s
        ORDER BY j.accounting_date, j.posted_at, j.id, l.line_no
    """, {"entity": entity.pk, "date_from": date_from, "date_to": date_to})


def accounts_of(entity: Entity):
    """All of `entity`'s accounts (active or not), by code."""
    return Account.objects.filter(entity=entity).order_by("code")


# Reconciliation status of journals: reconciliation is billing_sync's (a higher layer), which installs this
# lookup at start-up, as the entity-access lookup is installed (ARCHITECTURE.md).
UNRECONCILED = {"status": "unreconciled", "checked_at": None, "run": None}
_reconciliation_lookup = None


def reconciliation_status_provide(lookup) -> None:
    """Install `lookup(journal_ids) -> {journal_id: {"status", "checked_at", "run"}}` (billing_sync does)."""
    global _reconciliation_lookup
    _reconciliation_lookup = lookup


def journal_reconciliation(journal_ids) -> dict:
    """Each journal's reconciliation status (unreconciled when nothing is installed or it was never checked)."""
    journal_ids = list(journal_ids)
    if _reconciliation_lookup is None:
        return {pk: dict(UNRECONCILED) for pk in journal_ids}
    return _reconciliation_lookup(journal_ids)
