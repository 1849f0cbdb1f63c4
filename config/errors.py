"""Stable error codes and the exceptions that carry them, shared by the API, the UI and the queue. A code
is part of the public contract: never rename one. `ApiError` is answered as RFC 9457 problem details;
`BusinessRuleError` is a failure a person can fix, which sends the event to the exception queue."""


class Codes:
    # Receipt and request errors (HTTP answers).
    INVALID_EVENT = "invalid_event"
    IDEMPOTENCY_CONFLICT = "idempotency_conflict"
    NOT_AUTHENTICATED = "not_authenticated"
    PERMISSION_DENIED = "permission_denied"
    NOT_FOUND = "not_found"
    THROTTLED = "throttled"
    SEGREGATION_OF_DUTIES = "segregation_of_duties"
    ALREADY_DECIDED = "already_decided"
    INVALID_REQUEST = "invalid_request"
    INVALID_STATE = "invalid_state"
    # API tokens: an event outside the token's binding, an expired token, revoking twice.
    SOURCE_NOT_ALLOWED = "source_not_allowed"
    TOKEN_EXPIRED = "token_expired"
    ALREADY_REVOKED = "already_revoked"
    # HTTP-level refusals (any path under /api/): wrong method, body type or size, unknown path, our fault.
    METHOD_NOT_ALLOWED = "method_not_allowed"
    NOT_ACCEPTABLE = "not_acceptable"
    UNSUPPORTED_MEDIA_TYPE = "unsupported_media_type"
    PAYLOAD_TOO_LARGE = "payload_too_large"
    SERVER_ERROR = "server_error"
    # Business rules (exception queue).
    UNKNOWN_ENTITY = "unknown_entity"
    UNKNOWN_CUSTOMER = "unknown_customer"
    UNKNOWN_INVOICE = "unknown_invoice"
    UNKNOWN_PAYMENT = "unknown_payment"
    AWAITING_DEPENDENCY = "awaiting_dependency"
    OVER_APPLICATION = "over_application"
    OVER_REFUND = "over_refund"
    OVER_CREDIT = "over_credit"
    OVER_WRITE_OFF = "over_write_off"
    NO_ACCOUNT_MAPPING = "no_account_mapping"
    PERIOD_CLOSED = "period_closed"
    AMENDMENT_BELOW_APPLIED = "amendment_below_applied"
    VOID_WITH_APPLICATIONS = "void_with_applications"
    CURRENCY_MISMATCH = "currency_mismatch"
    DOCUMENT_CONFLICT = "document_conflict"
    POSTING_FAILED = "posting_failed"
    CALLBACK_FAILED = "callback_failed"
    # The audit log failed verification (edited, deleted, inserted or reordered entries, or a forged digest).
    AUDIT_CHAIN_BROKEN = "audit_chain_broken"
    # Staff sign-in (web sessions).
    TWO_FACTOR_REQUIRED = "two_factor_required"
    TWO_FACTOR_THROTTLED = "two_factor_throttled"
    # Manual journals raised by a person (refused up front, never queued).
    UNBALANCED_JOURNAL = "unbalanced_journal"
    UNKNOWN_ACCOUNT = "unknown_account"
    # Reconciliation breaks (billing <-> ledger <-> ERP): the codes of the breaks and of their exceptions
    # (process `reconciliation`).
    MISSING_JOURNAL = "missing_journal"
    JOURNAL_AMOUNT_MISMATCH = "journal_amount_mismatch"
    LEDGER_OPEN_AMOUNT_MISMATCH = "ledger_open_amount_mismatch"
    AR_CONTROL_MISMATCH = "ar_control_mismatch"
    UNAPPLIED_CASH_MISMATCH = "unapplied_cash_mismatch"
    MISSING_IN_ERP = "missing_in_erp"
    ERP_DOCUMENT_CANCELLED = "erp_document_cancelled"
    ERP_AMOUNT_MISMATCH = "erp_amount_mismatch"
    ERP_DATE_MISMATCH = "erp_date_mismatch"
    UNEXPECTED_IN_ERP = "unexpected_in_erp"
    ERP_BALANCE_MISMATCH = "erp_balance_mismatch"
    # Reconciliation refusals: another run of the entity is running; the break is resolved already; the
    # action does not apply to this break (e.g. re-posting a break that is not about a journal the ERP lacks).
    RECONCILIATION_RUNNING = "reconciliation_running"
    BREAK_RESOLVED = "break_resolved"
    BREAK_ACTION_NOT_APPLICABLE = "break_action_not_applicable"
    # Period close (checks before it locks): closing with failing checks without a reason, a period already
    # closed (or not closed, to reopen), a close or reopen request already waiting for a second controller.
    CLOSE_CHECKS_FAILING = "close_checks_failing"
    PERIOD_ALREADY_CLOSED = "period_already_closed"
    PERIOD_NOT_CLOSED = "period_not_closed"
    APPROVAL_PENDING = "approval_pending"
    # Retention (portal.services.retention_archive): nothing is removed when a month has no policy, is kept
    # still, is open for an entity, has no partition or was archived already, holds unsealed audit entries or
    # no signed digest follows them, or its pack does not verify. An archived event's trace answers 410
    # `archived` with where its bytes went.
    RETENTION_NO_POLICY = "retention_no_policy"
    RETENTION_TOO_RECENT = "retention_too_recent"
    RETENTION_MONTH_OPEN = "retention_month_open"
    RETENTION_NO_PARTITION = "retention_no_partition"
    RETENTION_ALREADY_ARCHIVED = "retention_already_archived"
    RETENTION_UNSEALED = "retention_unsealed"
    RETENTION_NO_DIGEST = "retention_no_digest"
    RETENTION_ARCHIVE_UNVERIFIED = "retention_archive_unverified"
    RETENTION_ARCHIVED = "retention_archived"  # reopening a month retention archived
    ARCHIVED = "archived"


class TieoutError(Exception):
    code = "error"
    status = 400
    title = "Request failed"

    def __init__(self, detail: str = "", *, code: str | None = None, status: int | None = None,
                 errors: list[dict] | None = None, title: str | None = None):
        super().__init__(detail or self.title)
        self.detail = detail or self.title
        if code:
            self.code = code
        if status:
            self.status = status
        if title:
            self.title = title
        self.errors = errors


class ApiError(TieoutError):
    """An error answered directly to the API caller."""


class ValidationFailed(ApiError):
    code = Codes.INVALID_EVENT
    status = 422
    title = "The event breaks the schema"


class PermissionRefused(ApiError):
    code = Codes.PERMISSION_DENIED
    status = 403
    title = "Not allowed"


class Conflict(ApiError):
    status = 409
    title = "Conflict"


class NotFound(ApiError):
    code = Codes.NOT_FOUND
    status = 404
    title = "Not found"


class BusinessRuleError(TieoutError):
    """A failure a person can fix: the event is accepted and waits in the exception queue.

    `dependency` names what the event waits for (e.g. ``invoice:billing-prod:inv_1``); when that document
    arrives the event is retried automatically.
    """

    status = 422
    title = "Business rule failed"

    def __init__(self, code: str, detail: str, *, dependency: str | None = None):
        super().__init__(detail, code=code)
        self.dependency = dependency
