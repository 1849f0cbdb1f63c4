"""The audit log's write and check paths, one module per concern (entries, sealing, verification, checks,
signing, partitions), re-exported here so that callers write `from audit import services as audit; audit.record(...)`."""
from audit.services.checks import chain_check
from audit.services.entries import (
    DB_ID,
    SLOT_TOKEN,
    actor_label,
    canonical_json,
    compute_entry_hash,
    entry_content,
    entry_hash_sql,
    entry_template,
    model_snapshot,
    record,
    record_built,
    record_many,
    record_params,
    slot_filled_sql,
)
from audit.services.partitions import (
    PARTITIONED,
    chain_resume_day,
    month_add,
    partition_detach,
    partition_name,
    partition_rows,
    tables_analyze,
    partitions_ensure,
    partitions_list,
    partitions_lock_need,
)
from audit.services.sealing import GENESIS, SealResult, chain_hash, chain_seal
from audit.services.signing import digests_build
from audit.services.verification import VerifyResult, chain_verify

# The sealer's old name, still called by audit/evidence.py (moving to the portal): drop it once that has moved.
seal = chain_seal

__all__ = [
    "DB_ID", "GENESIS", "PARTITIONED", "chain_resume_day", "month_add", "partition_detach", "partition_name",
    "partition_rows", "partitions_ensure", "partitions_list", "partitions_lock_need", "SLOT_TOKEN", "SealResult",
    "tables_analyze", "VerifyResult", "actor_label",
    "canonical_json", "chain_check", "chain_hash", "chain_seal", "chain_verify", "compute_entry_hash", "digests_build",
    "entry_content", "entry_hash_sql", "entry_template", "model_snapshot", "record", "record_built",
    "record_many", "record_params", "seal",
    "slot_filled_sql",
]
