"""Two-factor enforcement: a controller or admin signed in by password alone may only finish 2FA.

django-otp's OTPMiddleware marks `request.user.is_verified()`; this middleware refuses everything else
to such a user until they verify a TOTP device (or enrol one). `TIEOUT_2FA=off` (settings.TIEOUT_2FA)
turns the requirement off for demos and tests. Bearer-token API calls never carry a session, so they are
not affected: tokens are machine credentials, issued by an operator.
"""
from django.conf import settings
from django.http import JsonResponse
from django.shortcuts import redirect

from config import roles

TWO_FACTOR_ROLES = (roles.CONTROLLER, roles.ADMIN)
# Paths a half-signed-in user may still reach: the 2FA pages themselves, sign-out, probes and assets.
EXEMPT_PREFIXES = ("/accounts/", "/static/", "/healthz", "/readyz", "/metrics")


def needs_second_factor(user) -> bool:
    if not settings.TIEOUT_2FA or not user.is_authenticated:
        return False
    if not roles.has_role(user, *TWO_FACTOR_ROLES):
        return False
    is_verified = getattr(user, "is_verified", None)
    return not (is_verified and is_verified())


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
                     "code": "two_factor_required"},
                    status=403, content_type="application/problem+json")
            return redirect(f"/accounts/2fa/?next={request.get_full_path()}")
        return self.get_response(request)
