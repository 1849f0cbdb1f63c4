"""Who may open a page and who may act on it, decided on the server for every request: `page(read=...,
write=...)` wraps a function view; signed-out visitors go to the login page, GET or HEAD needs a `read` role,
any other method a `write` role, and a forged POST is refused with 403 whatever the page showed. Templates
only hide the buttons; the decision is here, and again in the services."""
from functools import wraps

from django.contrib.auth.views import redirect_to_login
from django.shortcuts import render

from config import roles
from portal.web.middleware import needs_second_factor

SAFE_METHODS = ("GET", "HEAD", "OPTIONS")
WORKERS = (roles.FINANCE_OPS, roles.CONTROLLER, roles.ADMIN)
DECIDERS = (roles.CONTROLLER, roles.ADMIN)
READERS = roles.READ_ALL


def refuse(request, message: str = "Your role may not do this.", status: int = 403):
    return render(request, "403.html", {"message": message}, status=status)


def page(*, read: tuple[str, ...] = READERS, write: tuple[str, ...] = ()):
    def decorator(view):
        @wraps(view)
        def wrapped(request, *args, **kwargs):
            if not request.user.is_authenticated:
                return redirect_to_login(request.get_full_path())
            allowed = read if request.method in SAFE_METHODS else write
            if not roles.has_role(request.user, *allowed):
                return refuse(request)
            return view(request, *args, **kwargs)

        wrapped.tieout_read_roles = read
        wrapped.tieout_write_roles = write
        return wrapped

    return decorator


def portal(request):
    """Template context: the signed-in user's roles and what the UI may offer them (never trusted)."""
    user = getattr(request, "user", None)
    held = roles.user_roles(user) if user is not None else frozenset()
    return {
        # Signed in by password only, 2FA still to do: the pages show no navigation until it is done.
        "needs_2fa": user is not None and needs_second_factor(user),
        "user_roles": sorted(held),
        "can_work": bool(held & set(WORKERS)),
        "can_decide": bool(held & set(DECIDERS)),
        "is_admin": roles.ADMIN in held,
        "is_auditor": bool(held) and not (held & set(WORKERS)) and roles.AUDITOR in held,
    }
