"""Billing sync's write paths, one module per concern: ingest (receipts and events), processing (documents,
ordering, dependencies, retries) and event status.

Callers use `from billing_sync import services` and the names re-exported here.
"""
from billing_sync.services.ingest import (  # noqa: F401
    _BATCH_SQL,
    _INSERT_SQL,
    KEPT_HEADERS,
    MAX_BATCH,
    Answer,
    _client_label,
    _dumps,
    _kept_headers,
    _key_maps_to,
    _outside_binding,
    _parse,
    canonical_bytes,
    event_resource,
    log,
    problem,
    receipt_reject,
    receive_batch,
    receive_event,
)
from billing_sync.services.processing import (  # noqa: F401
    PROCESS_BY_TYPE,
    SOURCE_REF_FIELDS,
    _amount_of,
    dependency_exists,
    event_reprocess,
    event_requeue,
    process_event,
    recheck_dependency,
    schedule_processing,
    source_ref_of,
    sweep_accepted,
    wake_dependents,
    wake_successors,
)
from billing_sync.services.status import (  # noqa: F401
    _derived_status,
    event_refresh_status,
    events_refresh_status,
)
