"""Shared HTTP plumbing for ERP connectors: connection reuse, timeouts and failure classification
(ARCHITECTURE.md, issue #3): nothing sent (connection refused, DNS, connect timeout), 429, 500/503 and
other 5xx are transient; maybe applied (read timeout or connection reset after sending, 502/504, 408) is
ambiguous for writes, merely transient for a read (a look-up); 401/403 and other 4xx are permanent, with
the ERP's message parsed by the connector. Retry-After (seconds or HTTP date) is honoured, capped so a
broken ERP cannot park a task for longer than the broker's visibility timeout. Read-back (reconciliation)
goes through `HttpConnector.retrying`, which retries rate limits and transient failures itself, with exponential
backoff and jitter, a bounded number of times (TIEOUT_READBACK_*), and counts every request it makes."""
import datetime
import email.utils
import os
import random
import threading
import time
import zoneinfo

import requests
from django.conf import settings as django_settings
from urllib3.exceptions import ConnectTimeoutError, NameResolutionError, NewConnectionError

from ledger.connectors.base import AmbiguousError, Connector, PermanentError, TransientError

MAX_RETRY_AFTER = 900.0  # seconds; the task caps it again with TIEOUT_POSTING_RETRY_AFTER_CAP
DEFAULT_PAGE_SIZE = 500  # rows per read-back page unless the entity's `page_size` setting says otherwise
_local = threading.local()


def retry_after_seconds(value: str | None) -> float | None:
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        parsed = email.utils.parsedate_to_datetime(value) if value else None
        if parsed is None:
            return None
        seconds = parsed.timestamp() - time.time()
    return max(0.0, min(seconds, MAX_RETRY_AFTER))


def _nothing_sent(exc: BaseException) -> bool:
    """True when the failure happened before a byte of the request left this machine."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, (NewConnectionError, ConnectTimeoutError, NameResolutionError, ConnectionRefusedError)):
            return True
        reason = getattr(exc, "reason", None)
        if isinstance(reason, BaseException) and id(reason) not in seen:
            exc = reason
            continue
        exc = exc.__cause__ or exc.__context__ or (exc.args[0] if exc.args and isinstance(exc.args[0], BaseException)
                                                   else None)
    return False


def readback_delay(attempt: int, retry_after: float | None) -> float:
    """Seconds to wait before read-back attempt `attempt + 1`: the ERP's Retry-After when it sent one (capped by
    TIEOUT_READBACK_RETRY_AFTER_CAP), else exponential backoff (TIEOUT_READBACK_BACKOFF_BASE doubling, capped by
    TIEOUT_READBACK_BACKOFF_CAP) with "equal jitter": half fixed, half random, so that the readers of several
    entities that were throttled together do not come back together."""
    if retry_after is not None:
        return max(0.0, min(float(retry_after), float(django_settings.TIEOUT_READBACK_RETRY_AFTER_CAP)))
    ceiling = min(float(django_settings.TIEOUT_READBACK_BACKOFF_CAP),
                  float(django_settings.TIEOUT_READBACK_BACKOFF_BASE) * 2 ** (attempt - 1))
    return ceiling / 2 + random.uniform(0, ceiling / 2)


def environment_session(base_url: str) -> requests.Session:
    """A session for one base URL that takes the environment's proxy (HTTP(S)_PROXY, NO_PROXY) and CA bundle
    (REQUESTS_CA_BUNDLE, CURL_CA_BUNDLE) as it is made, instead of on every request: with `trust_env` on,
    requests reads the whole environment, the proxy bypass list and looks for ~/.netrc on each call, about a
    sixth of a posting's CPU at a few hundred journals a second. A process picks up a changed environment when
    it restarts, as it does its settings. Credentials never came from ~/.netrc: each connector sends its own."""
    session = requests.Session()
    session.trust_env = False
    session.proxies.update(requests.utils.get_environ_proxies(base_url))
    session.verify = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or True
    return session


def _positive_int(value, default: int) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        return default
    return number if number > 0 else default


class HttpConnector(Connector):
    """A connector that speaks HTTP to the ERP. Subclasses implement post/lookup and `error_message`."""

    connect_timeout = 5.0
    read_timeout = 30.0

    def __init__(self, entity):
        super().__init__(entity)
        self.settings = dict(entity.erp_settings or {})
        self.base_url = (self.settings.get("url") or "").rstrip("/")
        if not self.base_url:
            raise PermanentError(f"entity {entity.code}: ERP url is not configured")
        self.connect_timeout = float(self.settings.get("connect_timeout", self.connect_timeout))
        self.read_timeout = float(self.settings.get("read_timeout", self.read_timeout))
        # Read-back: rows per page, and the ERP's own time zone (the naive timestamps it stores and filters by).
        self.page_size = _positive_int(self.settings.get("page_size"), DEFAULT_PAGE_SIZE)
        try:
            self.erp_tz = zoneinfo.ZoneInfo(self.settings.get("time_zone") or "UTC")
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise PermanentError(f"entity {entity.code}: unknown time_zone {self.settings.get('time_zone')!r}") from None
        self.retries_made = 0  # read-back retries (rate limits and transient failures), for reports and tests
        self.seconds_waited = 0.0  # total read-back backoff

    # ---------------------------------------------------------------------------------------- plumbing
    def secret(self, key: str) -> str:
        """A secret is read from the environment variable the settings name; it is never stored."""
        variable = self.settings.get(key)
        if not variable:
            raise PermanentError(f"entity {self.entity.code}: {key} (an environment variable name) is not configured")
        value = os.environ.get(variable)
        if not value:
            raise PermanentError(f"entity {self.entity.code}: environment variable {variable} is not set")
        return value

    @property
    def session(self) -> requests.Session:
        sessions = getattr(_local, "sessions", None)
        if sessions is None:
            sessions = _local.sessions = {}
        key = (type(self).__name__, self.base_url)
        session = sessions.get(key)
        if session is None:
            session = environment_session(self.base_url)
            adapter = requests.adapters.HTTPAdapter(pool_connections=4, pool_maxsize=16, max_retries=0)
            session.mount("http://", adapter)
            session.mount("https://", adapter)
            sessions[key] = session
        return session

    def auth_headers(self) -> dict:
        return {}

    def error_message(self, response: requests.Response) -> str:
        return f"HTTP {response.status_code}: {response.text[:500]}"

    def is_ambiguous_status(self, response: requests.Response) -> bool:
        return response.status_code in (408, 502, 504)

    def request(self, method: str, path: str, *, write: bool, **kwargs) -> requests.Response:
        url = f"{self.base_url}{path}"
        headers = {"Accept": "application/json", **self.auth_headers(), **kwargs.pop("headers", {})}
        self.requests_made += 1  # every request that leaves, answered or not
        try:
            response = self.session.request(method, url, headers=headers,
                                            timeout=(self.connect_timeout, self.read_timeout), **kwargs)
        except requests.ConnectTimeout as exc:
            raise TransientError(f"connect timeout to {self.base_url}", erp_message=str(exc)) from exc
        except requests.ReadTimeout as exc:
            klass = AmbiguousError if write else TransientError
            raise klass(f"no answer from {self.base_url} within {self.read_timeout}s", erp_message=str(exc)) from exc
        except requests.ConnectionError as exc:
            if _nothing_sent(exc) or not write:
                raise TransientError(f"cannot reach {self.base_url}", erp_message=str(exc)) from exc
            raise AmbiguousError(f"connection to {self.base_url} dropped after sending", erp_message=str(exc)) from exc
        status = response.status_code
        if 200 <= status < 300:
            return response
        error = self.classify(response, write=write)
        error.http_status = status  # e.g. a read-back look-up tells "no longer there" (404) from a refusal
        raise error

    def classify(self, response: requests.Response, *, write: bool) -> Exception:
        """The failure class of a non-2xx answer (see the module docstring)."""
        status = response.status_code
        message = self.error_message(response)
        if status == 429:
            return TransientError(f"rate limited by the ERP: {message}", erp_message=message,
                                  retry_after=retry_after_seconds(response.headers.get("Retry-After")))
        if self.is_ambiguous_status(response):
            klass = AmbiguousError if write else TransientError
            return klass(f"the ERP answered {status}; the request may have been applied", erp_message=message,
                         retry_after=retry_after_seconds(response.headers.get("Retry-After")))
        if status >= 500:
            return TransientError(f"the ERP failed with {status}", erp_message=message,
                                  retry_after=retry_after_seconds(response.headers.get("Retry-After")))
        return PermanentError(f"the ERP refused the request ({status})", erp_message=message)

    # ---------------------------------------------------------------------------------------- read-back
    def retrying(self, call, *args, **kwargs):
        """Run one read-back call (a function making one request, and any re-authentication it needs) until it
        succeeds, retrying `TransientError` (429 honouring Retry-After, 5xx, timeouts, refused connections) up
        to TIEOUT_READBACK_MAX_ATTEMPTS attempts in all; then the last `TransientError` is raised. Read-back
        only reads, so a retry can never apply anything twice; `PermanentError` (401/403/4xx) is raised at once.
        """
        attempts = max(1, int(django_settings.TIEOUT_READBACK_MAX_ATTEMPTS))
        attempt = 1
        while True:
            try:
                return call(*args, **kwargs)
            except TransientError as exc:
                if attempt >= attempts:
                    raise TransientError(f"{exc} (read-back gave up after {attempt} attempts)",
                                         erp_message=exc.erp_message, retry_after=exc.retry_after) from exc
                delay = readback_delay(attempt, exc.retry_after)
                self.retries_made += 1
                self.seconds_waited += delay
                time.sleep(delay)
                attempt += 1

    def read_json(self, method: str, path: str, **kwargs):
        """`retrying` one request whose answer is JSON; a 2xx that is not JSON (a proxy's page) is transient."""
        def once():
            response = self.request(method, path, write=False, **kwargs)
            try:
                return response.json()
            except ValueError:
                raise TransientError(f"the ERP answered {response.status_code} with a body that is not JSON",
                                     erp_message=response.text[:500]) from None
        return self.retrying(once)

    def erp_time(self, moment: datetime.datetime) -> datetime.datetime:
        """`moment` as the ERP's naive wall-clock time (its `time_zone` setting, UTC by default)."""
        if moment.tzinfo is None:
            raise ValueError("read-back times must be aware")
        return moment.astimezone(self.erp_tz).replace(tzinfo=None)

    def from_erp_time(self, value) -> datetime.datetime | None:
        """An ERP's naive timestamp text ("2026-11-01 10:00:00[.ffffff]", or ISO with a "T"/offset) as aware."""
        if not value:
            return None
        parsed = datetime.datetime.fromisoformat(str(value).strip().replace("Z", "+00:00"))
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=self.erp_tz)

    # ---------------------------------------------------------------------------------------- helpers
    def erp_accounts(self, journal) -> dict:
        """Our account code → the ERP's account name, per entity (empty mapping = same code)."""
        return {line.account.code: (line.account.erp_account or line.account.code) for line in journal.lines.all()}
