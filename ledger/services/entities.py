"""Entities and their set-up: the default chart and posting-rule mappings, accounts, the ERP connection, who
may see which entity.
"""
import structlog
from django.db import transaction

from audit import services as audit
from config.errors import Codes, TieoutError
from ledger import connectors
from ledger.models import Account, AccountMapping, Entity, EntityAccess

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
