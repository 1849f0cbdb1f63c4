"""A token bucket per ERP (connector and base URL), kept in Redis so that every worker process, on every
machine, draws from the same one: N processes together stay under the ERP's request rate. A 429 pauses the
bucket for the ERP's Retry-After (every process then waits, not just the one that was told).
The bucket refills at `rate` tokens per second up to `burst` tokens; one request costs one token. The state is
one Redis hash (`tokens`, `ts`, `paused_until`) changed by a Lua script, atomically, on Redis's own clock
(workers' clocks may differ). Rate: the entity's `requests_per_second` ERP setting, else
TIEOUT_ERP_REQUESTS_PER_SECOND (per connector, `name=rate` pairs, `*` for the others); burst: the entity's
`burst`, else one second's worth of the rate. With Redis unreachable the bucket does not stop posting (it
answers "go" and logs): the ERP's own 429s are still honoured by each attempt's retry due time.
"""
import os
import threading
import time

import redis
import structlog
from django.conf import settings

log = structlog.get_logger("tieout.ratelimit")

# KEYS[1] the bucket; ARGV rate, burst, wanted. Answers {granted, seconds until the next token (text)}.
_TAKE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local rate, burst, wanted = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts', 'paused_until')
local paused = tonumber(state[3]) or 0
if paused > now then
  return {0, tostring(paused - now)}
end
local tokens = tonumber(state[1]) or burst
local ts = tonumber(state[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - ts) * rate)
local granted = math.min(wanted, math.floor(tokens))
tokens = tokens - granted
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', tostring(now))
redis.call('EXPIRE', KEYS[1], 3600)
local wait = 0
if tokens < 1 then wait = (1 - tokens) / rate end
return {granted, tostring(wait)}
"""
# KEYS[1] the bucket; ARGV tokens to give back (unused), burst.
_GIVE_BACK = """
local tokens = tonumber(redis.call('HGET', KEYS[1], 'tokens'))
if tokens then
  redis.call('HSET', KEYS[1], 'tokens', tostring(math.min(tonumber(ARGV[2]), tokens + tonumber(ARGV[1]))))
end
return 0
"""
# KEYS[1] the bucket; ARGV seconds. Empties the bucket and refills it only from the end of the pause.
_PAUSE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local until_ = math.max(tonumber(redis.call('HGET', KEYS[1], 'paused_until')) or 0, now + tonumber(ARGV[1]))
redis.call('HSET', KEYS[1], 'paused_until', tostring(until_), 'tokens', '0', 'ts', tostring(until_))
redis.call('EXPIRE', KEYS[1], 3600 + math.ceil(tonumber(ARGV[1])))
return tostring(until_ - now)
"""

_clients: dict = {}
_clients_lock = threading.Lock()


def redis_client() -> redis.Redis:
    """One client per process and Redis URL (a prefork child builds its own after the fork)."""
    key = (os.getpid(), settings.REDIS_URL)
    with _clients_lock:
        client = _clients.get(key)
        if client is None:
            client = _clients[key] = redis.Redis.from_url(settings.REDIS_URL, socket_connect_timeout=2,
                                                          socket_timeout=5)
        return client


def configured_rate(connector_name: str, erp_settings: dict) -> float:
    """Requests per second allowed to one ERP: the entity's setting, else the connector's default."""
    own = (erp_settings or {}).get("requests_per_second")
    if own not in (None, ""):
        return max(0.1, float(own))
    defaults = {}
    for pair in str(settings.TIEOUT_ERP_REQUESTS_PER_SECOND).split(","):
        name, _, value = pair.partition("=")
        if value.strip():
            defaults[name.strip()] = float(value)
    return max(0.1, defaults.get(connector_name, defaults.get("*", 50.0)))


class TokenBucket:
    """The shared bucket of one ERP. `take(n)` grants up to n tokens at once (never waits); `acquire()` waits
    for one (bounded); `pause(seconds)` stops every taker for that long (a 429's Retry-After)."""

    def __init__(self, key: str, *, rate: float, burst: float | None = None):
        self.key = f"tieout:erp-bucket:{key}"
        self.rate = float(rate)
        self.burst = float(burst) if burst else max(1.0, float(rate))

    @classmethod
    def for_connector(cls, connector) -> "TokenBucket":
        erp_settings = getattr(connector, "settings", {}) or {}
        base = getattr(connector, "base_url", "") or connector.entity.code
        burst = erp_settings.get("burst")
        return cls(f"{connector.name}:{base}", rate=configured_rate(connector.name, erp_settings),
                   burst=float(burst) if burst not in (None, "") else None)

    def take(self, wanted: int) -> tuple[int, float]:
        """(tokens granted now, 0..wanted; seconds until the next token would be there)."""
        if wanted <= 0:
            return 0, 0.0
        try:
            granted, wait = redis_client().eval(_TAKE, 1, self.key, self.rate, self.burst, wanted)
            return int(granted), float(wait)
        except redis.RedisError as exc:
            log.warning("ratelimit.unavailable", bucket=self.key, error=str(exc))
            return wanted, 0.0

    def give_back(self, tokens: int) -> None:
        """Return tokens taken for requests that were not made (fewer journals claimed than tokens taken)."""
        if tokens <= 0:
            return
        try:
            redis_client().eval(_GIVE_BACK, 1, self.key, tokens, self.burst)
        except redis.RedisError:
            pass

    def acquire(self, *, max_wait: float) -> float:
        """Wait for one token; 0.0 when it was granted, else the seconds still to wait once `max_wait` is spent
        (the caller gives up and retries later)."""
        deadline = time.monotonic() + max_wait
        while True:
            granted, wait = self.take(1)
            if granted:
                return 0.0
            left = deadline - time.monotonic()
            if wait > left:
                return wait
            time.sleep(max(0.001, wait))

    def pause(self, seconds: float) -> None:
        """Nobody takes a token for `seconds` (at least): the ERP said 429, with or without a Retry-After."""
        try:
            redis_client().eval(_PAUSE, 1, self.key, max(0.0, float(seconds)))
            log.warning("ratelimit.paused", bucket=self.key, seconds=round(seconds, 2))
        except redis.RedisError as exc:
            log.warning("ratelimit.unavailable", bucket=self.key, error=str(exc))
