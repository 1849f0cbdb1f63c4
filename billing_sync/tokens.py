"""Users, roles and API tokens: issue and revoke, audited. Only the token's SHA-256 is stored."""
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.db import transaction
from django.utils import timezone

from audit import services as audit
from billing_sync.authentication import generate_token, hash_token
from billing_sync.models import ApiToken
from config import roles
from ledger import services as ledger
from ledger.models import EntityAccess


@transaction.atomic
def token_issue(*, username: str, role: str, password: str | None = None, name: str = "", actor,
                entities: list[str] | None = None) -> str:
    """Create the user if absent, grant the role, set the password, issue a token (returned once).

    `entities` scopes the user to those entity codes; without it a new user may see every entity
    (an operator narrows it later) and an existing user keeps the scope it has.
    """
    if role not in roles.ROLES:
        raise ValueError(f"unknown role {role}")
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
    token = ApiToken.objects.create(user=user, key_hash=hash_token(raw), prefix=raw[:10], name=name)
    audit.record(actor=actor, action="token.issued", object_type="api_token", object_id=token.pk,
                 after={"user": username, "prefix": token.prefix, "role": role})
    return raw


@transaction.atomic
def token_revoke(*, token_id: int, actor) -> ApiToken:
    token = ApiToken.objects.select_for_update().get(pk=token_id)
    if token.revoked_at is None:
        token.revoked_at = timezone.now()
        token.save(update_fields=["revoked_at"])
        audit.record(actor=actor, action="token.revoked", object_type="api_token", object_id=token.pk,
                     after={"user": token.user.get_username(), "prefix": token.prefix})
    return token
