"""Staff sign-in, roles and the second factor: every change to who may do what goes through here, audited; the
sign-in pages, the users admin and Django's auth signals only translate input and call these. Sign-ins are
recorded by `user_session_record`, roles set by `user_roles_set`; TOTP devices (django-otp) are started,
confirmed, verified and reset by the `user_2fa_*` functions, which lock the device row so two tabs cannot both
spend one code or race past the throttle."""
from dataclasses import dataclass
from datetime import datetime

from axes.utils import reset as axes_reset
from django.contrib.auth import get_user_model, signals
from django.contrib.auth.models import Group
from django.db import transaction
from django_otp.plugins.otp_totp.models import TOTPDevice

from audit import services as audit
from config.errors import Codes, TieoutError
from config.roles import ADMIN, AUDITOR, CONTROLLER, FINANCE_OPS, ROLES

SESSION_ACTIONS = ("user.signed_in", "user.signed_out", "user.sign_in_failed")
# Roles that may sign in to the portal and the admin; integration users are machines with tokens only.
STAFF_ROLES = frozenset({FINANCE_OPS, CONTROLLER, AUDITOR, ADMIN})
PROFILE_FIELDS = ("username", "first_name", "last_name", "email", "is_active")
DEVICE_NAME = "Authenticator app"


def client_address(request) -> str:
    """The address django-axes decided is the client's (it honours the trusted proxy header), else the peer."""
    if request is None:
        return ""
    return getattr(request, "axes_ip_address", None) or request.META.get("REMOTE_ADDR", "")


# Sign-in events ----------------------------------------------------------------------------------------
def user_session_record(*, action: str, username: str, request=None, locked_out: bool = False) -> None:
    """Audit one sign-in, sign-out or failed sign-in. Runs in its own transaction: nothing else changes.

    A failed sign-in is recorded under the username that was typed (it may not exist) with the actor
    "anonymous": nobody proved who they were.
    """
    if action not in SESSION_ACTIONS:
        raise ValueError(f"not a session action: {action}")
    username = (username or "")[:100]
    actor = "anonymous" if action == "user.sign_in_failed" else username
    after = {"ip": client_address(request)}
    if action == "user.sign_in_failed":
        after["locked_out"] = locked_out
    with transaction.atomic():
        audit.record(actor=actor, action=action, object_type="user", object_id=username, after=after)


# Profile and roles -------------------------------------------------------------------------------------
@transaction.atomic
def user_create(*, username: str, password: str | None, actor):
    """A new user with no role and no entity (granted afterwards, each audited); unusable password if None."""
    User = get_user_model()
    if User.objects.filter(username=username).exists():
        raise TieoutError(f"user {username} exists", code=Codes.INVALID_REQUEST, status=409)
    user = User(username=username)
    if password:
        user.set_password(password)
    else:
        user.set_unusable_password()
    user.save()
    audit.record(actor=actor, action="user.created", object_type="user", object_id=username,
                 after={"username": username, "password_set": bool(password)})
    return user


@transaction.atomic
def user_profile_update(*, user, values: dict, actor):
    """Change names, e-mail, username or the active flag; the changed fields are audited before and after."""
    unknown = set(values) - set(PROFILE_FIELDS)
    if unknown:
        raise ValueError(f"not profile fields: {sorted(unknown)}")
    locked = get_user_model().objects.select_for_update().get(pk=user.pk)
    if values.get("is_active") is False and _same_user(locked, actor):
        raise TieoutError("You cannot deactivate yourself.", code=Codes.INVALID_REQUEST, status=422)
    before = {name: getattr(locked, name) for name in values if getattr(locked, name) != values[name]}
    if not before:
        return locked
    for name in before:
        setattr(locked, name, values[name])
    locked.save(update_fields=list(before))
    audit.record(actor=actor, action="user.profile_changed", object_type="user", object_id=before.get(
        "username", locked.username), before=before, after={name: values[name] for name in before})
    for name in before:
        setattr(user, name, values[name])
    return locked


@transaction.atomic
def user_roles_set(*, user, roles: list[str] | set[str] | tuple[str, ...], actor):
    """Give `user` exactly these roles (groups among config.roles.ROLES); other groups are left alone.

    The staff and superuser flags follow the roles: any staff role may sign in to the portal and the
    admin, and admin is a superuser. An admin cannot take the admin role from themself (nobody would be
    left to give it back).
    """
    wanted = set(roles)
    unknown = wanted - set(ROLES)
    if unknown:
        raise TieoutError(f"unknown roles: {', '.join(sorted(unknown))}", code=Codes.INVALID_REQUEST, status=422)
    locked = get_user_model().objects.select_for_update().get(pk=user.pk)
    held = set(locked.groups.filter(name__in=ROLES).values_list("name", flat=True))
    is_admin_now = ADMIN in held or locked.is_superuser
    if _same_user(locked, actor) and is_admin_now and ADMIN not in wanted:
        raise TieoutError("You cannot remove your own admin role.", code=Codes.INVALID_REQUEST, status=422)
    before = {"roles": sorted(held), "is_staff": locked.is_staff, "is_superuser": locked.is_superuser}
    for name in wanted - held:
        locked.groups.add(Group.objects.get_or_create(name=name)[0])
    removed = held - wanted
    if removed:
        locked.groups.remove(*Group.objects.filter(name__in=removed))
    locked.is_staff = bool(wanted & STAFF_ROLES)
    locked.is_superuser = ADMIN in wanted
    locked.save(update_fields=["is_staff", "is_superuser"])
    after = {"roles": sorted(wanted), "is_staff": locked.is_staff, "is_superuser": locked.is_superuser}
    if after != before:
        audit.record(actor=actor, action="user.roles_set", object_type="user", object_id=locked.username,
                     before=before, after=after)
    for obj in (user, locked):
        obj.__dict__.pop("_tieout_roles", None)
        obj.is_staff, obj.is_superuser = locked.is_staff, locked.is_superuser
    return locked


def _same_user(user, actor) -> bool:
    return getattr(actor, "pk", None) is not None and actor.pk == user.pk


def user_password_set_record(*, user, actor) -> None:
    """Audit a password set by Django's own password form (the admin's); must run in that form's transaction."""
    audit.record(actor=actor, action="user.password_set", object_type="user", object_id=user.get_username())


@transaction.atomic
def user_sign_in_unlock(*, user, actor) -> int:
    """Clear django-axes' failed attempts for the username (the lockout), audited; returns how many went."""
    get_user_model().objects.select_for_update().get(pk=user.pk)
    cleared = axes_reset(username=user.get_username())
    audit.record(actor=actor, action="user.sign_in_unlocked", object_type="user", object_id=user.get_username(),
                 after={"attempts_cleared": cleared})
    return cleared


# Second factor (TOTP) ----------------------------------------------------------------------------------
class TwoFactorThrottled(TieoutError):
    code = Codes.TWO_FACTOR_THROTTLED
    status = 429
    title = "Too many wrong codes"

    def __init__(self, locked_until: datetime | None):
        super().__init__("too many wrong codes: wait before the next try")
        self.locked_until = locked_until


@dataclass
class Verification:
    device: TOTPDevice | None
    ok: bool


def user_2fa_device(user) -> TOTPDevice | None:
    """The user's confirmed authenticator, if any."""
    return TOTPDevice.objects.filter(user=user, confirmed=True).order_by("id").first()


def user_2fa_enrolled(user) -> bool:
    return TOTPDevice.objects.filter(user=user, confirmed=True).exists()


@transaction.atomic
def user_2fa_start(*, user) -> TOTPDevice:
    """The unconfirmed device being enrolled: the same one on every reload, so the QR code stays valid.

    Refused once a device is confirmed: replacing it takes an admin's reset, or anyone holding only the
    password could swap the owner's authenticator for their own.
    """
    get_user_model().objects.select_for_update().get(pk=user.pk)
    if user_2fa_enrolled(user):
        raise TieoutError("two-factor authentication is already set up", code=Codes.INVALID_STATE, status=409)
    device = TOTPDevice.objects.filter(user=user, confirmed=False).order_by("id").first()
    if device is None:
        device = TOTPDevice.objects.create(user=user, name=DEVICE_NAME, confirmed=False)
        audit.record(actor=user, action="user.2fa_enrolment_started", object_type="user",
                     object_id=user.get_username(), after={"device": device.pk})
    return device


def _check_code(*, user, device: TOTPDevice, token: str, failure_action: str) -> bool:
    allowed, info = device.verify_is_allowed()
    if not allowed:
        raise TwoFactorThrottled((info or {}).get("locked_until"))
    # verify_token counts a failure (the throttle) or spends the code (last_t): saved either way.
    if device.verify_token((token or "").strip()):
        return True
    audit.record(actor=user, action=failure_action, object_type="user", object_id=user.get_username(),
                 after={"device": device.pk, "failures": device.throttling_failure_count})
    return False


@transaction.atomic
def user_2fa_enrol(*, user, token: str) -> Verification:
    """Confirm the device being enrolled with a code from it; a wrong code counts towards the throttle."""
    get_user_model().objects.select_for_update().get(pk=user.pk)
    if user_2fa_enrolled(user):
        raise TieoutError("two-factor authentication is already set up", code=Codes.INVALID_STATE, status=409)
    device = TOTPDevice.objects.select_for_update().filter(user=user, confirmed=False).order_by("id").first()
    if device is None:
        raise TieoutError("no enrolment in progress", code=Codes.INVALID_STATE, status=409)
    if not _check_code(user=user, device=device, token=token, failure_action="user.2fa_enrolment_failed"):
        return Verification(device, False)
    device.confirmed = True
    device.save(update_fields=["confirmed"])
    TOTPDevice.objects.filter(user=user, confirmed=False).delete()
    audit.record(actor=user, action="user.2fa_enrolled", object_type="user", object_id=user.get_username(),
                 after={"device": device.pk})
    return Verification(device, True)


@transaction.atomic
def user_2fa_verify(*, user, token: str) -> Verification:
    """Check a code against the user's confirmed device (row locked: a code is spent once, throttle holds)."""
    device = TOTPDevice.objects.select_for_update().filter(user=user, confirmed=True).order_by("id").first()
    if device is None:
        return Verification(None, False)
    if not _check_code(user=user, device=device, token=token, failure_action="user.2fa_failed"):
        return Verification(device, False)
    audit.record(actor=user, action="user.2fa_verified", object_type="user", object_id=user.get_username(),
                 after={"device": device.pk})
    return Verification(device, True)


@transaction.atomic
def user_2fa_reset(*, user, actor) -> int:
    """Remove the user's authenticators (lost phone): their next sign-in enrols a new one. Audited."""
    get_user_model().objects.select_for_update().get(pk=user.pk)
    devices = list(TOTPDevice.objects.select_for_update().filter(user=user).values_list("id", "confirmed"))
    TOTPDevice.objects.filter(pk__in=[pk for pk, _ in devices]).delete()
    audit.record(actor=actor, action="user.2fa_reset", object_type="user", object_id=user.get_username(),
                 before={"devices": len(devices), "confirmed": sum(1 for _, c in devices if c)},
                 after={"devices": 0})
    return len(devices)


# Thin adapters: Django's auth signals become audit entries, nothing else (connected in apps.ready).
def on_signed_in(sender, request, user, **kwargs):
    user_session_record(action="user.signed_in", username=user.get_username(), request=request)


def on_signed_out(sender, request, user, **kwargs):
    if user is not None:
        user_session_record(action="user.signed_out", username=user.get_username(), request=request)


def on_sign_in_failed(sender, credentials, request=None, **kwargs):
    user_session_record(action="user.sign_in_failed", username=str(credentials.get("username", "")),
                        request=request, locked_out=bool(getattr(request, "axes_locked_out", False)))


def connect_signals() -> None:
    signals.user_logged_in.connect(on_signed_in, dispatch_uid="tieout.user_signed_in")
    signals.user_logged_out.connect(on_signed_out, dispatch_uid="tieout.user_signed_out")
    signals.user_login_failed.connect(on_sign_in_failed, dispatch_uid="tieout.user_sign_in_failed")
