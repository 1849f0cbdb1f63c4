"""Web pages: signing in and out, the second factor (TOTP) and the user's own security page.
`/accounts/login/` is the one door (the admin's login redirects here); `authenticate(request=...)` lets
django-axes count failures and lock the account (`locked_out`, 429). A controller or admin past the password
is half signed in until they enter (`/accounts/2fa/`) or enrol (`/accounts/2fa/setup/`) an authenticator,
enforced by `portal/web/middleware.py`. Decisions and audit entries live in `portal/auth_services.py`; these
views translate forms and sessions."""
import math
from base64 import b32encode
from urllib.parse import urlencode

import django_otp
import segno
from axes.helpers import get_client_username, get_cool_off, get_failure_limit
from django import forms
from django.conf import settings
from django.contrib import messages
from django.contrib.auth import login as auth_login
from django.contrib.auth.forms import AuthenticationForm
from django.contrib.auth.views import LoginView, LogoutView, redirect_to_login
from django.core.validators import RegexValidator
from django.http import HttpResponseRedirect
from django.shortcuts import redirect, render
from django.urls import path, reverse
from django.utils import timezone
from django.utils.decorators import method_decorator
from django.utils.http import url_has_allowed_host_and_scheme
from django.utils.safestring import mark_safe
from django.views.decorators.cache import never_cache
from django.views.decorators.csrf import csrf_protect
from django.views.decorators.debug import sensitive_post_parameters

from config import roles
from config.errors import TieoutError
from portal import auth_services
from portal.web.access import READERS, page
from portal.web.middleware import needs_second_factor, second_factor_required_for_role


def safe_next(request, fallback: str | None = None) -> str:
    """The `next` the user asked for if it stays on this site, else the fallback (the dashboard)."""
    candidate = request.POST.get("next") or request.GET.get("next") or ""
    if candidate and url_has_allowed_host_and_scheme(candidate, allowed_hosts={request.get_host()},
                                                     require_https=request.is_secure()):
        return candidate
    return fallback or settings.LOGIN_REDIRECT_URL


def _with_next(name: str, target: str) -> str:
    return f"{reverse(name)}?{urlencode({'next': target})}"


def _finish_second_factor(request, device) -> None:
    django_otp.login(request, device)
    # The session now carries more privilege than the password alone gave it: give it a new key.
    request.session.cycle_key()


# Sign in and out ---------------------------------------------------------------------------------------
class SignInForm(AuthenticationForm):
    error_messages = {
        **AuthenticationForm.error_messages,
        "invalid_login": (f"The username or password is not correct. After {settings.AXES_FAILURE_LIMIT} "
                          "wrong tries in a row the account is locked for a while."),
    }


class SignInView(LoginView):
    template_name = "accounts/login.html"
    authentication_form = SignInForm
    redirect_authenticated_user = False  # a signed-in user sent here by the admin may switch account

    def form_valid(self, form):
        auth_login(self.request, form.get_user())
        target = self.get_success_url()  # LoginView keeps `next` only when it is on this site
        if needs_second_factor(self.request.user):
            return HttpResponseRedirect(_with_next("2fa-verify", target))
        return HttpResponseRedirect(target)


@method_decorator(never_cache, name="dispatch")
class SignOutView(LogoutView):
    """POST signs out (CSRF-checked, as LogoutView does); GET only asks to confirm."""

    http_method_names = ["get", "post", "options"]
    template_name = "accounts/logout.html"

    def get(self, request, *args, **kwargs):
        if not request.user.is_authenticated:
            return redirect(settings.LOGIN_URL)
        return render(request, self.template_name)

    def post(self, request, *args, **kwargs):
        response = super().post(request, *args, **kwargs)
        messages.info(request, "You have signed out.")
        return response


def admin_login(request, extra_context=None):
    """The admin's own login page, replaced: everyone signs in through the one guarded page."""
    return redirect(_with_next("login", safe_next(request, fallback=reverse("admin:index"))))


def locked_out(request, original_response=None, credentials=None):
    """django-axes' answer to a locked username (AXES_LOCKOUT_CALLABLE): 429 with when to try again."""
    cool_off = get_cool_off(request)
    seconds = int(cool_off.total_seconds()) if cool_off else 0
    context = {
        "username": get_client_username(request, credentials) or "",
        "failure_limit": get_failure_limit(request, credentials),
        "minutes": math.ceil(seconds / 60) if seconds else None,
        "retry_at": timezone.now() + cool_off if cool_off else None,
    }
    response = render(request, settings.AXES_LOCKOUT_TEMPLATE, context, status=429)
    if seconds:
        response["Retry-After"] = str(seconds)
    return response


# Second factor -----------------------------------------------------------------------------------------
class CodeForm(forms.Form):
    otp_token = forms.CharField(
        label="Authentication code", min_length=6, max_length=8, strip=True,
        validators=[RegexValidator(r"^[0-9]{6,8}$", "Enter the 6-digit code from your authenticator app.")],
        widget=forms.TextInput(attrs={"autocomplete": "one-time-code", "inputmode": "numeric",
                                      "pattern": "[0-9]{6,8}", "autofocus": True, "size": 8, "class": "code-input",
                                      "aria-describedby": "otp-help"}))


WRONG_CODE = "That code is not correct or has expired. Enter the code your authenticator app shows now."


def _throttled_message(exc: auth_services.TwoFactorThrottled) -> str:
    if exc.locked_until is None:
        return "Too many wrong codes. Wait a moment, then try again."
    wait = max(1, math.ceil((exc.locked_until - timezone.now()).total_seconds()))
    return f"Too many wrong codes. Wait {wait} seconds, then enter the current code."


def _require_signed_in(request):
    if not request.user.is_authenticated:
        return redirect_to_login(request.get_full_path())
    return None


@never_cache
@csrf_protect
@sensitive_post_parameters("otp_token")
def two_factor_verify(request):
    if (refused := _require_signed_in(request)) is not None:
        return refused
    target = safe_next(request)
    if request.user.is_verified():
        return redirect(target)
    if auth_services.user_2fa_device(request.user) is None:
        return redirect(_with_next("2fa-setup", target))
    form = CodeForm(request.POST or None)
    status = 200
    if request.method == "POST" and form.is_valid():
        try:
            result = auth_services.user_2fa_verify(user=request.user, token=form.cleaned_data["otp_token"])
        except auth_services.TwoFactorThrottled as exc:
            form.add_error(None, _throttled_message(exc))
            status = 429
        else:
            if result.ok:
                _finish_second_factor(request, result.device)
                return redirect(target)
            form.add_error("otp_token", WRONG_CODE)
    elif request.method == "POST":
        status = 400
    return render(request, "accounts/two_factor_verify.html", {"form": form, "next": target}, status=status)


@never_cache
@csrf_protect
@sensitive_post_parameters("otp_token")
def two_factor_setup(request):
    """Enrol an authenticator app: the secret (QR code and text), then one code to prove it works."""
    if (refused := _require_signed_in(request)) is not None:
        return refused
    target = safe_next(request)
    if auth_services.user_2fa_enrolled(request.user):
        if request.user.is_verified():
            messages.info(request, "Two-factor authentication is already set up. An admin can reset it "
                                   "if you lose your authenticator.")
            return redirect("security")
        return redirect(_with_next("2fa-verify", target))
    form = CodeForm(request.POST or None)
    status = 200
    if request.method == "POST" and form.is_valid():
        try:
            result = auth_services.user_2fa_enrol(user=request.user, token=form.cleaned_data["otp_token"])
        except auth_services.TwoFactorThrottled as exc:
            form.add_error(None, _throttled_message(exc))
            status = 429
        except TieoutError as exc:  # enrolled meanwhile in another tab, or the enrolment was reset
            messages.error(request, exc.detail)
            return redirect(_with_next("2fa-setup", target))
        else:
            if result.ok:
                _finish_second_factor(request, result.device)
                messages.success(request, "Two-factor authentication is set up. You will be asked for a code "
                                          "each time you sign in.")
                return redirect(target)
            form.add_error("otp_token", WRONG_CODE)
    elif request.method == "POST":
        status = 400
    try:
        device = auth_services.user_2fa_start(user=request.user)
    except TieoutError:
        return redirect(_with_next("2fa-verify", target))
    # segno writes the SVG itself from the otpauth:// URL; nothing user-typed goes into it unescaped.
    qr_svg = segno.make(device.config_url, error="m").svg_inline(scale=4, title="QR code of your Tieout secret")
    context = {
        "form": form,
        "next": target,
        "qr_svg": mark_safe(qr_svg),  # noqa: S308
        "secret": b32encode(device.bin_key).decode(),
        "issuer": getattr(settings, "OTP_TOTP_ISSUER", "Tieout"),
        "required": second_factor_required_for_role(request.user),
    }
    return render(request, "accounts/two_factor_setup.html", context, status=status)


@never_cache
@page(read=READERS)
def security(request):
    """The user's own sign-in security: second factor, session lifetime, roles and entities."""
    user = request.user
    device = auth_services.user_2fa_device(user)
    codes = roles.entity_codes(user)
    context = {
        "device": device,
        "two_factor_on": settings.TIEOUT_2FA,
        "required": second_factor_required_for_role(user),
        "verified": user.is_verified(),
        "session_minutes": settings.SESSION_COOKIE_AGE // 60,
        "entities": None if codes is None else sorted(codes),
    }
    return render(request, "accounts/security.html", context)


urlpatterns = [
    path("login/", SignInView.as_view(), name="login"),
    path("logout/", SignOutView.as_view(), name="logout"),
    path("2fa/", two_factor_verify, name="2fa-verify"),
    path("2fa/setup/", two_factor_setup, name="2fa-setup"),
    path("security/", security, name="security"),
]
