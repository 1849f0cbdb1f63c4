"""The ledger's write paths, one module per concern (entities, periods, journals and the outbox, posting,
batches, manual journals); callers use `from ledger import services` and the names re-exported here."""
from ledger.services.batches import (  # noqa: F401
    _BATCH_LINES_SQL,
    _batch_add,
    _batch_close,
    _mark_batch_journals_posted,
    _send_batch,
    erp_batch_failed,
    erp_batch_post,
    erp_batches_form,
    erp_batches_sweep,
)
from ledger.services.drain import (  # noqa: F401
    posting_drain,
    posting_wake,
    posting_wake_due,
)
from ledger.services.entities import (  # noqa: F401
    DEFAULT_CHART,
    DEFAULT_MAPPINGS,
    SECRET_SETTING_SUFFIX,
    account_create,
    account_mapping_set,
    account_set_erp_name,
    account_update,
    entity_access_set,
    entity_configure_erp,
    entity_rename,
    entity_setup,
    entity_test_connection,
    erp_settings_problems,
    log,
)
from ledger.services.journals import (  # noqa: F401
    JournalSpec,
    LineSpec,
    _resolve_accounts,
    journal_check,
    journal_create,
    journal_reject,
    journal_release,
    journal_retry,
    journal_reversal,
)
from ledger.services.manual import (  # noqa: F401
    MANUAL_JOURNAL_MAX_LINES,
    ManualJournalDraft,
    _manual_money,
    manual_journal_book,
    manual_journal_check,
)
from ledger.services.outbox import (  # noqa: F401
    _enqueue,
    outbox_relay_batched,
    outbox_relay,
    outbox_sweep,
)
from ledger.services.outcomes import (  # noqa: F401
    PostOutcome,
    _fail,
)
from ledger.services.periods import (  # noqa: F401
    period_close_record,
    period_is_closed,
    period_locked,
    period_reopen_record,
    period_set_status,
    period_require_open,
)
from ledger.services.repost import (  # noqa: F401
    REPOST,
    effective_erp_ref,
    journal_repost,
)
from ledger.services.posting import (  # noqa: F401
    Claim,
    _claim,
    _mark_posted,
    _release,
    journal_post,
    journal_post_failed,
    journals_claim,
    journals_post_in_database,
    journals_settle_posted,
)
