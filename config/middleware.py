"""Request middleware: every response carries X-Correlation-ID, taken from the request or generated."""
import re
import time

import structlog

from config import correlation

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
