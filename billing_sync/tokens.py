"""Users, roles and API tokens: issue (with a binding and an expiry) and revoke, audited; record last use.
Only the token's SHA-256 is stored. A token bound to source systems and entities sends only events whose
envelope names one of each (checked on receipt, `ApiToken.allows`); unbound is "any"."""
import datetime

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from audit import services as audit
from billing_sync.authentication import TOUCH_INTERVAL, generate_token, hash_token, tokens_revoked
from billing_sync.models import ApiToken
from config import roles
from config.errors import Codes, Conflict, NotFound, TieoutError
from ledger import services as ledger
from ledger.models import Entity, EntityAccess


def _binding_names(values: list[str] | None, *, field: str, max_length: int) -> list[str] | None:
    """None stays None (unbound); a list is cleaned, de-duplicated and sorted, and may not be empty."""
    if values is None:
        return None
    names = sorted({v.strip() for v in values})
    problems = [{"field": field, "message": f"{v!r} is not a valid name"} for v in names
                if not v or len(v) > max_length]
    if not names:
        problems.append({"field": field, "message": "An empty binding would allow nothing; omit it for any."})
    if problems:
        raise TieoutError("invalid token binding", code=Codes.INVALID_REQUEST, status=422, errors=problems)
    return names


@transaction.atomic
def token_issue(*, username: str, role: str, password: str | None = None, name: str = "", actor,
                entities: list[str] | None = None, source_systems: list[str] | None = None,
                token_entities: list[str] | None = None, expires_at: datetime.datetime | None = None) -> str:
    """Create the user if absent, grant the role, set the password, issue a token (returned once).

    `entities` scopes the user to those entity codes; without it a new user may see every entity
    (an operator narrows it later) and an existing user keeps the scope it has.
    `source_systems` and `token_entities` bind the token (what it may send); None leaves it unbound.
    `expires_at` (in the future) ends the token; None: it lasts until revoked.
    """
    if role not in roles.ROLES:
        raise ValueError(f"unknown role {role}")
    source_systems = _binding_names(source_systems, field="source_systems", max_length=100)
    token_entities = _binding_names(token_entities, field="entities", max_length=20)
    if token_entities is not None:
        known = set(Entity.objects.filter(code__in=token_entities).values_list("code", flat=True))
        unknown = set(token_entities) - known
        if unknown:
            raise TieoutError(f"unknown entities: {', '.join(sorted(unknown))}", code=Codes.UNKNOWN_ENTITY, status=422)
    if expires_at is not None and expires_at <= timezone.now():
        raise TieoutError(f"expiry {expires_at.isoformat()} is not in the future", code=Codes.INVALID_REQUEST,
                          status=422)
    User = get_user_model()
    user, created = User.objects.select_for_update().get_or_create(username=username)
    if created:
        audit.record(actor=actor, action="user.created", object_type="user", object_id=username,
                     after={"username": username})
    group, _ = Group.objects.get_or_create(name=role)
    if not user.groups.filter(pk=group.pk).exists():
        user.groups.add(group)
        audit.record(actor=actor, action="user.role_granted", object_type="user", object_id=username,
                     after={"role": role})
    if role == roles.ADMIN and not (user.is_staff and user.is_superuser):
        user.is_staff = user.is_superuser = True
        user.save(update_fields=["is_staff", "is_superuser"])
    elif role in (roles.FINANCE_OPS, roles.CONTROLLER, roles.AUDITOR) and not user.is_staff:
        user.is_staff = True  # may sign in to the portal
        user.save(update_fields=["is_staff"])
    if entities is not None or not EntityAccess.objects.filter(user=user).exists():
        ledger.entity_access_set(user=user, entity_codes=entities, actor=actor)
    if password is not None:
        user.set_password(password)
        user.save(update_fields=["password"])
        audit.record(actor=actor, action="user.password_set", object_type="user", object_id=username)
    raw = generate_token()
    token = ApiToken.objects.create(user=user, key_hash=hash_token(raw), prefix=raw[:10], name=name,
                                    source_systems=source_systems, entities=token_entities, expires_at=expires_at)
    audit.record(actor=actor, action="token.issued", object_type="api_token", object_id=token.pk,
                 after={"user": username, "prefix": token.prefix, "role": role, "name": name,
                        "source_systems": source_systems, "entities": token_entities,
                        "expires_at": expires_at.isoformat() if expires_at else None})
    return raw


@transaction.atomic
def token_revoke(*, token_id: int, actor) -> ApiToken:
    """Revoke a token: refused at once everywhere (the shared token cache is invalidated after commit)."""
    token = ApiToken.objects.select_for_update().filter(pk=token_id).first()
    if token is None:
        raise NotFound(f"no token {token_id}")
    if token.revoked_at is not None:
        raise Conflict(f"token {token_id} was already revoked at {token.revoked_at.isoformat()}",
                       code=Codes.ALREADY_REVOKED)
    token.revoked_at = timezone.now()
    token.save(update_fields=["revoked_at"])
    audit.record(actor=actor, action="token.revoked", object_type="api_token", object_id=token.pk,
                 before={"revoked_at": None},
                 after={"user": token.user.get_username(), "prefix": token.prefix,
                        "revoked_at": token.revoked_at.isoformat()})
    transaction.on_commit(tokens_revoked)
    return token


def token_touch(*, token: ApiToken, now: datetime.datetime | None = None) -> bool:
    """Note that the token was used: `last_used_at`, written at most once a minute per token.

    Not audited: it is a usage statistic, like a session's last activity, and the requests themselves
    leave their receipts. The condition keeps concurrent processes from writing the row twice a minute.
    """
    now = now or timezone.now()
    updated = (ApiToken.objects.filter(pk=token.pk)
               .filter(Q(last_used_at__isnull=True) | Q(last_used_at__lte=now - TOUCH_INTERVAL))
               .update(last_used_at=now))
    token.last_used_at = now
    return bool(updated)
