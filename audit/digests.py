"""Daily signed digests of the audit chain: the Ed25519 signing key (`TIEOUT_AUDIT_SIGNING_KEY`, base64
of the 32-byte seed or a PKCS#8 PEM; outside production a published, non-secret development key stands
in, and production refuses to sign without a real one), the signed body of a digest, the export an
auditor keeps, and the inclusion and consistency proofs they can check offline against the signed roots
without trusting this database. Building and signing the digests is `audit.services.signing`.
"""
from __future__ import annotations

import base64
import hashlib
import json

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import connection, transaction

from audit import merkle
from audit.models import AuditDigest, AuditSeal

DIGEST_VERSION = 1
# Published on purpose (README, tests): anything signed with it proves nothing outside development.
DEV_SEED = hashlib.sha256(b"tieout development audit signing key - NOT SECRET").digest()
_STREAM_CHUNK = 20_000


# --------------------------------------------------------------------------------------------- keys
def signing_key() -> Ed25519PrivateKey:
    raw = (getattr(settings, "TIEOUT_AUDIT_SIGNING_KEY", "") or "").strip()
    if not raw:
        if getattr(settings, "TIEOUT_AUDIT_DEV_KEY", False):
            return Ed25519PrivateKey.from_private_bytes(DEV_SEED)
        raise ImproperlyConfigured("TIEOUT_AUDIT_SIGNING_KEY is not set: audit digests cannot be signed "
                                   "(generate one with `manage.py audit_keygen`)")
    if raw.startswith("-----BEGIN"):
        key = serialization.load_pem_private_key(raw.encode(), password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise ImproperlyConfigured("TIEOUT_AUDIT_SIGNING_KEY is not an Ed25519 key")
        return key
    seed = base64.b64decode(raw, validate=True)
    if len(seed) != 32:
        raise ImproperlyConfigured("TIEOUT_AUDIT_SIGNING_KEY must be base64 of a 32-byte Ed25519 seed")
    return Ed25519PrivateKey.from_private_bytes(seed)


def public_key_bytes(key: Ed25519PublicKey | None = None) -> bytes:
    key = key or signing_key().public_key()
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def public_key_pem(key: Ed25519PublicKey | None = None) -> str:
    key = key or signing_key().public_key()
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def key_id(raw_public: bytes | None = None) -> str:
    return hashlib.sha256(raw_public or public_key_bytes()).hexdigest()


def generate_key() -> tuple[str, str]:
    """A new signing key: (base64 seed for TIEOUT_AUDIT_SIGNING_KEY, public key PEM)."""
    key = Ed25519PrivateKey.generate()
    seed = key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                             serialization.NoEncryption())
    return base64.b64encode(seed).decode(), public_key_pem(key.public_key())


# --------------------------------------------------------------------------------------------- bodies
def digest_body(digest: AuditDigest) -> dict:
    """What the signature covers. Changing this changes every signature: bump DIGEST_VERSION."""
    return {"version": DIGEST_VERSION, "day": digest.day.isoformat(), "first_seq": digest.first_seq,
            "last_seq": digest.last_seq, "count": digest.count, "prev_head_hash": digest.prev_head_hash,
            "head_hash": digest.head_hash, "day_root": digest.day_root, "tree_size": digest.tree_size,
            "tree_root": digest.tree_root, "key_id": digest.key_id}


def signed_message(body: dict) -> bytes:
    return b"tieout-audit-digest:" + json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def digest_export_item(digest: AuditDigest) -> dict:
    return {**digest_body(digest), "signature": digest.signature}


def signature_valid(body: dict, signature_b64: str, raw_public: bytes) -> bool:
    try:
        Ed25519PublicKey.from_public_bytes(raw_public).verify(base64.b64decode(signature_b64),
                                                               signed_message(body))
    except (InvalidSignature, ValueError):
        return False
    return True


def digest_signature_valid(digest: AuditDigest, raw_public: bytes | None = None) -> bool:
    return signature_valid(digest_body(digest), digest.signature, raw_public or public_key_bytes())


def digest_find(value: str) -> AuditDigest:
    """The digest an operator names by its day (YYYY-MM-DD) or its id; ValueError when there is none."""
    digest = (AuditDigest.objects.filter(day=value).first() if "-" in value
              else AuditDigest.objects.filter(pk=int(value)).first())
    if digest is None:
        raise ValueError(f"no digest {value!r} (give its day YYYY-MM-DD or its id)")
    return digest


def export() -> dict:
    """Every digest with the public key: the file an auditor keeps."""
    return {"algorithm": "Ed25519", "merkle": "RFC 6962 (leaf = SHA-256(0x00 || entry_hash), "
                                             "node = SHA-256(0x01 || left || right))",
            "signed_message": "'tieout-audit-digest:' + JSON of the body, keys sorted, no spaces",
            "key_id": key_id(), "public_key_pem": public_key_pem(),
            "digests": [digest_export_item(d) for d in AuditDigest.objects.order_by("day")]}


# --------------------------------------------------------------------------------------------- leaves
def iter_entry_hashes(first_seq: int, last_seq: int):
    """Entry hashes (bytes) of seals first_seq..last_seq in seq order, streamed by a server-side cursor."""
    if last_seq < first_seq:
        return
    with connection.cursor() as cursor:
        name = f"audit_leaves_{first_seq}_{last_seq}"
        cursor.execute(f"DECLARE {name} NO SCROLL CURSOR FOR SELECT entry_hash FROM audit_auditseal "
                       "WHERE seq BETWEEN %s AND %s ORDER BY seq", [first_seq, last_seq])
        try:
            while True:
                cursor.execute(f"FETCH {_STREAM_CHUNK} FROM {name}")
                rows = cursor.fetchall()
                if not rows:
                    break
                for (entry_hash,) in rows:
                    yield bytes.fromhex(entry_hash)
        finally:
            cursor.execute(f"CLOSE {name}")


# --------------------------------------------------------------------------------------------- proofs
def _leaves(size: int) -> list[bytes]:
    return [merkle.leaf_hash(h) for h in iter_entry_hashes(1, size)]


def inclusion_proof(*, entry_id: int, digest: AuditDigest | None = None) -> dict:
    """Proof that the entry is leaf seq-1 of the tree signed in `digest` (default: the first covering it)."""
    seal = AuditSeal.objects.get(entry_id=entry_id)
    if digest is None:
        digest = AuditDigest.objects.filter(last_seq__gte=seal.seq).order_by("day").first()
        if digest is None:
            raise ValueError(f"entry {entry_id} (seq {seal.seq}) is not covered by a digest yet")
    if seal.seq > digest.tree_size:
        raise ValueError(f"entry {entry_id} (seq {seal.seq}) is after digest {digest.day}")
    with transaction.atomic():
        leaves = _leaves(digest.tree_size)
    path = merkle.inclusion_path(leaves, seal.seq - 1)
    return {"type": "inclusion", "entry_id": entry_id, "seq": seal.seq, "leaf_index": seal.seq - 1,
            "entry_hash": seal.entry_hash, "leaf_hash": leaves[seal.seq - 1].hex(),
            "tree_size": digest.tree_size, "tree_root": digest.tree_root, "digest": digest_export_item(digest),
            "path": [p.hex() for p in path]}


def consistency_proof(*, old: AuditDigest, new: AuditDigest) -> dict:
    if old.tree_size > new.tree_size:
        old, new = new, old
    with transaction.atomic():
        leaves = _leaves(new.tree_size)
    proof = merkle.consistency_proof(leaves, old.tree_size) if old.tree_size else []
    return {"type": "consistency", "old_size": old.tree_size, "old_root": old.tree_root,
            "new_size": new.tree_size, "new_root": new.tree_root, "old_digest": digest_export_item(old),
            "new_digest": digest_export_item(new), "proof": [p.hex() for p in proof]}
