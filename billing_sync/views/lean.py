"""The lean request stack of `POST /api/v1/events` (issue 13 item 3): a middleware, right after Django's
SecurityMiddleware, that answers a bearer-token delivery of one event with the same checks, service, answer
and headers as the full stack, without the ~2 ms of session, CSRF, OTP and DRF machinery the answer never
depended on; anything it does not take goes down the full stack untouched (`TIEOUT_LEAN_INGEST=off`).
"""
# What "the same" means: the same token check (`BearerTokenAuthentication`, revocation counter and throttle
# count in one Redis round trip), the same role check (`SENDERS`), the same throttle, the same service
# (`event_receive`: receipt, event and audit entry in one statement) and the same answer byte for byte with
# the same headers (tests compare the two stacks). No bearer token, a refused token, a role that may not
# send, a throttled client, another method or path: the full stack answers it (and records its receipt).
from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.http import HttpResponse
from django.middleware.clickjacking import XFrameOptionsMiddleware
from django.utils.cache import patch_vary_headers
from django.utils.log import log_response
from rest_framework import exceptions as drf_exceptions
from rest_framework.renderers import JSONRenderer

from billing_sync import services
from billing_sync.authentication import BearerTokenAuthentication
from billing_sync.models import ApiToken
from billing_sync.views.events import SENDERS, EventCollectionView
from config.api import PROBLEM_CONTENT_TYPE, TokenRateThrottle

PATH = "/api/v1/events"


def _allow() -> str:
    """What DRF's APIView answers in `Allow` for this view: its methods, with HEAD where GET is (as Django's
    `View.setup` adds it)."""
    view = EventCollectionView()
    view.setup(None)
    return ", ".join(view.allowed_methods)


ALLOW = _allow()


class _NotLean(Exception):
    """This request is one the full stack answers (refusals keep their receipts and problem documents)."""


class LeanIngestMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response
        self.authentication = BearerTokenAuthentication()
        self.permission = SENDERS()
        self.renderer = JSONRenderer()
        # X-Frame-Options as XFrameOptionsMiddleware (further down the full stack) sets it.
        self.xframe = XFrameOptionsMiddleware(get_response)

    def __call__(self, request):
        if not (settings.TIEOUT_LEAN_INGEST and request.method == "POST" and request.path_info == PATH
                and request.META.get("HTTP_AUTHORIZATION", "")[:7].lower() == "bearer "):
            return self.get_response(request)
        try:
            response = self._answer(request)
        except _NotLean:
            return self.get_response(request)
        return self._finish(request, response)

    def _answer(self, request):
        try:
            admitted = self.authentication.authenticate(request)
        except drf_exceptions.APIException:
            raise _NotLean from None
        if admitted is None:
            raise _NotLean
        request.user, request.auth = admitted
        if not self.permission.has_permission(request, None):
            raise _NotLean
        if not TokenRateThrottle().allow_request(request, None):
            raise _NotLean
        token = request.auth
        allowed = None
        if isinstance(token, ApiToken) and token.is_bound:
            allowed = lambda payload: token.allows(payload["source_system"], payload["entity"])  # noqa: E731
        try:
            body = request.body
        except RequestDataTooBig:  # the full stack's refusal, as it always answered it
            raise _NotLean from None
        answer = services.event_receive(body=body, user=request.user, headers=request.headers,
                                        remote_addr=request.META.get("REMOTE_ADDR"), allowed=allowed)
        if answer.raw is not None:
            response = HttpResponse(answer.raw, status=answer.status, content_type="application/json")
        else:
            # As DRF's JSONRenderer renders `Response(answer.body)` (compact, UTF-8, no NaN).
            content_type = PROBLEM_CONTENT_TYPE if answer.status >= 400 else "application/json"
            response = HttpResponse(self.renderer.render(answer.body), status=answer.status,
                                    content_type=content_type)
        for name, value in answer.headers.items():
            response[name] = value
        return response

    def _finish(self, request, response):
        response["Allow"] = ALLOW
        response["Content-Length"] = str(len(response.content))  # as CommonMiddleware sets it
        response = self.xframe.process_response(request, response)
        if settings.TIEOUT_2FA:
            # With 2FA on, the full stack's TwoFactorRequiredMiddleware asks whether the session's user owes
            # a code, which reads the session, so SessionMiddleware marks its answers `Vary: Cookie`.
            patch_vary_headers(response, ("Cookie",))
        if response.status_code >= 400:
            log_response("%s: %s", response.reason_phrase, request.path, response=response, request=request)
        return response
