"""Billing sync's write paths, one module per concern: ingest (receipts and events), processing (documents,
ordering, dependencies, retries) and event status; callers use `from billing_sync import services` and the
names re-exported here."""
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
    event_batch_receive,
    event_receive,
)
from billing_sync.services.processing import (  # noqa: F401
    PROCESS_BY_TYPE,
    SOURCE_REF_FIELDS,
    _amount_of,
    dependency_exists,
    event_reprocess,
    event_requeue,
    event_process,
    dependency_recheck,
    events_schedule,
    source_ref_of,
    events_sweep_accepted,
    dependents_wake,
    successors_wake,
)
from billing_sync.services.status import (  # noqa: F401
    _derived_status,
    event_refresh_status,
    events_refresh_status,
)
