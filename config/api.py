"""API plumbing shared by every app: RFC 9457 problem responses, pagination, per-token throttling."""
import time

from django.core.exceptions import PermissionDenied
from django.http import Http404
from rest_framework import exceptions as drf_exceptions
from rest_framework.pagination import PageNumberPagination
from rest_framework.response import Response
from rest_framework.settings import api_settings
from rest_framework.throttling import BaseThrottle, SimpleRateThrottle

from config.errors import Codes, TieoutError

PROBLEM_CONTENT_TYPE = "application/problem+json"


def problem_response(status: int, code: str, title: str, detail: str, errors=None, headers=None) -> Response:
    body = {"type": f"https://tieout.dev/problems/{code}", "title": title, "status": status,
            "detail": detail, "code": code}
    if errors is not None:
        body["errors"] = errors
    response = Response(body, status=status, headers=headers, content_type=PROBLEM_CONTENT_TYPE)
    return response


def _flatten(detail, prefix="") -> list[dict]:
    if isinstance(detail, dict):
        out = []
        for key, value in detail.items():
            field = f"{prefix}.{key}" if prefix else str(key)
            out.extend(_flatten(value, field))
        return out
    if isinstance(detail, list):
        if all(not isinstance(item, (dict, list)) for item in detail):
            return [{"field": prefix or "non_field_errors", "message": str(item)} for item in detail]
        out = []
        for index, value in enumerate(detail):
            out.extend(_flatten(value, f"{prefix}[{index}]"))
        return out
    return [{"field": prefix or "non_field_errors", "message": str(detail)}]


_DRF_CODES = {
    drf_exceptions.NotAuthenticated: (Codes.NOT_AUTHENTICATED, "Authentication required"),
    drf_exceptions.AuthenticationFailed: (Codes.NOT_AUTHENTICATED, "Authentication failed"),
    drf_exceptions.PermissionDenied: (Codes.PERMISSION_DENIED, "Not allowed"),
    drf_exceptions.NotFound: (Codes.NOT_FOUND, "Not found"),
    drf_exceptions.Throttled: (Codes.THROTTLED, "Too many requests"),
    drf_exceptions.ValidationError: (Codes.INVALID_REQUEST, "Invalid request"),
    drf_exceptions.ParseError: (Codes.INVALID_REQUEST, "Malformed request"),
}


def problem_exception_handler(exc, context):
    if isinstance(exc, TieoutError):
        return problem_response(exc.status, exc.code, exc.title, exc.detail, exc.errors)
    if isinstance(exc, Http404):
        exc = drf_exceptions.NotFound()
    elif isinstance(exc, PermissionDenied):
        exc = drf_exceptions.PermissionDenied()
    if isinstance(exc, drf_exceptions.APIException):
        code, title = Codes.INVALID_REQUEST, "Request failed"
        for klass, pair in _DRF_CODES.items():
            if isinstance(exc, klass):
                code, title = pair
                break
        # A subclass may name its own stable code (an expired API token: token_expired).
        code, title = getattr(exc, "problem_code", code), getattr(exc, "problem_title", title)
        headers = {}
        if getattr(exc, "auth_header", None):
            headers["WWW-Authenticate"] = exc.auth_header
        if isinstance(exc, drf_exceptions.Throttled) and exc.wait is not None:
            headers["Retry-After"] = str(int(exc.wait) + 1)
        errors = _flatten(exc.detail) if isinstance(exc, drf_exceptions.ValidationError) else None
        detail = exc.detail if isinstance(exc.detail, str) else title
        status = exc.status_code
        # DRF answers 403 to an unauthenticated request when no authenticator sends a challenge.
        if isinstance(exc, (drf_exceptions.NotAuthenticated, drf_exceptions.AuthenticationFailed)):
            status = 401
            headers.setdefault("WWW-Authenticate", 'Bearer realm="api"')
        return problem_response(status, code, title, str(detail), errors, headers)
    return None


class DefaultPagination(PageNumberPagination):
    page_size_query_param = "page_size"
    max_page_size = 1000


class TokenRateThrottle(BaseThrottle):
    """Fixed-window rate limit per API token (per user for session clients), one Redis round trip.

    DRF's SimpleRateThrottle keeps every request time in one cached list that each request reads and
    rewrites (not atomic across processes, and growing with the rate); an INCR + EXPIRE pipeline is
    atomic and constant-size. When Redis is down we keep taking events (fail open) rather than refuse
    money movements: the receipt log and the database still protect every write.
    """

    scope = "token"
    THROTTLE_RATES = api_settings.DEFAULT_THROTTLE_RATES
    _client = None

    def __init__(self):
        self.num_requests, self.duration = SimpleRateThrottle.parse_rate(None, self.THROTTLE_RATES[self.scope])
        self.wait_seconds = None

    @classmethod
    def client(cls):
        if cls._client is None:
            import redis
            from django.conf import settings

            cls._client = redis.Redis.from_url(settings.REDIS_URL, socket_connect_timeout=1, socket_timeout=1)
        return cls._client

    def ident(self, request) -> str | None:
        token = getattr(request, "auth", None)
        if getattr(token, "pk", None) is not None:
            return f"t{token.pk}"
        if request.user and request.user.is_authenticated:
            return f"u{request.user.pk}"
        return None

    def allow_request(self, request, view):
        ident = self.ident(request)
        if ident is None:
            return True
        from django.conf import settings

        now = time.time()
        window = int(now // self.duration)
        key = f"{settings.CACHES['default'].get('KEY_PREFIX', 'tieout')}:throttle:{ident}:{window}"
        try:
            pipe = self.client().pipeline(transaction=False)
            pipe.incr(key)
            pipe.expire(key, self.duration + 1)
            count, _ = pipe.execute()
        except Exception as exc:  # redis.ConnectionError, TimeoutError, ...
            import structlog

            structlog.get_logger("tieout.throttle").warning("throttle.unavailable", error=str(exc))
            return True
        if count > self.num_requests:
            self.wait_seconds = self.duration - (now % self.duration)
            return False
        return True

    def wait(self):
        return self.wait_seconds
