"""API plumbing shared by every app: RFC 9457 problem responses (and their place in the OpenAPI schema),
OPTIONS metadata, the JSON body limit, pagination, per-token throttling."""
import time

import redis
import structlog
from django.conf import settings
from django.conf import settings as django_settings
from django.core.exceptions import PermissionDenied, RequestDataTooBig
from django.http import Http404, JsonResponse
from rest_framework import exceptions as drf_exceptions
from rest_framework.metadata import BaseMetadata
from rest_framework.pagination import PageNumberPagination
from rest_framework.parsers import JSONParser
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


# The problem for an error that none of our views raised (Django's or DRF's own refusals), by status.
STATUS_PROBLEMS = {
    400: (Codes.INVALID_REQUEST, "Invalid request"),
    401: (Codes.NOT_AUTHENTICATED, "Authentication required"),
    403: (Codes.PERMISSION_DENIED, "Not allowed"),
    404: (Codes.NOT_FOUND, "Not found"),
    405: (Codes.METHOD_NOT_ALLOWED, "Method not allowed"),
    406: (Codes.NOT_ACCEPTABLE, "Not acceptable"),
    413: (Codes.PAYLOAD_TOO_LARGE, "Request body too large"),
    415: (Codes.UNSUPPORTED_MEDIA_TYPE, "Unsupported media type"),
    429: (Codes.THROTTLED, "Too many requests"),
    500: (Codes.SERVER_ERROR, "Internal server error"),
}


def problem_http_response(status: int, detail: str | None = None) -> JsonResponse:
    """A problem document outside DRF (middleware, Django's own 404/500): same body, same media type."""
    code, title = STATUS_PROBLEMS.get(status, (Codes.INVALID_REQUEST if status < 500 else Codes.SERVER_ERROR,
                                                "Request failed"))
    body = {"type": f"https://tieout.dev/problems/{code}", "title": title, "status": status,
            "detail": detail or title, "code": code}
    return JsonResponse(body, status=status, content_type=PROBLEM_CONTENT_TYPE)


class PayloadTooLarge(drf_exceptions.APIException):
    status_code = 413
    default_detail = "The request body is larger than this server accepts."
    default_code = "payload_too_large"


_DRF_CODES = {
    drf_exceptions.NotAuthenticated: (Codes.NOT_AUTHENTICATED, "Authentication required"),
    drf_exceptions.AuthenticationFailed: (Codes.NOT_AUTHENTICATED, "Authentication failed"),
    drf_exceptions.PermissionDenied: (Codes.PERMISSION_DENIED, "Not allowed"),
    drf_exceptions.NotFound: (Codes.NOT_FOUND, "Not found"),
    drf_exceptions.Throttled: (Codes.THROTTLED, "Too many requests"),
    drf_exceptions.ValidationError: (Codes.INVALID_REQUEST, "Invalid request"),
    drf_exceptions.ParseError: (Codes.INVALID_REQUEST, "Malformed request"),
    drf_exceptions.MethodNotAllowed: STATUS_PROBLEMS[405],
    drf_exceptions.NotAcceptable: STATUS_PROBLEMS[406],
    drf_exceptions.UnsupportedMediaType: STATUS_PROBLEMS[415],
    PayloadTooLarge: STATUS_PROBLEMS[413],
}


def problem_exception_handler(exc, context):
    if isinstance(exc, TieoutError):
        return problem_response(exc.status, exc.code, exc.title, exc.detail, exc.errors)
    if isinstance(exc, RequestDataTooBig):  # request.body over DATA_UPLOAD_MAX_MEMORY_SIZE
        exc = PayloadTooLarge()
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


class LimitedJSONParser(JSONParser):
    """JSON bodies up to DATA_UPLOAD_MAX_MEMORY_SIZE, like the views that read `request.body` themselves.

    DRF reads the request stream directly, which Django's size limit does not cover: without this check a
    JSON endpoint would read a body of any size into memory.
    """

    def parse(self, stream, media_type=None, parser_context=None):
        request = (parser_context or {}).get("request")
        limit = django_settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        if request is not None and limit is not None:
            try:
                length = int(request.META.get("CONTENT_LENGTH") or 0)
            except ValueError:
                length = 0
            if length > limit:
                raise PayloadTooLarge()
        return super().parse(stream, media_type, parser_context)


class ApiMetadata(BaseMetadata):
    """What OPTIONS answers: the view's name, description and media types (the Allow header lists methods).

    DRF's SimpleMetadata also describes the view's serializer, which fails (500) on views that read their
    body themselves and have none; the request bodies are documented in the OpenAPI schema instead.
    """

    def determine_metadata(self, request, view):
        return {"name": view.get_view_name(), "description": view.get_view_description(),
                "renders": [renderer.media_type for renderer in view.renderer_classes],
                "parses": [parser.media_type for parser in view.parser_classes]}


# The OpenAPI side of the problem documents: one Problem component, and every error status an operation
# can answer listed on it with that body (drf-spectacular postprocessing hook, so that no view repeats it).
PROBLEM_SCHEMA = {
    "type": "object",
    "description": "RFC 9457 problem details, with a stable snake_case `code`.",
    "properties": {
        "type": {"type": "string", "description": "https://tieout.dev/problems/<code>"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "code": {"type": "string", "description": "Stable error code (config.errors.Codes)"},
        "errors": {"type": "array", "description": "Field errors of a refused body or query",
                   "items": {"type": "object", "required": ["field", "message"],
                             "properties": {"field": {"type": "string"}, "message": {"type": "string"}}}},
    },
    "required": ["type", "title", "status", "detail", "code"],
}

# Every operation: no or a bad token, a role or entity that may not, an unknown or malformed id (also a
# page past the end), the rate limit.
_ALWAYS = {
    401: "not_authenticated: no token, or an unknown, expired or revoked one",
    403: "permission_denied: the caller's role may not do this",
    404: "not_found: no such resource (or one outside the caller's entities), or a malformed id",
    429: "throttled: too many requests for this token (Retry-After says when to retry)",
}
# Operations that take a query: a filter or parameter value that does not parse.
_QUERY = {400: "invalid_request: a query parameter is missing or malformed"}
# Operations that change something (POST): a body that is not JSON, too large, or breaks the rules.
_WRITE = {
    400: "invalid_request: the body is not valid JSON",
    409: "a conflict with the resource's state (idempotency_conflict, already_decided, invalid_state, ...)",
    413: "payload_too_large: the body is over the server's limit",
    415: "unsupported_media_type: the body is not application/json",
    422: "the request breaks a rule (invalid_request, invalid_event, segregation_of_duties, ...)",
}
_METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}


def problem_responses_hook(result, generator, request, public):
    """drf-spectacular postprocessing hook: the error answers of every operation, as problem+json."""
    result.setdefault("components", {}).setdefault("schemas", {})["Problem"] = PROBLEM_SCHEMA
    problem = {PROBLEM_CONTENT_TYPE: {"schema": {"$ref": "#/components/schemas/Problem"}}}
    for item in result.get("paths", {}).values():
        for method, operation in item.items():
            if method not in _METHODS:
                continue
            added = dict(_ALWAYS)
            if any(param.get("in") == "query" for param in operation.get("parameters", [])):
                added.update(_QUERY)
            if method in {"post", "put", "patch", "delete"}:
                added.update(_WRITE)
            responses = operation.setdefault("responses", {})
            for status, description in added.items():
                responses.setdefault(str(status), {"description": description})
            for status, response in responses.items():
                if status.isdigit() and int(status) >= 400:
                    response["content"] = problem
            operation["responses"] = dict(sorted(responses.items()))
    return result


class DefaultPagination(PageNumberPagination):
    page_size_query_param = "page_size"
    max_page_size = 1000


class TokenRateThrottle(BaseThrottle):
    """Fixed-window rate limit per API token (per user for session clients), one Redis round trip.

    DRF's SimpleRateThrottle keeps every request time in one cached list that each request reads and
    rewrites (not atomic across processes, and growing with the rate); an INCR + EXPIRE pipeline is
    atomic and constant-size (and rides on the token check's round trip when the token was cached:
    `counted_with`). When Redis is down we keep taking events (fail open) rather than refuse
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
            cls._client = redis.Redis.from_url(settings.REDIS_URL, socket_connect_timeout=1, socket_timeout=1)
        return cls._client

    def ident(self, request) -> str | None:
        token = getattr(request, "auth", None)
        if getattr(token, "pk", None) is not None:
            return f"t{token.pk}"
        if request.user and request.user.is_authenticated:
            return f"u{request.user.pk}"
        return None

    # Where a request's count may already be (see `counted_with`): DRF's Request hands the attribute through.
    COUNTED = "_tieout_throttle_count"

    @classmethod
    def _key(cls, ident: str, now: float, duration: int) -> str:
        return f"{settings.CACHES['default'].get('KEY_PREFIX', 'tieout')}:throttle:{ident}:{int(now // duration)}"

    @classmethod
    def counted_with(cls, pipe, ident: str):
        """Queue this request's INCR + EXPIRE on `pipe`, another Redis round trip the request makes anyway (the
        token check's); after `pipe.execute()`, `counted(count)` is what to store on the request under
        `COUNTED`, and `allow_request` uses it instead of a round trip of its own."""
        duration = SimpleRateThrottle.parse_rate(None, cls.THROTTLE_RATES[cls.scope])[1]
        key = cls._key(ident, time.time(), duration)
        pipe.incr(key)
        pipe.expire(key, duration + 1)
        return lambda count: (key, count)

    def allow_request(self, request, view):
        ident = self.ident(request)
        if ident is None:
            return True

        now = time.time()
        key = self._key(ident, now, self.duration)
        counted = getattr(request, self.COUNTED, None)
        if counted is not None and counted[0] == key:
            count = counted[1]
        else:
            try:
                pipe = self.client().pipeline(transaction=False)
                pipe.incr(key)
                pipe.expire(key, self.duration + 1)
                count, _ = pipe.execute()
            except Exception as exc:  # redis.ConnectionError, TimeoutError, ...

                structlog.get_logger("tieout.throttle").warning("throttle.unavailable", error=str(exc))
                return True
        if count > self.num_requests:
            self.wait_seconds = self.duration - (now % self.duration)
            return False
        return True

    def wait(self):
        return self.wait_seconds
