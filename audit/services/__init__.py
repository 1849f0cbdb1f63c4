"""The audit log's write and check paths, one module per concern (entries, sealing, verification, checks,
signing), re-exported here so that callers write `from audit import services as audit; audit.record(...)`."""
from audit.services.checks import chain_check
from audit.services.entries import (
    actor_label,
    canonical_json,
    compute_entry_hash,
    entry_content,
    jsonable,
    model_snapshot,
    record,
    record_many,
    record_params,
)
from audit.services.sealing import GENESIS, SEAL_LOCK_KEY, SealResult, chain_hash, seal
from audit.services.signing import digests_build
from audit.services.verification import VerifyResult, schema_problem, verify

__all__ = [
    "GENESIS", "SEAL_LOCK_KEY", "SealResult", "VerifyResult", "actor_label", "canonical_json", "chain_check",
    "chain_hash", "compute_entry_hash", "digests_build", "entry_content", "jsonable", "model_snapshot", "record",
    "record_many", "record_params", "schema_problem", "seal", "verify",
]
