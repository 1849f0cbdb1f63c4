"""Request middleware: every response carries X-Correlation-ID, taken from the request or generated; under
/api/ every error answer is an RFC 9457 problem document."""
import re
import time

import structlog

from config import api, correlation

_VALID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")
log = structlog.get_logger("tieout.request")


class CorrelationIdMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        incoming = request.headers.get("X-Correlation-ID", "")
        # An id we cannot log or index safely is replaced rather than trusted.
        cid = incoming if _VALID.match(incoming) else correlation.new_id()
        token = correlation.set(cid)
        request.correlation_id = cid
        structlog.contextvars.bind_contextvars(correlation_id=cid)
        started = time.perf_counter()
        try:
            response = self.get_response(request)
            response["X-Correlation-ID"] = cid
            if response.status_code >= 500:
                log.error("request.failed", method=request.method, path=request.path,
                          status=response.status_code, ms=round((time.perf_counter() - started) * 1000, 1))
            return response
        finally:
            structlog.contextvars.unbind_contextvars("correlation_id")
            correlation.reset(token)


class ApiProblemMiddleware:
    """Replace Django's own error pages under /api/ with problem documents.

    DRF views already answer problem+json (config.api.problem_exception_handler); what reaches a client
    otherwise is Django's HTML: a URL that matches no route (an unknown path, a malformed id such as
    /api/v1/events/null,null), an unhandled exception (500), a refused request before any view. The
    headers that tell the client what to do next (Allow, Retry-After, WWW-Authenticate) are kept.
    """

    KEPT_HEADERS = ("Allow", "Retry-After", "WWW-Authenticate")

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        response = self.get_response(request)
        if (response.status_code >= 400 and request.path.startswith("/api/")
                and not response.get("Content-Type", "").startswith(api.PROBLEM_CONTENT_TYPE)):
            problem = api.problem_http_response(response.status_code)
            for name in self.KEPT_HEADERS:
                if name in response:
                    problem[name] = response[name]
            return problem
        return response
