"""Bearer-token authentication: `Authorization: Bearer <token>`, looked up by SHA-256 of the token.

Tokens are random (256 bits), so a plain SHA-256 is the right digest: it is what GitHub and Stripe do
for API keys, and it keeps the lookup to one indexed query. A short in-process cache (default 5 s,
TIEOUT_TOKEN_CACHE_SECONDS) saves that query on hot ingest paths; revocation takes effect within it.
"""
import hashlib
import secrets
import time

from django.conf import settings
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework import authentication, exceptions

from config.roles import user_roles

TOKEN_PREFIX = "tko_"
_cache: dict[str, tuple[float, object, object]] = {}


def hash_token(raw: str) -> str:
    return hashlib.sha256(raw.encode()).hexdigest()


def generate_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


class BearerTokenAuthentication(authentication.BaseAuthentication):
    keyword = "Bearer"

    def authenticate(self, request):
        header = authentication.get_authorization_header(request).split()
        if not header or header[0].lower() != self.keyword.lower().encode():
            return None
        if len(header) != 2:
            raise exceptions.AuthenticationFailed("Malformed Authorization header.")
        try:
            raw = header[1].decode()
        except UnicodeError:
            raise exceptions.AuthenticationFailed("Malformed token.") from None
        digest = hash_token(raw)
        ttl = settings.TIEOUT_TOKEN_CACHE_SECONDS
        now = time.monotonic()
        hit = _cache.get(digest) if ttl > 0 else None
        if hit and hit[0] > now:
            return hit[1], hit[2]
        from billing_sync.models import ApiToken

        token = (ApiToken.objects.select_related("user")
                 .filter(key_hash=digest, revoked_at__isnull=True, user__is_active=True).first())
        if token is None:
            _cache.pop(digest, None)
            raise exceptions.AuthenticationFailed("Invalid or revoked token.")
        user_roles(token.user)  # load once, cached on the user object with the token
        if ttl > 0:
            if len(_cache) > 10_000:
                _cache.clear()
            _cache[digest] = (now + ttl, token.user, token)
        return token.user, token

    def authenticate_header(self, request):
        return 'Bearer realm="api"'


class BearerTokenScheme(OpenApiAuthenticationExtension):
    """Tells drf-spectacular how clients authenticate: `Authorization: Bearer <token>`."""

    target_class = "billing_sync.authentication.BearerTokenAuthentication"
    name = "bearerAuth"

    def get_security_definition(self, auto_schema):
        return {"type": "http", "scheme": "bearer", "description": "An API token from `manage.py issue_token`."}
