"""Shared HTTP plumbing for ERP connectors: connection reuse, timeouts and failure classification
(ARCHITECTURE.md, issue #3): nothing sent (connection refused, DNS, connect timeout), 429, 500/503 and
other 5xx are transient; maybe applied (read timeout or connection reset after sending, 502/504, 408) is
ambiguous for writes, merely transient for a read (a look-up); 401/403 and other 4xx are permanent, with
the ERP's message parsed by the connector. Retry-After (seconds or HTTP date) is honoured, capped so a
broken ERP cannot park a task for longer than the broker's visibility timeout."""
import email.utils
import os
import threading
import time

import requests
from urllib3.exceptions import ConnectTimeoutError, NameResolutionError, NewConnectionError

from ledger.connectors.base import AmbiguousError, Connector, PermanentError, TransientError

MAX_RETRY_AFTER = 900.0  # seconds; the task caps it again with TIEOUT_POSTING_RETRY_AFTER_CAP
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
            session = requests.Session()
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
        message = self.error_message(response)
        if status == 429:
            raise TransientError(f"rate limited by the ERP: {message}", erp_message=message,
                                 retry_after=retry_after_seconds(response.headers.get("Retry-After")))
        if self.is_ambiguous_status(response):
            klass = AmbiguousError if write else TransientError
            raise klass(f"the ERP answered {status}; the request may have been applied", erp_message=message,
                        retry_after=retry_after_seconds(response.headers.get("Retry-After")))
        if status >= 500:
            raise TransientError(f"the ERP failed with {status}", erp_message=message,
                                 retry_after=retry_after_seconds(response.headers.get("Retry-After")))
        raise PermanentError(f"the ERP refused the request ({status})", erp_message=message)

    # ---------------------------------------------------------------------------------------- helpers
    def erp_accounts(self, journal) -> dict:
        """Our account code → the ERP's account name, per entity (empty mapping = same code)."""
        return {line.account.code: (line.account.erp_account or line.account.code) for line in journal.lines.all()}
