"""The ledger's news for the layers above it: a journal posted, a journal failed to post. The ledger knows
nothing of billing documents or the exception queue; it announces a journal's change of state here, inside
the transaction that made it, and the apps above connect receivers at start-up (`exceptions_queue` opens or
resolves the posting exception, `billing_sync` re-derives the event's status); see `config.hooks`."""
from config.hooks import Hook

# `journals` (posted now, each with `pk` and `event_id`; several at once when a batch document was
# acknowledged) and `actor`.
journals_posted = Hook("ledger.journals_posted")
# `journal` (failed for good: a permanent ERP error or retries spent), `code`, `message`, `actor`.
journal_failed = Hook("ledger.journal_failed")
