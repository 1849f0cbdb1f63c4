"""Signed daily digests, and the inclusion and consistency proofs, checked against independent recomputation.

* Every proof is checked two ways: by the RFC 9162 verification algorithms, and against trees rebuilt
  here from RFC 6962's recursive definition (MTH, PATH, PROOF written out naively in this file), for
  every leaf of every tree size up to 33 and on real digests from the database.
* A digest is signed with Ed25519 over its body; altering any field, or signing with another key, is a
  forgery that `audit_verify` names. Production settings refuse to sign without a configured key.
* The standalone verifier's pure-Python Ed25519 agrees with `cryptography` on valid and altered signatures.
"""
import base64
import datetime
import hashlib
import io
import json

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from django.core.exceptions import ImproperlyConfigured
from django.core.management import call_command
from django.db import connection, transaction
from django.utils import timezone

from audit import digests, merkle
from audit import services as audit
from audit import verify_evidence
from audit.models import AuditDigest, AuditSeal
from tests.audit.tamper import execute_with_triggers_off


# ------------------------------------------------------------------------------------------- RFC 6962, naively
def mth(data: list[bytes]) -> bytes:
    """MTH(D[n]) exactly as RFC 6962 §2.1 defines it (data are entry hashes, not yet leaf-hashed)."""
    n = len(data)
    if n == 0:
        return hashlib.sha256(b"").digest()
    if n == 1:
        return hashlib.sha256(b"\x00" + data[0]).digest()
    k = 1
    while k * 2 < n:
        k *= 2
    return hashlib.sha256(b"\x01" + mth(data[:k]) + mth(data[k:])).digest()


def path(m: int, data: list[bytes]) -> list[bytes]:
    """PATH(m, D[n]), RFC 6962 §2.1.1."""
    n = len(data)
    if n == 1:
        return []
    k = 1
    while k * 2 < n:
        k *= 2
    if m < k:
        return path(m, data[:k]) + [mth(data[k:])]
    return path(m - k, data[k:]) + [mth(data[:k])]


def proof(m: int, data: list[bytes]) -> list[bytes]:
    """PROOF(m, D[n]) = SUBPROOF(m, D[n], true), RFC 6962 §2.1.2."""
    def subproof(m, data, b):
        n = len(data)
        if m == n:
            return [] if b else [mth(data)]
        k = 1
        while k * 2 < n:
            k *= 2
        if m <= k:
            return subproof(m, data[:k], b) + [mth(data[k:])]
        return subproof(m - k, data[k:], False) + [mth(data[:k])]
    return subproof(m, data, True)


def _data(n: int) -> list[bytes]:
    return [hashlib.sha256(f"entry {i}".encode()).digest() for i in range(n)]


# ------------------------------------------------------------------------------------------- the Merkle module
def test_roots_paths_and_proofs_match_the_rfc_definitions_for_every_small_tree():
    for n in range(0, 34):
        data = _data(n)
        leaves = [merkle.leaf_hash(d) for d in data]
        assert merkle.root(leaves) == mth(data), n
        frontier = merkle.Frontier()
        for d in data:
            frontier.append(d)
        assert frontier.root() == mth(data)
        assert merkle.Frontier.from_json(frontier.to_json()).root() == mth(data)
        for m in range(n):
            p = merkle.inclusion_path(leaves, m)
            assert p == path(m, data), (n, m)
            assert merkle.verify_inclusion(leaves[m], m, n, p, mth(data))
            assert not merkle.verify_inclusion(leaves[m], m, n, p, mth(data[:-1] + [b"x" * 32]))
            if m + 1 < n:
                assert not merkle.verify_inclusion(leaves[m + 1], m, n, p, mth(data))
        for m in range(1, n + 1):
            c = merkle.consistency_proof(leaves, m)
            assert c == proof(m, data), (m, n)
            assert merkle.verify_consistency(m, n, mth(data[:m]), mth(data), c), (m, n)
            if m < n:
                forged_old = mth(data[:m - 1] + [b"y" * 32])
                assert not merkle.verify_consistency(m, n, forged_old, mth(data), c), (m, n)


def test_a_known_rfc6962_vector():
    # The CT reference tree of RFC 6962's test data: leaves "", 0x00, 0x10, 0x2021, 0x3031, 0x40414243, ...
    inputs = [b"", b"\x00", b"\x10", b"\x20\x21", b"\x30\x31", b"\x40\x41\x42\x43", b"\x50\x51\x52\x53\x54\x55\x56\x57",
              b"\x60\x61\x62\x63\x64\x65\x66\x67\x68\x69\x6a\x6b\x6c\x6d\x6e\x6f"]
    leaves = [hashlib.sha256(b"\x00" + d).digest() for d in inputs]
    assert merkle.root(leaves).hex() == "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328"
    assert merkle.root(leaves[:1]).hex() == "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"


def test_the_pure_python_ed25519_agrees_with_cryptography():
    for i in range(4):
        key = Ed25519PrivateKey.generate()
        public = digests.public_key_bytes(key.public_key())
        message = f"tieout {i}".encode() * (i + 1)
        signature = key.sign(message)
        assert verify_evidence.ed25519_verify(public, message, signature)
        assert not verify_evidence.ed25519_verify(public, message + b"!", signature)
        bad = bytearray(signature)
        bad[5] ^= 1
        assert not verify_evidence.ed25519_verify(public, message, bytes(bad))
        other = digests.public_key_bytes(Ed25519PrivateKey.generate().public_key())
        assert not verify_evidence.ed25519_verify(other, message, signature)
        assert verify_evidence.public_key_from_pem(digests.public_key_pem(key.public_key())) == public


# ------------------------------------------------------------------------------------------- digests
def _records(n: int, tag: str):
    for i in range(n):
        with transaction.atomic():
            audit.record(actor="tester", action="test.change", object_type="thing", object_id=f"{tag}{i}",
                         after={"i": i})


def _today() -> datetime.date:
    return timezone.now().astimezone(datetime.UTC).date()


def _entry_hashes(first: int, last: int) -> list[bytes]:
    return [bytes.fromhex(h) for h in AuditSeal.objects.filter(seq__gte=first, seq__lte=last)
            .order_by("seq").values_list("entry_hash", flat=True)]


def _flush_deferred():
    with connection.cursor() as cursor:
        cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
        cursor.execute("SET CONSTRAINTS ALL DEFERRED")


@pytest.fixture
def two_digests(db):
    _records(11, "a")
    [first] = audit.digests_build(through=_today())
    _records(6, "b")
    # The next day's digest covers what was sealed after the first one (cut here "tomorrow" in advance).
    [second] = audit.digests_build(through=_today() + datetime.timedelta(days=1))
    _flush_deferred()
    return first, second


def test_a_digest_signs_the_day_head_count_and_both_roots(two_digests):
    first, second = two_digests
    assert (first.first_seq, first.last_seq, first.count) == (1, 11, 11)
    assert first.prev_head_hash == audit.GENESIS
    assert first.head_hash == AuditSeal.objects.get(seq=11).chain_hash
    assert first.day_root == mth(_entry_hashes(1, 11)).hex() == first.tree_root
    # The second day: its own root over its entries, and the whole tree over both days, from the frontier.
    assert (second.first_seq, second.last_seq, second.count) == (12, 17 + 1, 7)  # + the first digest's own entry
    assert second.prev_head_hash == first.head_hash
    assert second.day_root == mth(_entry_hashes(12, second.last_seq)).hex()
    assert second.tree_root == mth(_entry_hashes(1, second.last_seq)).hex()
    for d in (first, second):
        body = digests.digest_body(d)
        key = digests.signing_key().public_key()
        key.verify(base64.b64decode(d.signature), digests.signed_message(body))  # raises if invalid
        assert verify_evidence.ed25519_verify(digests.public_key_bytes(), digests.signed_message(body),
                                              base64.b64decode(d.signature))
    assert audit.digests_build(through=_today() + datetime.timedelta(days=1)) == []  # once per day
    result = audit.chain_verify()
    assert result.ok and result.digests_checked == 2


def test_a_day_with_nothing_sealed_still_gets_a_digest(two_digests):
    first, second = two_digests
    # Each digest's own audit entry lands in the next day; the day after that has nothing at all.
    third, empty = audit.digests_build(through=_today() + datetime.timedelta(days=3))
    assert third.count == 1 and AuditSeal.objects.get(seq=third.last_seq).entry.action == "audit.digest_signed"
    assert (empty.count, empty.first_seq, empty.last_seq) == (0, third.last_seq + 1, third.last_seq)
    assert empty.head_hash == empty.prev_head_hash == third.head_hash
    assert empty.tree_root == third.tree_root and empty.day_root == hashlib.sha256(b"").hexdigest()
    _flush_deferred()
    assert audit.chain_verify().ok


def test_the_digest_export_command(two_digests):
    out = io.StringIO()
    call_command("audit_digest", "export", stdout=out)
    doc = json.loads(out.getvalue())
    assert doc["algorithm"] == "Ed25519" and "BEGIN PUBLIC KEY" in doc["public_key_pem"]
    assert [d["day"] for d in doc["digests"]] == [d.day.isoformat() for d in two_digests]
    public = verify_evidence.public_key_from_pem(doc["public_key_pem"])
    for item in doc["digests"]:
        body = {k: item[k] for k in verify_evidence.DIGEST_FIELDS}
        assert verify_evidence.ed25519_verify(public, verify_evidence.digest_message(body),
                                              base64.b64decode(item["signature"]))


def test_an_inclusion_proof_checks_against_an_independent_recomputation(two_digests):
    first, second = two_digests
    seal = AuditSeal.objects.get(seq=13)
    out = io.StringIO()
    call_command("audit_proof", "inclusion", str(seal.entry_id), "--digest", second.day.isoformat(), stdout=out)
    doc = json.loads(out.getvalue())
    data = _entry_hashes(1, second.tree_size)
    assert doc["seq"] == 13 and doc["tree_size"] == second.tree_size and doc["tree_root"] == second.tree_root
    assert [bytes.fromhex(p) for p in doc["path"]] == path(12, data)
    assert mth(data).hex() == second.tree_root
    assert merkle.verify_inclusion(merkle.leaf_hash(bytes.fromhex(doc["entry_hash"])), 12, second.tree_size,
                                   [bytes.fromhex(p) for p in doc["path"]], bytes.fromhex(doc["digest"]["tree_root"]))
    # An entry of the first day, against the first digest (the default: the first digest covering it).
    early = AuditSeal.objects.get(seq=3)
    p = digests.inclusion_proof(entry_id=early.entry_id)
    assert p["digest"]["day"] == first.day.isoformat()
    assert [bytes.fromhex(x) for x in p["path"]] == path(2, _entry_hashes(1, first.tree_size))


def test_a_consistency_proof_checks_against_an_independent_recomputation(two_digests):
    first, second = two_digests
    out = io.StringIO()
    call_command("audit_proof", "consistency", "--from", first.day.isoformat(), "--to", second.day.isoformat(),
                 stdout=out)
    doc = json.loads(out.getvalue())
    data = _entry_hashes(1, second.tree_size)
    assert (doc["old_size"], doc["new_size"]) == (first.tree_size, second.tree_size)
    assert [bytes.fromhex(p) for p in doc["proof"]] == proof(first.tree_size, data)
    assert mth(data[:first.tree_size]).hex() == first.tree_root
    assert merkle.verify_consistency(first.tree_size, second.tree_size, bytes.fromhex(first.tree_root),
                                     bytes.fromhex(second.tree_root), [bytes.fromhex(p) for p in doc["proof"]])



def test_a_digest_with_an_altered_root_is_a_forgery(two_digests):
    first, _ = two_digests
    execute_with_triggers_off("UPDATE audit_auditdigest SET day_root = repeat('c', 64) WHERE id = %s", [first.pk])
    result = audit.chain_verify()
    assert not result.ok
    assert result.problem == f"digest {first.day} (seq 1..11) has a bad signature: it was forged or altered"


def test_a_digest_signed_with_another_key_is_a_forgery(two_digests):
    _, second = two_digests
    other = Ed25519PrivateKey.generate()
    second.head_hash = "d" * 64
    forged = base64.b64encode(other.sign(digests.signed_message(digests.digest_body(second)))).decode()
    execute_with_triggers_off("UPDATE audit_auditdigest SET head_hash = %s, signature = %s WHERE id = %s",
                         ["d" * 64, forged, second.pk])
    result = audit.chain_verify()
    assert not result.ok and result.problem.startswith(f"digest {second.day}") and "bad signature" in result.problem


def test_entries_deleted_from_the_end_of_a_signed_day_are_caught(two_digests):
    _, second = two_digests
    with connection.cursor() as cursor:
        cursor.execute("SET session_replication_role = replica")
        cursor.execute("DELETE FROM audit_auditseal WHERE seq >= %s", [second.last_seq - 1])
        cursor.execute("SET session_replication_role = DEFAULT")
    result = audit.chain_verify()
    assert not result.ok
    assert f"signs seq {second.first_seq}..{second.last_seq} but the chain ends at seq {second.last_seq - 2}" in (
        result.problem)


def test_verify_from_a_digest(two_digests):
    first, second = two_digests
    out = io.StringIO()
    call_command("audit_verify", "--from-digest", second.day.isoformat(), stdout=out, stderr=io.StringIO())
    total = AuditSeal.objects.count()
    assert out.getvalue().strip() == f"OK {total - second.first_seq + 1} entries"


def test_production_refuses_to_sign_without_a_key(db, settings):
    settings.TIEOUT_AUDIT_SIGNING_KEY = ""
    settings.TIEOUT_AUDIT_DEV_KEY = False
    _records(1, "p")
    with pytest.raises(ImproperlyConfigured, match="TIEOUT_AUDIT_SIGNING_KEY"):
        audit.digests_build(through=_today())
    assert not AuditDigest.objects.exists()


def test_a_configured_key_signs(db, settings):
    out = io.StringIO()
    call_command("audit_keygen", stdout=out)
    line, *pem = out.getvalue().strip().splitlines()
    settings.TIEOUT_AUDIT_SIGNING_KEY = line.split("=", 1)[1]
    settings.TIEOUT_AUDIT_DEV_KEY = False
    _records(2, "k")
    [d] = audit.digests_build(through=_today())
    public = verify_evidence.public_key_from_pem("\n".join(pem))
    assert d.key_id == hashlib.sha256(public).hexdigest() != digests.key_id(
        digests.public_key_bytes(Ed25519PrivateKey.from_private_bytes(digests.DEV_SEED).public_key()))
    assert verify_evidence.ed25519_verify(public, digests.signed_message(digests.digest_body(d)),
                                          base64.b64decode(d.signature))
