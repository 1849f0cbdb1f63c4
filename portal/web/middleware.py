"""Two-factor enforcement: a user signed in by password alone who owes a second factor (controllers and admins
always; anyone who enrolled one) may only finish 2FA. With django-otp's `request.user.is_verified()`, pages
redirect to `/accounts/2fa/?next=...` and session API calls get a 403 `two_factor_required` problem until a
TOTP device is verified or enrolled. `TIEOUT_2FA=off` disables it for demos and tests; Bearer-token API calls
carry no session and are not affected (machine credentials issued by an operator)."""
from urllib.parse import urlencode

from django.conf import settings
from django.http import JsonResponse
from django.shortcuts import redirect
from django_otp.plugins.otp_totp.models import TOTPDevice

from config import roles
from config.errors import Codes

TWO_FACTOR_ROLES = (roles.CONTROLLER, roles.ADMIN)
TWO_FACTOR_URL = "/accounts/2fa/"
# Paths a half-signed-in user may still reach: the sign-in and 2FA pages, sign-out, probes and assets.
# (Not the rest of /accounts/: the security page is for users who have finished signing in.)
EXEMPT_PREFIXES = ("/accounts/login/", "/accounts/logout/", TWO_FACTOR_URL, "/static/", "/healthz", "/readyz",
                   "/metrics")


def second_factor_required_for_role(user) -> bool:
    return roles.has_role(user, *TWO_FACTOR_ROLES)


def _has_enrolled(user) -> bool:
    cached = getattr(user, "_tieout_has_2fa", None)
    if cached is None:
        cached = TOTPDevice.objects.filter(user_id=user.pk, confirmed=True).exists()
        user._tieout_has_2fa = cached
    return cached


def needs_second_factor(user) -> bool:
    """True while `user` has signed in with the password but still owes (and has not given) a code."""
    if not settings.TIEOUT_2FA or not user.is_authenticated:
        return False
    is_verified = getattr(user, "is_verified", None)
    if is_verified and is_verified():
        return False
    return second_factor_required_for_role(user) or _has_enrolled(user)


class TwoFactorRequiredMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        user = getattr(request, "user", None)
        if user is not None and not request.path.startswith(EXEMPT_PREFIXES) and needs_second_factor(user):
            if request.path.startswith("/api/"):
                return JsonResponse(
                    {"type": "about:blank", "title": "Two-factor authentication required", "status": 403,
                     "detail": "verify your second factor at /accounts/2fa/ before using the API from a session",
                     "code": Codes.TWO_FACTOR_REQUIRED},
                    status=403, content_type="application/problem+json")
            return redirect(f"{TWO_FACTOR_URL}?{urlencode({'next': request.get_full_path()})}")
        return self.get_response(request)
