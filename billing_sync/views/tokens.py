"""API tokens for admins: `GET /api/v1/tokens` (filters `user`, `state=active|expired|revoked`) and `GET
/api/v1/tokens/{id}` show tokens (never the secret, only its prefix); `POST /api/v1/tokens/{id}/revoke` (200
with the token; 409 `already_revoked`) revokes through the audited `tokens.token_revoke`, at once in every
process. Tokens are issued only by `manage.py issue_token`, which prints the secret once; the API never
creates or shows one."""
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import generics
from rest_framework.response import Response
from rest_framework.views import APIView

from billing_sync import selectors, tokens
from config import roles
from config.errors import NotFound

ADMINS = roles.roles_allowed(roles.ADMIN)


class TokenListView(generics.GenericAPIView):
    """Every API token, newest first: id, user, prefix, binding, expiry, last use, revocation."""

    permission_classes = [ADMINS]
    filterset_class = selectors.ApiTokenFilter

    def get_queryset(self):
        return selectors.api_tokens()

    @extend_schema(operation_id="tokens_list", responses={200: dict})
    def get(self, request):
        page = self.paginate_queryset(self.filter_queryset(self.get_queryset()))
        return self.get_paginated_response([selectors.api_token_resource(t) for t in page])


def _token(pk):
    token = selectors.api_token(pk)
    if token is None:
        raise NotFound(f"no token {pk}")
    return token


class TokenDetailView(APIView):
    permission_classes = [ADMINS]

    @extend_schema(responses={200: dict})
    def get(self, request, pk):
        return Response(selectors.api_token_resource(_token(pk)))


class TokenRevokeView(APIView):
    permission_classes = [ADMINS]

    @extend_schema(request=None, responses={200: OpenApiResponse(description="The revoked token"),
                                            404: OpenApiResponse(description="not_found"),
                                            409: OpenApiResponse(description="already_revoked")})
    def post(self, request, pk):
        tokens.token_revoke(token_id=pk, actor=request.user)  # 404 for no such token, 409 when already revoked
        return Response(selectors.api_token_resource(_token(pk)))
