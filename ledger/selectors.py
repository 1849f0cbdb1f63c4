"""Ledger reads: trial balance, an invoice's receivable balance, journal lists (django-filter), entities and
entity access, active accounts. Reads for a signed-in person are narrowed to their entities with
`config.roles.scope`."""
import datetime
from decimal import Decimal

import django_filters
from django.db.models import Sum
from django.db.models.functions import Coalesce

from config import roles
from config.money import ZERO
from ledger.models import Account, AccountMapping, Entity, EntityAccess, Journal, JournalLine

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
