"""Roles (Django groups) and the DRF permission classes that enforce them on every API view. A user's roles
are its group names among ROLES; superusers count as admin. Views declare what they allow with
`roles_allowed(...)`: the server decides, never the client."""
from collections.abc import Callable

from django.core.exceptions import ImproperlyConfigured
from rest_framework.permissions import BasePermission

INTEGRATION = "integration"
FINANCE_OPS = "finance_ops"
CONTROLLER = "controller"
AUDITOR = "auditor"
ADMIN = "admin"
ROLES = (INTEGRATION, FINANCE_OPS, CONTROLLER, AUDITOR, ADMIN)

# The role sets, each named once; every permission check in the code uses one of these.
# Staff: everyone but source systems; they read every page and list (within their entities).
STAFF = (FINANCE_OPS, CONTROLLER, AUDITOR, ADMIN)
READ_ALL = STAFF
# Workers: work the exception queue and raise adjustments (credit memos, write-offs, manual journals).
WORKERS = (FINANCE_OPS, CONTROLLER, ADMIN)
# Deciders: decide approvals (maker-checker); in the web UI they must use a second factor.
DECIDERS = (CONTROLLER, ADMIN)
# Evidence readers: export evidence packs for auditors.
EVIDENCE_READERS = (AUDITOR, ADMIN)


def user_roles(user) -> frozenset[str]:
    if user is None or not user.is_authenticated:
        return frozenset()
    cached = getattr(user, "_tieout_roles", None)
    if cached is None:
        names = set(user.groups.filter(name__in=ROLES).values_list("name", flat=True))
        if user.is_superuser:
            names.add(ADMIN)
        cached = frozenset(names)
        user._tieout_roles = cached
    return cached


def has_role(user, *roles: str) -> bool:
    return bool(user_roles(user) & set(roles))


def roles_allowed(*roles: str, read_roles: tuple[str, ...] | None = None):
    """A permission class: `roles` may write; `read_roles` (default `roles`) may use safe methods."""
    write = frozenset(roles)
    read = frozenset(read_roles) if read_roles is not None else write

    class _RolePermission(BasePermission):
        message = "Your role may not do this."

        def has_permission(self, request, view):
            if not request.user or not request.user.is_authenticated:
                return False
            allowed = read if request.method in ("GET", "HEAD", "OPTIONS") else write
            return bool(user_roles(request.user) & allowed)

    _RolePermission.__name__ = f"Roles_{'_'.join(sorted(write))}"
    return _RolePermission


# Entity scope ------------------------------------------------------------------------------------------
# Which entities a person was granted is ledger data (EntityAccess). The ledger provides the lookup at
# start-up (`entity_access_provide` in LedgerConfig.ready), so that this kernel module imports no app.
_entity_access_lookup: Callable[[object], frozenset[str] | None] | None = None


def entity_access_provide(lookup: Callable[[object], frozenset[str] | None]) -> None:
    """Install the lookup of a user's granted entity codes (None: every entity)."""
    global _entity_access_lookup
    _entity_access_lookup = lookup


def entity_codes(user) -> frozenset[str] | None:
    """The entity codes the user may see and act on, or None for every entity (admins, `all_entities`).

    Integration users (source systems) are not scoped here: what they may send is decided on receipt.
    """
    if user is None or not user.is_authenticated:
        return frozenset()
    cached = getattr(user, "_tieout_entities", False)
    if cached is not False:
        return cached
    if has_role(user, ADMIN):
        codes = None
    elif _entity_access_lookup is None:
        raise ImproperlyConfigured("no entity access lookup installed (the ledger app provides it at start-up)")
    else:
        codes = _entity_access_lookup(user)
    user._tieout_entities = codes
    return codes


def scope(queryset, user, field: str):
    """`queryset` narrowed to the user's entities; `field` is the lookup of the entity code on its rows."""
    codes = entity_codes(user)
    if codes is None:
        return queryset
    return queryset.filter(**{f"{field}__in": codes})


def may_see_entity(user, code: str) -> bool:
    codes = entity_codes(user)
    return codes is None or code in codes
