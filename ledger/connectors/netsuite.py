"""NetSuite (SuiteTalk REST web services, record API v1) connector: one journalEntry per journal, upserted
under our journal id as its external id (so a re-send updates the one record, with `replace=line` so lines
are not appended twice), authenticated per entity by OAuth 2.0 client credentials or token-based auth
(OAuth 1.0a), secrets from the environment; read back for reconciliation with SuiteQL (journal entries with
their accounting lines, posting lines summed per account and month). The wire details are in
`NetSuiteConnector`'s docstring."""
import copy
import datetime
import threading
import time
from collections.abc import Iterable, Iterator
from urllib.parse import quote

import jwt
import requests
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from requests_oauthlib import OAuth1

from ledger.connectors.base import (AmbiguousError, ConnectorError, ErpDocument, ErpLine, ErpMovement, PermanentError,
                                   PostResult, TransientError)
from ledger.connectors.http import HttpConnector
from ledger.connectors.readback import AccountNames, memo_reference, money, movements, our_reference, parse_date

RECORD_PATH = "/services/rest/record/v1/journalEntry"
SUITEQL_PATH = "/services/rest/query/v1/suiteql"
SUITEQL_MAX_PAGE = 1000  # NetSuite's largest `limit` for a SuiteQL page
# The lines of journal entries carrying our reference (external id, or the memo we write: "Make Copy" does not
# copy the external id), of one subsidiary, in one accounting book; one row per accounting line.
DOCUMENTS_QUERY = """SELECT t.id AS id, t.tranid AS tranid, t.externalid AS externalid, t.memo AS memo,
 t.voided AS voided, t.posting AS posting, TO_CHAR(t.trandate, 'YYYY-MM-DD') AS trandate,
 TO_CHAR(t.lastmodifieddate, 'YYYY-MM-DD HH24:MI:SS') AS lastmodified,
 tal.account AS account, tal.debit AS debit, tal.credit AS credit
FROM transaction t
JOIN transactionline tl ON tl.transaction = t.id
JOIN transactionaccountingline tal ON tal.transaction = tl.transaction AND tal.transactionline = tl.id
WHERE t.recordtype = 'journalentry' AND tl.subsidiary = {subsidiary} AND tal.accountingbook = {book} AND {where}
ORDER BY t.id, tl.id"""
MOVEMENTS_QUERY = """SELECT tal.account AS account, TO_CHAR(t.trandate, 'YYYY-MM') AS month,
 SUM(tal.debit) AS debit, SUM(tal.credit) AS credit
FROM transactionaccountingline tal
JOIN transaction t ON t.id = tal.transaction
JOIN transactionline tl ON tl.transaction = tal.transaction AND tl.id = tal.transactionline
WHERE tal.posting = 'T' AND tl.subsidiary = {subsidiary} AND tal.accountingbook = {book}
 AND t.trandate BETWEEN {date_from} AND {date_to} AND tal.account IN ({accounts})
GROUP BY tal.account, TO_CHAR(t.trandate, 'YYYY-MM')
ORDER BY tal.account, TO_CHAR(t.trandate, 'YYYY-MM')"""
# A posted journal's documents (a re-post looks them up): the records under its external id, or a re-post's
# (`<id>_r<n>`), or carrying its memo (a "Make Copy" by a person), voided or not.
JOURNAL_RECORDS_QUERY = """SELECT t.id AS id, t.tranid AS tranid, t.externalid AS externalid, t.voided AS voided
FROM transaction t
WHERE t.recordtype = 'journalentry' AND (t.externalid = {eid} OR t.externalid LIKE {reposts} OR t.memo LIKE {memo})
ORDER BY t.id"""
REPOST_SUFFIX = "_r"  # a re-post's external id: `<journal id>_r<n>` (a voided record keeps its external id)
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
    - Look-up: `GET .../journalEntry/eid:<journal id>`; 404 means NetSuite does not have it. A journal already
      posted is being re-posted (reconciliation found its document missing or voided): NetSuite cannot change a
      voided transaction, and the voided record keeps the external id, so the look-up asks SuiteQL for every
      journal entry under the external id, a re-post's (`<journal id>_r<n>`), or our memo (a "Make Copy" a person
      saved), and takes the first that is not voided; when there is none, the re-post goes under the next free
      external id (`<journal id>_r1`, `_r2`, ...), which the read-back knows as ours by its memo.
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

    Read-back (reconciliation), read-only, with SuiteQL: `POST /services/rest/query/v1/suiteql?limit=&offset=`
    with `Prefer: transient` and `{"q": ...}`; NetSuite answers `items`, `hasMore`, `count`, `offset`,
    `totalResults` and `links`, with SQL nulls left out of the items. Every request goes through `retrying`.

    - Documents (`DOCUMENTS_QUERY`): `transaction` (journal entries) joined to `transactionline` (for the
      subsidiary, the entity's `subsidiary` setting) and `transactionaccountingline` (account, debit, credit,
      in the `accounting_book` setting's book, 1 = primary by default), `trandate` in the run's range,
      `lastmodifieddate` >= the incremental run's start, one row per accounting line, ordered by id. Paged by
      key, `t.id` > the last transaction read whole, `limit` = the `page_size` setting (at most 1,000), offset
      0: SuiteQL returns at most 100,000 rows per query and needs a unique order to page without gaps, so
      the query moves forward instead of the offset. A page ending inside a transaction drops it and reads it
      again next; one longer than a page is read alone with offset paging. Our reference is the external id;
      a "Make Copy" keeps the memo we write ("Tieout journal <id>: ...") but not the external id, so the memo
      counts too. `voided` T is cancelled, `posting` F (pending approval) is a draft.
    - One document: the same query for `tranid` = ref (or the internal id when ref is a number).
    - Movements (`MOVEMENTS_QUERY`): posting accounting lines of the accounts asked, summed by NetSuite per
      account and `TO_CHAR(trandate, 'YYYY-MM')`, offset-paged (the groups are few).
    - Accounts are NetSuite internal ids (`Account.erp_account`, else our code), mapped back to our codes.
      Dates are formatted with TO_CHAR (SuiteQL otherwise answers in the user's date format); timestamps are
      in the account's time zone (the `time_zone` setting, default UTC).
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
        self._external_ids: dict[str, str] = {}  # journal id -> the external id its re-post goes under

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
        external_id = self._external_ids.get(str(journal.pk), str(journal.pk))
        return f"{RECORD_PATH}/eid:{quote(external_id, safe='-_')}"

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
        # A journal we already posted is being re-posted (a batch is never: its journals are not re-posted alone).
        if getattr(journal, "status", None) == "posted":
            return self._lookup_posted(journal)
        try:
            record = self.request("GET", self.record_path(journal), write=False).json()
        except PermanentError as exc:
            if getattr(exc, "http_status", None) == 404:
                return None
            raise
        ref = self.document_ref(record)
        return PostResult(ref, already_existed=True) if ref else None

    def _lookup_posted(self, journal) -> PostResult | None:
        """A re-post's look-up (see the class docstring): the journal's first live journal entry, else None, with
        the external id the re-post will take remembered for `post_journal`."""
        ours = str(journal.pk)
        query = JOURNAL_RECORDS_QUERY.format(eid=_literal(ours), reposts=_literal(f"{ours}{REPOST_SUFFIX}%"),
                                             memo=_literal(f"Tieout journal {ours}%"))
        rows = [row for row in self._all_rows(query)
                if row.get("externalid") in (None, ours) or str(row["externalid"]).startswith(ours + REPOST_SUFFIX)]
        live = [row for row in rows if not _flag(row.get("voided"))]
        if live:
            return PostResult(str(live[0].get("tranid") or live[0]["id"]), already_existed=True)
        taken = {str(row["externalid"]) for row in rows if row.get("externalid")}
        external_id, number = ours, 0
        while external_id in taken:
            number += 1
            external_id = f"{ours}{REPOST_SUFFIX}{number}"
        self._external_ids[ours] = external_id
        return None

    # ------------------------------------------------------------------------------------------- read-back
    def _suiteql_once(self, query: str, limit: int, offset: int) -> dict:
        response = self.request("POST", SUITEQL_PATH, write=False, params={"limit": limit, "offset": offset},
                                headers={"Prefer": "transient"}, json={"q": query})
        try:
            body = response.json()
        except ValueError:
            raise TransientError("NetSuite answered a SuiteQL query with a body that is not JSON",
                                 erp_message=response.text[:500]) from None
        if not isinstance(body, dict) or not isinstance(body.get("items"), list):
            raise PermanentError("NetSuite answered a SuiteQL query without items", erp_message=str(body)[:500])
        return body

    def suiteql(self, query: str, *, limit: int, offset: int = 0) -> dict:
        """One page of a SuiteQL query (retried, counted)."""
        return self.retrying(self._suiteql_once, query, limit, offset)

    def _scope(self) -> dict:
        subsidiary = str(self.settings.get("subsidiary") or "")
        book = str(self.settings.get("accounting_book") or "1")
        if not subsidiary.isdigit() or not book.isdigit():
            raise PermanentError(f"entity {self.entity.code}: NetSuite subsidiary and accounting_book must be "
                                 f"internal ids (numbers)")
        return {"subsidiary": subsidiary, "book": book}

    def _page_limit(self) -> int:
        return min(self.page_size, SUITEQL_MAX_PAGE)

    def _all_rows(self, query: str) -> Iterator[dict]:
        """Every row of a (short) query, offset-paged while NetSuite says it has more."""
        offset, limit = 0, self._page_limit()
        while True:
            body = self.suiteql(query, limit=limit, offset=offset)
            yield from body["items"]
            if not body.get("hasMore"):
                return
            offset += limit

    def _document(self, rows: list[dict], names: AccountNames) -> ErpDocument:
        head = rows[0]
        ref = our_reference(head.get("externalid")) or memo_reference(head.get("memo")) or ""
        if _flag(head.get("voided")):
            status = ErpDocument.Status.CANCELLED
        elif head.get("posting") is not None and not _flag(head.get("posting")):
            status = ErpDocument.Status.DRAFT
        else:
            status = ErpDocument.Status.POSTED
        currency = self.entity.currency
        return ErpDocument(ref=str(head.get("tranid") or head["id"]), our_ref=ref, status=status,
                           posting_date=parse_date(head["trandate"]),
                           lines=tuple(ErpLine(account=names.ours(row["account"]),
                                               debit=money(row.get("debit"), currency),
                                               credit=money(row.get("credit"), currency))
                                       for row in rows if row.get("account") is not None),
                           modified=self.from_erp_time(head.get("lastmodified")))

    def erp_documents(self, *, date_from: datetime.date, date_to: datetime.date,
                      modified_since: datetime.datetime | None = None) -> Iterator[ErpDocument]:
        where = ["(t.externalid IS NOT NULL OR t.memo LIKE 'Tieout journal %')",
                 f"t.trandate BETWEEN {_date(date_from)} AND {_date(date_to)}"]
        if modified_since is not None:
            moment = self.erp_time(modified_since).strftime("%Y-%m-%d %H:%M:%S")
            where.append(f"t.lastmodifieddate >= TO_TIMESTAMP('{moment}', 'YYYY-MM-DD HH24:MI:SS')")
        names = AccountNames(self.entity)
        scope = self._scope()
        after = None
        while True:
            clauses = where + ([f"t.id > {after}"] if after is not None else [])
            body = self.suiteql(DOCUMENTS_QUERY.format(where=" AND ".join(clauses), **scope),
                                limit=self._page_limit())
            groups: list[list[dict]] = []
            for row in body["items"]:
                if groups and str(groups[-1][0]["id"]) == str(row["id"]):
                    groups[-1].append(row)
                else:
                    groups.append([row])
            if body.get("hasMore") and len(groups) == 1:
                # One transaction filled the page: read all of its lines on their own.
                after = int(groups[0][0]["id"])
                groups = [list(self._all_rows(DOCUMENTS_QUERY.format(where=f"t.id = {after}", **scope)))]
            elif body.get("hasMore"):
                groups.pop()  # the page may have ended inside its last transaction: read it again next time
                after = int(groups[-1][0]["id"])
            for rows in groups:
                document = self._document(rows, names)
                if document.our_ref:
                    yield document
            if not body.get("hasMore"):
                return

    def erp_document(self, ref: str) -> ErpDocument | None:
        match = f"t.tranid = {_literal(ref)}" + (f" OR t.id = {int(ref)}" if ref.isdigit() else "")
        rows = list(self._all_rows(DOCUMENTS_QUERY.format(where=f"({match})", **self._scope())))
        if not rows:
            return None
        first = [row for row in rows if str(row["id"]) == str(rows[0]["id"])]
        return self._document(first, AccountNames(self.entity))

    def account_movements(self, *, date_from: datetime.date, date_to: datetime.date,
                          accounts: Iterable[str]) -> Iterator[ErpMovement]:
        names = AccountNames(self.entity)
        erp_ids = sorted({names.erp(code) for code in accounts})
        if not erp_ids:
            return
        query = MOVEMENTS_QUERY.format(date_from=_date(date_from), date_to=_date(date_to),
                                       accounts=", ".join(_literal(i) for i in erp_ids), **self._scope())
        currency = self.entity.currency
        yield from movements((names.ours(row["account"]), str(row["month"]), money(row.get("debit"), currency),
                              money(row.get("credit"), currency)) for row in self._all_rows(query))

    def test_connection(self) -> str:
        subsidiary = self.settings.get("subsidiary")
        if not subsidiary:
            raise PermanentError(f"entity {self.entity.code}: NetSuite subsidiary is not configured")
        record = self.request("GET", f"{SUBSIDIARY_PATH}/{quote(str(subsidiary), safe='')}", write=False).json()
        account = self.settings.get("account_id") or self.base_url
        return f"connected to NetSuite {account} ({self.auth_mode}); subsidiary {subsidiary}: {record.get('name', '?')}"


def _literal(value) -> str:
    """A SuiteQL string literal (the REST endpoint takes the query alone, without bind parameters)."""
    return "'" + str(value).replace("'", "''") + "'"


def _date(day: datetime.date) -> str:
    return f"TO_DATE('{day.isoformat()}', 'YYYY-MM-DD')"


def _flag(value) -> bool:
    """NetSuite's booleans in SuiteQL answers: 'T'/'F' (true/false on some columns)."""
    return str(value).strip().upper() in ("T", "TRUE")


def _algorithm_for(key) -> str:
    if isinstance(key, rsa.RSAPrivateKey):
        return "PS256"
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return {"secp256r1": "ES256", "secp384r1": "ES384", "secp521r1": "ES512"}.get(key.curve.name, "ES256")
    raise PermanentError("the NetSuite certificate key must be RSA or EC (P-256, P-384 or P-521)")
