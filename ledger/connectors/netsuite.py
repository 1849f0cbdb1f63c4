"""NetSuite (SuiteTalk REST web services, record API v1) connector: one journalEntry per journal, upserted
under our journal id as its external id (so a re-send updates the one record, with `replace=line` so lines
are not appended twice), authenticated per entity by OAuth 2.0 client credentials or token-based auth
(OAuth 1.0a), secrets from the environment. The wire details are in `NetSuiteConnector`'s docstring."""
import copy
import threading
import time
from urllib.parse import quote

import jwt
import requests
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from requests_oauthlib import OAuth1

from ledger.connectors.base import AmbiguousError, ConnectorError, PermanentError, PostResult, TransientError
from ledger.connectors.http import HttpConnector

RECORD_PATH = "/services/rest/record/v1/journalEntry"
SUBSIDIARY_PATH = "/services/rest/record/v1/subsidiary"
TOKEN_PATH = "/services/rest/auth/oauth2/v1/token"
JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
ALGORITHMS = {"PS256", "PS384", "PS512", "ES256", "ES384", "ES512"}  # what NetSuite accepts for the assertion
ASSERTION_LIFETIME = 300  # seconds; NetSuite requires exp - iat < 60 minutes
REFRESH_MARGIN = 60.0  # seconds before expiry at which a cached access token is replaced
# Codes NetSuite uses when concurrency governance blocks a request. REST web services answer 429, but
# RESTlets answer 400 SSS_REQUEST_LIMIT_EXCEEDED and SOAP WS_REQUEST_BLOCKED: none of them is the caller's
# fault, so any of them is transient whatever the status.
REQUEST_LIMIT_CODES = {"CONCURRENCY_LIMIT_EXCEEDED", "REQUEST_LIMIT_EXCEEDED", "SSS_REQUEST_LIMIT_EXCEEDED",
                       "WS_REQUEST_BLOCKED", "WS_CONCUR_SESSION_DISALLWD", "EXCEEDED_CONCURRENT_REQUEST_LIMIT"}

# The clock for token expiry (tests move it). Monotonic, so a wall-clock jump cannot extend a token's life.
clock = time.monotonic

# Per-process access-token cache: key → (token, expires_at on `clock`). One lock per key so that threads
# of one worker fetch a token once between them, while other entities' fetches do not wait.
_tokens: dict[tuple, tuple[str, float]] = {}
_token_locks: dict[tuple, threading.Lock] = {}
_guard = threading.Lock()


def forget_tokens() -> None:
    """Drop every cached access token (tests; after rotating a certificate)."""
    with _guard:
        _tokens.clear()


def account_host(account_id: str) -> str:
    return f"https://{account_id.strip().lower().replace('_', '-')}.suitetalk.api.netsuite.com"


def account_realm(account_id: str) -> str:
    return account_id.strip().upper().replace("-", "_")


def netsuite_message(body) -> str:
    """The human message of a NetSuite error body: each `o:errorDetails` entry as `CODE: detail (at path)`,
    else OAuth's `error: error_description`, else `title`/`detail`."""
    if not isinstance(body, dict):
        return ""
    parts = []
    for item in body.get("o:errorDetails") or []:
        if not isinstance(item, dict):
            continue
        text = str(item.get("detail") or "").strip()
        if item.get("o:errorCode"):
            text = f"{item['o:errorCode']}: {text}" if text else str(item["o:errorCode"])
        where = item.get("o:errorPath") or item.get("o:urlPath") or item.get("o:errorQueryParam") or \
            item.get("o:errorHeader")
        if where:
            text += f" (at {where})"
        if text:
            parts.append(text)
    if parts:
        return " | ".join(parts)
    if body.get("error"):
        return f"{body['error']}: {body['error_description']}" if body.get("error_description") else str(body["error"])
    return " ".join(str(body[k]) for k in ("title", "detail") if body.get(k))


def error_codes(response: requests.Response) -> set[str]:
    try:
        body = response.json()
    except ValueError:
        return set()
    if not isinstance(body, dict):
        return set()
    codes = {str(i.get("o:errorCode")) for i in body.get("o:errorDetails") or [] if isinstance(i, dict)}
    codes |= {str(body[k]) for k in ("o:errorCode", "error") if body.get(k)}
    return codes - {"None"}


class NetSuiteConnector(HttpConnector):
    """One journalEntry per journal, over SuiteTalk REST web services (record API v1).

    - Where: `https://<account id>.suitetalk.api.netsuite.com` (the account id lower-cased, `_` → `-`, e.g.
      `1234567_SB1` → `1234567-sb1`), unless the entity's `url` setting says otherwise (the stand-in does).
    - Post: `PUT /services/rest/record/v1/journalEntry/eid:<journal id>?replace=line` — an upsert keyed by our
      journal id as the record's external id, so sending it twice updates the one record instead of creating a
      second. `replace=line` matters: on an update NetSuite *appends* the lines of a non-keyed sublist unless
      told to replace them, and a re-sent upsert would otherwise double every amount. NetSuite answers
      204 No Content with a Location header; the record is then read back (`GET .../eid:<id>`) for its
      document number `tranId` (else its internal `id`), which becomes our ERP document reference.
    - Look-up: `GET .../journalEntry/eid:<journal id>`; 404 means NetSuite does not have it.
    - Auth, per entity (`auth` setting):
      * `oauth2` (default): OAuth 2.0 client credentials (machine to machine). A JWT assertion signed with
        the certificate's private key (PS256 for RSA, ES256/384/512 for EC; header `kid` = the certificate id
        from the M2M mapping; claims `iss` = client id, `scope`, `aud` = the token endpoint, `iat`, `exp`) is
        exchanged at `POST /services/rest/auth/oauth2/v1/token` for a bearer token, cached per process until
        shortly before it expires. A cached token NetSuite rejects (revoked, rotated) is replaced once.
      * `tba`: token-based authentication, OAuth 1.0a signed with HMAC-SHA256, `realm` = the account id
        (upper-cased, `-` → `_`), a fresh nonce and signature per request.
      Secrets come from the environment variables named by the `*_env` settings, never the database.
    - Errors: RFC 9457-like bodies (`type`, `title`, `status`, `o:errorDetails: [{detail, o:errorCode,
      o:errorPath?}]`); the token endpoint answers OAuth's `{"error", "error_description"}`. 400 (USER_ERROR,
      INVALID_KEY_OR_REF, ...) and 401 (INVALID_LOGIN) are permanent; 429 (concurrency governance) is transient
      with `Retry-After`, and so is a 4xx whose error code says a request limit was hit; 5xx transient, 502/504
      ambiguous (the base's classification).
    """

    name = "netsuite"

    def __init__(self, entity):
        settings = dict(entity.erp_settings or {})
        if not settings.get("url") and settings.get("account_id"):
            settings["url"] = account_host(settings["account_id"])
        # The base reads `url` from the entity's settings; hand it a copy carrying the derived default.
        view = copy.copy(entity)
        view.erp_settings = settings
        super().__init__(view)
        self.entity = entity
        self.auth_mode = (self.settings.get("auth") or "oauth2").lower()
        if self.auth_mode not in ("oauth2", "tba"):
            raise PermanentError(f"entity {entity.code}: NetSuite auth must be 'oauth2' or 'tba', "
                                 f"not {self.auth_mode!r}")
        self._oauth1: OAuth1 | None = None

    # ------------------------------------------------------------------------------------------- HTTP
    def auth_headers(self) -> dict:
        return {}  # authentication is per request (see `request`): a TBA signature covers method and URL

    def error_message(self, response: requests.Response) -> str:
        try:
            message = netsuite_message(response.json())
        except ValueError:
            message = ""
        return f"HTTP {response.status_code}: {message or response.text[:500]}"

    def _send(self, method: str, path: str, *, write: bool, **kwargs) -> requests.Response:
        """The base's request and classification, plus what NetSuite's error codes tell: a request-limit
        code is transient whatever its status, and the status is kept on the error (`http_status`)."""
        failure: dict = {}

        def remember(response, *args, **kw):
            if response.status_code >= 400:
                failure.update(status=response.status_code, codes=error_codes(response))

        try:
            return super().request(method, path, write=write, hooks={"response": [remember]}, **kwargs)
        except PermanentError as exc:
            if failure.get("codes", set()) & REQUEST_LIMIT_CODES:
                raise TransientError(f"NetSuite's concurrency limit was reached: {exc.erp_message}",
                                     erp_message=exc.erp_message) from exc
            exc.http_status = failure.get("status")
            raise

    def request(self, method: str, path: str, *, write: bool, **kwargs) -> requests.Response:
        """A record call, authenticated (the token endpoint itself goes through `_send`)."""
        if self.auth_mode == "tba":
            return self._send(method, path, write=write, auth=self._tba(), **kwargs)
        headers = kwargs.pop("headers", {})
        token, fresh = self.access_token()
        try:
            return self._send(method, path, write=write, headers={**headers, "Authorization": f"Bearer {token}"},
                              **kwargs)
        except PermanentError as exc:
            if fresh or getattr(exc, "http_status", None) != 401:
                raise
        # NetSuite refused a token we had cached (revoked, or the certificate mapping changed): a refused
        # request was not applied, so it is sent once more with a new token; a second 401 is final.
        self._drop_token(token)
        token, _ = self.access_token()
        return self._send(method, path, write=write, headers={**headers, "Authorization": f"Bearer {token}"},
                          **kwargs)

    # ------------------------------------------------------------------------------------------- auth
    def _tba(self) -> OAuth1:
        if self._oauth1 is None:
            account_id = self.settings.get("account_id")
            if not account_id:
                raise PermanentError(f"entity {self.entity.code}: NetSuite account_id is not configured")
            self._oauth1 = OAuth1(self.secret("consumer_key_env"), client_secret=self.secret("consumer_secret_env"),
                                  resource_owner_key=self.secret("token_id_env"),
                                  resource_owner_secret=self.secret("token_secret_env"),
                                  signature_method="HMAC-SHA256", realm=account_realm(account_id))
        return self._oauth1

    @property
    def token_url(self) -> str:
        return f"{self.base_url}{TOKEN_PATH}"

    def _token_key(self) -> tuple:
        return (self.token_url, self.secret("client_id_env"), self.settings.get("certificate_id"),
                self.settings.get("scope") or "rest_webservices")

    def access_token(self) -> tuple[str, bool]:
        """A bearer token for this entity's integration, and whether it was fetched just now."""
        key = self._token_key()
        with _guard:
            cached = _tokens.get(key)
            if cached and clock() < cached[1]:
                return cached[0], False
            lock = _token_locks.setdefault(key, threading.Lock())
        with lock:
            with _guard:  # another thread may have fetched it while this one waited
                cached = _tokens.get(key)
                if cached and clock() < cached[1]:
                    return cached[0], False
            token, lifetime = self._fetch_token(key)
            margin = min(REFRESH_MARGIN, lifetime / 2)
            with _guard:
                _tokens[key] = (token, clock() + lifetime - margin)
            return token, True

    def _drop_token(self, token: str) -> None:
        key = self._token_key()
        with _guard:
            if _tokens.get(key, ("",))[0] == token:
                del _tokens[key]

    def _fetch_token(self, key: tuple) -> tuple[str, float]:
        _, client_id, certificate_id, scope = key
        if not certificate_id:
            raise PermanentError(f"entity {self.entity.code}: NetSuite certificate_id is not configured")
        data = {"grant_type": "client_credentials", "client_assertion_type": JWT_BEARER,
                "client_assertion": self.client_assertion(client_id, certificate_id, scope)}
        # No side effect at NetSuite: a failed token request is never ambiguous (write=False).
        response = self._send("POST", TOKEN_PATH, write=False, data=data)
        try:
            body = response.json()
            token = body["access_token"]
            lifetime = float(body.get("expires_in") or 3600)  # NetSuite sends it as a string
        except (ValueError, KeyError, TypeError):
            raise PermanentError("NetSuite's token endpoint answered without an access token") from None
        return token, lifetime

    def client_assertion(self, client_id: str, certificate_id: str, scope: str) -> str:
        pem = self.secret("private_key_env")
        if "\\n" in pem and "\n" not in pem:
            pem = pem.replace("\\n", "\n")  # a PEM squeezed onto one line in an env file
        try:
            key = load_pem_private_key(pem.encode(), password=None)
        except (ValueError, TypeError):
            # Name the variable, never its content.
            raise PermanentError(f"entity {self.entity.code}: environment variable "
                                 f"{self.settings.get('private_key_env')} does not hold an unencrypted PEM private "
                                 f"key") from None
        algorithm = self.settings.get("algorithm") or _algorithm_for(key)
        if algorithm not in ALGORITHMS:
            raise PermanentError(f"entity {self.entity.code}: NetSuite accepts {sorted(ALGORITHMS)} for the "
                                 f"client assertion, not {algorithm!r}")
        now = int(time.time())
        claims = {"iss": client_id, "scope": scope, "aud": self.token_url, "iat": now,
                  "exp": now + ASSERTION_LIFETIME}
        try:
            return jwt.encode(claims, key, algorithm=algorithm, headers={"kid": certificate_id, "typ": "JWT"})
        except (ValueError, TypeError, jwt.PyJWTError) as exc:
            raise PermanentError(f"entity {self.entity.code}: cannot sign the client assertion with "
                                 f"{algorithm}: {exc}") from None

    # ------------------------------------------------------------------------------------------- records
    def record_path(self, journal) -> str:
        # Our ids are UUIDs: letters, digits and hyphens, all allowed in a NetSuite external id.
        return f"{RECORD_PATH}/eid:{quote(str(journal.pk), safe='-_')}"

    def payload(self, journal) -> dict:
        subsidiary = self.settings.get("subsidiary")
        if not subsidiary:
            raise PermanentError(f"entity {self.entity.code}: NetSuite subsidiary is not configured")
        accounts = self.erp_accounts(journal)
        items = []
        for line in journal.lines.all():
            item = {"account": {"id": accounts[line.account.code]}}
            # NetSuite's schema types amounts as JSON numbers; our amounts have at most a few decimals, which
            # a float carries exactly through JSON (shortest round-trip repr).
            if line.debit:
                item["debit"] = float(line.debit)
            if line.credit:
                item["credit"] = float(line.credit)
            memo = line.memo
            if line.customer_id:
                memo = f"{memo} [customer {line.customer_id}]".strip()
            if memo:
                item["memo"] = memo[:999]
            items.append(item)
        body = {"tranDate": journal.accounting_date.isoformat(), "subsidiary": {"id": str(subsidiary)},
                "memo": f"Tieout journal {journal.pk}: {journal.description}"[:999], "line": {"items": items}}
        if self.settings.get("currency"):
            body["currency"] = {"id": str(self.settings["currency"])}
        return body

    @staticmethod
    def document_ref(record: dict) -> str:
        return str(record.get("tranId") or record.get("id") or "")

    def post_journal(self, journal) -> PostResult:
        # `replace=line`: on an existing record the upsert replaces its lines rather than appending ours.
        self.request("PUT", self.record_path(journal), write=True, params={"replace": "line"},
                     json=self.payload(journal))
        try:
            record = self.request("GET", self.record_path(journal), write=False).json()
        except (ConnectorError, ValueError) as exc:
            # The upsert was applied; only its document number is unknown. Ambiguous: the next attempt
            # looks the record up (and finds it) rather than trusting that nothing happened.
            message = getattr(exc, "erp_message", str(exc))
            raise AmbiguousError("NetSuite accepted the journal entry but reading it back failed",
                                 erp_message=message, retry_after=getattr(exc, "retry_after", None)) from exc
        ref = self.document_ref(record)
        if not ref:
            raise AmbiguousError("NetSuite accepted the journal entry but returned neither tranId nor id")
        return PostResult(ref)

    def lookup(self, journal) -> PostResult | None:
        try:
            record = self.request("GET", self.record_path(journal), write=False).json()
        except PermanentError as exc:
            if getattr(exc, "http_status", None) == 404:
                return None
            raise
        ref = self.document_ref(record)
        return PostResult(ref, already_existed=True) if ref else None

    def test_connection(self) -> str:
        subsidiary = self.settings.get("subsidiary")
        if not subsidiary:
            raise PermanentError(f"entity {self.entity.code}: NetSuite subsidiary is not configured")
        record = self.request("GET", f"{SUBSIDIARY_PATH}/{quote(str(subsidiary), safe='')}", write=False).json()
        account = self.settings.get("account_id") or self.base_url
        return f"connected to NetSuite {account} ({self.auth_mode}); subsidiary {subsidiary}: {record.get('name', '?')}"


def _algorithm_for(key) -> str:
    if isinstance(key, rsa.RSAPrivateKey):
        return "PS256"
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return {"secp256r1": "ES256", "secp384r1": "ES384", "secp521r1": "ES512"}.get(key.curve.name, "ES256")
    raise PermanentError("the NetSuite certificate key must be RSA or EC (P-256, P-384 or P-521)")
