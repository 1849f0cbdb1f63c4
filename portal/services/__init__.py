"""The portal's write paths that need every layer below, one module per concern (the period close, retention); callers
use `from portal import services` and the names re-exported here. Sign-in and users are `portal.auth_services`."""
from portal.services.close import (  # noqa: F401
    CloseOutcome,
    audit_verify_for_close,
    period_close,
    period_close_approved,
    period_reopen_approved,
    period_reopen_request,
)
from portal.services.retention import (  # noqa: F401
    ArchiveOutcome,
    RetentionRefused,
    pack_problems,
    entities_with_rows,
    retention_archive,
    retention_policies,
    retention_policy_set,
)
