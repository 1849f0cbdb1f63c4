"""Bearer-token authentication (`Authorization: Bearer <token>`), looked up by SHA-256 of the random 256-bit
token in one indexed query, with a short in-process cache (TIEOUT_TOKEN_CACHE_SECONDS, default 5 s).
Revocation does not wait for the cache, in any process: each revocation bumps a Redis counter after commit,
and a cached token is trusted only while the counter holds the value read before its lookup (without Redis the
database decides); for a cached token that read shares its Redis round trip with the request's throttle count
(`TokenRateThrottle.counted_with`). An expired token is refused as `token_expired`; unknown and revoked tokens share
`not_authenticated`, telling a guesser nothing."""
import datetime
import hashlib
import secrets
import time

import redis
import structlog
from django.conf import settings
from django.utils import timezone
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework import authentication, exceptions

from billing_sync import tokens
from billing_sync.models import ApiToken
from config.api import TokenRateThrottle
from config.errors import Codes
from config.roles import user_roles

TOKEN_PREFIX = "tko_"
# A token's last_used_at is written at most this often (not once per request).
TOUCH_INTERVAL = datetime.timedelta(minutes=1)
_cache: dict[str, tuple[float, int, object, object]] = {}  # digest -> (until, epoch, user, token)
_redis = None
log = structlog.get_logger("tieout.auth")


def hash_token(raw: str) -> str:
    return hashlib.sha256(raw.encode()).hexdigest()


def generate_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


class TokenExpired(exceptions.AuthenticationFailed):
    default_detail = "This token has expired; ask for a new one."
    default_code = Codes.TOKEN_EXPIRED
    problem_code = Codes.TOKEN_EXPIRED  # config.api answers it with this stable code
    problem_title = "Token expired"


def _redis_client():
    global _redis
    if _redis is None:
        _redis = redis.Redis.from_url(settings.REDIS_URL, socket_connect_timeout=1, socket_timeout=1)
    return _redis


def _epoch_key() -> str:
    return f"{settings.CACHES['default'].get('KEY_PREFIX', 'tieout')}:api-token-revocations"


def revocation_epoch() -> int | None:
    """The shared revocation counter, or None when Redis cannot say (then the cache is not trusted)."""
    try:
        return int(_redis_client().get(_epoch_key()) or 0)
    except Exception as exc:  # redis.ConnectionError, TimeoutError, ...
        log.warning("token_cache.unavailable", error=str(exc))
        return None


def _revocation_epoch_counting(request, token) -> int | None:
    """`revocation_epoch`, for a token found in the cache, in the same Redis round trip as the request's
    throttle count (stored on the request for `TokenRateThrottle`): one round trip to Redis, not two."""
    try:
        pipe = _redis_client().pipeline(transaction=False)
        pipe.get(_epoch_key())
        counted = TokenRateThrottle.counted_with(pipe, f"t{token.pk}")
        epoch, count, _ = pipe.execute()
    except Exception as exc:  # redis.ConnectionError, TimeoutError, ...
        log.warning("token_cache.unavailable", error=str(exc))
        return None
    setattr(getattr(request, "_request", request), TokenRateThrottle.COUNTED, counted(count))
    return int(epoch or 0)


def tokens_revoked() -> None:
    """A token was revoked (call after commit): no process trusts a token it cached before this."""
    _cache.clear()
    try:
        _redis_client().incr(_epoch_key())
    except Exception as exc:
        # Other processes cannot read the counter either, so they bypass their caches until it is back.
        log.warning("token_cache.revocation_not_shared", error=str(exc))


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
        # The counter is read before the lookup: see the module docstring.
        hit = _cache.get(digest) if ttl > 0 else None
        if hit and hit[0] > now:
            epoch = _revocation_epoch_counting(request, hit[3])
            if hit[1] == epoch:
                return self._admit(hit[2], hit[3])
        else:
            epoch = revocation_epoch() if ttl > 0 else None

        token = (ApiToken.objects.select_related("user")
                 .filter(key_hash=digest, revoked_at__isnull=True, user__is_active=True).first())
        if token is None:
            _cache.pop(digest, None)
            raise exceptions.AuthenticationFailed("Invalid or revoked token.")
        user_roles(token.user)  # load once, cached on the user object with the token
        if epoch is not None:
            if len(_cache) > 10_000:
                _cache.clear()
            _cache[digest] = (now + ttl, epoch, token.user, token)
        return self._admit(token.user, token)

    def _admit(self, user, token):
        now = timezone.now()
        if token.is_expired(now):
            raise TokenExpired()
        if token.last_used_at is None or now - token.last_used_at >= TOUCH_INTERVAL:
            tokens.token_touch(token=token, now=now)
        return user, token

    def authenticate_header(self, request):
        return 'Bearer realm="api"'


class BearerTokenScheme(OpenApiAuthenticationExtension):
    """Tells drf-spectacular how clients authenticate: `Authorization: Bearer <token>`."""

    target_class = "billing_sync.authentication.BearerTokenAuthentication"
    name = "bearerAuth"

    def get_security_definition(self, auto_schema):
        return {"type": "http", "scheme": "bearer", "description": "An API token from `manage.py issue_token`."}
