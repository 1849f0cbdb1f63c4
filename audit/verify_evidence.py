#!/usr/bin/env python3
"""Standalone verifier of a Tieout evidence pack (Python 3.9+ standard library only, no access to Tieout):
`python3 verify_evidence.py PACK.zip [--public-key KEY.pem] [--digests DIGESTS.json]` re-checks, from the
pack alone, its signed manifest, hash chain, signed digests, audit entries, journals, receipts and events
(`verify` lists what exactly), and exits 0 when everything holds, 1 with the first problems named.
"""
import argparse
import base64
import csv
import hashlib
import io
import json
import sys
import zipfile
from decimal import Decimal, InvalidOperation

csv.field_size_limit(1 << 30)

# ------------------------------------------------------------------------------------------- Ed25519 (RFC 8032)
# A small pure-Python implementation of RFC 8032 §5.1.7: slow (tens of milliseconds per signature), but
# only the digests and the manifest are signed, and the auditor needs nothing but Python.
_P = 2 ** 255 - 19
_Q = 2 ** 252 + 27742317777372353535851937790883648493  # order of the base point
_D = -121665 * pow(121666, _P - 2, _P) % _P
_SQRT_M1 = pow(2, (_P - 1) // 4, _P)


def _add(a, b):
    """Point addition in extended homogeneous coordinates (X, Y, Z, T), x = X/Z, y = Y/Z, x*y = T/Z."""
    x1, y1, z1, t1 = a
    x2, y2, z2, t2 = b
    aa = (y1 - x1) * (y2 - x2) % _P
    bb = (y1 + x1) * (y2 + x2) % _P
    cc = 2 * t1 * t2 * _D % _P
    dd = 2 * z1 * z2 % _P
    e, f, g, h = bb - aa, dd - cc, dd + cc, bb + aa
    return e * f % _P, g * h % _P, f * g % _P, e * h % _P


def _mul(scalar, point):
    result = (0, 1, 1, 0)  # the neutral element
    while scalar:
        if scalar & 1:
            result = _add(result, point)
        point = _add(point, point)
        scalar >>= 1
    return result


def _equal(a, b):
    return (a[0] * b[2] - b[0] * a[2]) % _P == 0 and (a[1] * b[2] - b[1] * a[2]) % _P == 0


def _recover_x(y, sign):
    if y >= _P:
        return None
    x2 = (y * y - 1) * pow(_D * y * y + 1, _P - 2, _P) % _P
    if x2 == 0:
        return None if sign else 0
    x = pow(x2, (_P + 3) // 8, _P)
    if (x * x - x2) % _P:
        x = x * _SQRT_M1 % _P
    if (x * x - x2) % _P:
        return None
    if (x & 1) != sign:
        x = _P - x
    return x


def _decompress(data):
    if len(data) != 32:
        return None
    y = int.from_bytes(data, "little")
    sign = y >> 255
    y &= (1 << 255) - 1
    x = _recover_x(y, sign)
    return None if x is None else (x, y, 1, x * y % _P)


_GY = 4 * pow(5, _P - 2, _P) % _P
_G = (_recover_x(_GY, 0), _GY, 1, _recover_x(_GY, 0) * _GY % _P)


def ed25519_verify(public: bytes, message: bytes, signature: bytes) -> bool:
    """RFC 8032 §5.1.7: accept iff [s]B == R + [SHA-512(R || A || M)]A, with s < L and both points valid."""
    if len(public) != 32 or len(signature) != 64:
        return False
    a = _decompress(public)
    r = _decompress(signature[:32])
    if a is None or r is None:
        return False
    s = int.from_bytes(signature[32:], "little")
    if s >= _Q:
        return False
    h = int.from_bytes(hashlib.sha512(signature[:32] + public + message).digest(), "little") % _Q
    return _equal(_mul(s, _G), _add(r, _mul(h, a)))


_SPKI_ED25519 = bytes.fromhex("302a300506032b6570032100")  # DER prefix of an Ed25519 SubjectPublicKeyInfo


def public_key_from_pem(text: str) -> bytes:
    body = "".join(line for line in text.strip().splitlines() if not line.startswith("-----"))
    der = base64.b64decode(body)
    if len(der) != 44 or not der.startswith(_SPKI_ED25519):
        raise ValueError("not an Ed25519 public key (SubjectPublicKeyInfo PEM)")
    return der[12:]


# ------------------------------------------------------------------------------------------- RFC 6962 Merkle
EMPTY_ROOT = hashlib.sha256(b"").digest()


class Frontier:
    """Perfect-subtree roots of the leaves so far; folds to RFC 6962's MTH (same as audit/merkle.py)."""

    def __init__(self, size=0, stack=None):
        self.size, self.stack = size, list(stack or [])

    def append(self, entry_hash: bytes):
        node = hashlib.sha256(b"\x00" + entry_hash).digest()
        size = self.size
        while size & 1:
            node = hashlib.sha256(b"\x01" + self.stack.pop() + node).digest()
            size >>= 1
        self.stack.append(node)
        self.size += 1

    def root(self) -> bytes:
        if not self.stack:
            return EMPTY_ROOT
        node = self.stack[-1]
        for left in reversed(self.stack[:-1]):
            node = hashlib.sha256(b"\x01" + left + node).digest()
        return node


# ------------------------------------------------------------------------------------------- helpers
def canonical(value) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def digest_message(body: dict) -> bytes:
    return b"tieout-audit-digest:" + json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


DIGEST_FIELDS = ("version", "day", "first_seq", "last_seq", "count", "prev_head_hash", "head_hash", "day_root",
                 "tree_size", "tree_root", "key_id")


class Report:
    def __init__(self):
        self.failures, self.notes = [], []

    def fail(self, message):
        self.failures.append(message)

    def note(self, message):
        self.notes.append(message)


def _rows(pack, name):
    with pack.open(name) as raw:
        yield from csv.DictReader(io.TextIOWrapper(raw, encoding="utf-8", newline=""))


def _money(text):
    try:
        return Decimal(text)
    except (InvalidOperation, TypeError):
        return None


# ------------------------------------------------------------------------------------------- the checks
def check_manifest(pack, report, pinned_key):
    manifest_bytes = pack.read("manifest.json")
    manifest = json.loads(manifest_bytes)
    public = public_key_from_pem(pack.read("public_key.pem").decode())
    if pinned_key is not None and pinned_key != public:
        report.fail("public_key.pem is not the key you gave (--public-key): the pack was signed by someone else")
    if hashlib.sha256(public).hexdigest() != manifest.get("key_id"):
        report.fail("manifest.json names another key than public_key.pem")
    signature = base64.b64decode(pack.read("manifest.sig"))
    if not ed25519_verify(public, manifest_bytes, signature):
        report.fail("manifest.sig: the manifest's signature is invalid (manifest.json was altered or forged)")
    for name, meta in sorted(manifest["files"].items()):
        try:
            data_hash = hashlib.sha256()
            with pack.open(name) as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    data_hash.update(block)
        except KeyError:
            report.fail(f"{name}: listed in the manifest but missing from the pack")
            continue
        if data_hash.hexdigest() != meta["sha256"]:
            report.fail(f"{name}: its SHA-256 is not the one the signed manifest records (the file was changed)")
    return manifest, public


def check_chain(pack, manifest, report):
    """Links, order and gaps over chain.csv; returns {seq: (entry_id, entry_hash, chain_hash)} lookups lazily."""
    chain = manifest["chain"]
    prev = chain["prev_hash"]
    expected = chain["first_seq"]
    last_id = chain.get("prev_entry_id") or 0
    count = 0
    for row in _rows(pack, "chain.csv"):
        seq, entry_id, entry_hash = int(row["seq"]), int(row["entry_id"]), row["entry_hash"]
        if seq != expected:
            report.fail(f"chain.csv: seq {expected} is missing (found seq {seq}, entry {entry_id})")
            return False
        if entry_id <= last_id:
            report.fail(f"chain.csv: entry {entry_id} (seq {seq}) is out of order (after entry {last_id})")
            return False
        link = hashlib.sha256(f"{prev}|{seq}|{entry_id}|{entry_hash}".encode()).hexdigest()
        if link != row["chain_hash"]:
            report.fail(f"chain.csv: the chain breaks at entry {entry_id} (seq {seq})")
            return False
        prev, last_id, expected, count = row["chain_hash"], entry_id, expected + 1, count + 1
    if expected - 1 != chain["last_seq"]:
        report.fail(f"chain.csv ends at seq {expected - 1}, the manifest says {chain['last_seq']}")
        return False
    if prev != chain["last_hash"]:
        report.fail("chain.csv: the last chain hash is not the manifest's")
        return False
    report.note(f"chain: {count} links, seq {chain['first_seq']}..{chain['last_seq']}, unbroken")
    return True


def check_digests(pack, manifest, public, report, kept):
    data = json.loads(pack.read("digests.json"))
    digests = data["digests"]
    anchor = data.get("anchor")  # the digest just before the pack's range, for the whole-tree root
    for item in ([anchor] if anchor else []) + digests:
        body = {k: item[k] for k in DIGEST_FIELDS}
        if not ed25519_verify(public, digest_message(body), base64.b64decode(item["signature"])):
            report.fail(f"digests.json: the digest of {item['day']} has a bad signature (forged or altered)")
            return
    if kept is not None:
        held = {d["day"]: d for d in kept.get("digests", [])}
        for item in digests:
            mine = held.get(item["day"])
            if mine and any(mine[k] != item[k] for k in DIGEST_FIELDS):
                report.fail(f"digests.json: the digest of {item['day']} differs from the one you kept")
    if not digests:
        report.note("digests: none cover the pack's range yet (its chain is checked but not signed)")
        return
    tree = None
    frontier = data.get("start_frontier")
    if frontier is not None:
        tree = Frontier(frontier["size"], [bytes.fromhex(h) for h in frontier["stack"]])
        expected_root = anchor["tree_root"] if anchor else EMPTY_ROOT.hex()
        expected_size = anchor["tree_size"] if anchor else 0
        if tree.size != expected_size or tree.root().hex() != expected_root:
            report.fail("digests.json: the start frontier does not fold to the signed tree root before the pack")
            tree = None
    pending = sorted(digests, key=lambda d: d["first_seq"])
    chain = manifest["chain"]
    if pending[0]["first_seq"] != chain["first_seq"] or pending[0]["prev_head_hash"] != chain["prev_hash"]:
        report.fail("digests.json: the first digest does not start where the pack's chain starts")
        return
    day_tree = Frontier()
    index = 0

    def close(seq, chain_hash):
        nonlocal index, day_tree
        while index < len(pending) and pending[index]["last_seq"] <= seq:
            d = pending[index]
            if d["head_hash"] != chain_hash:
                report.fail(f"digest {d['day']}: the chain at seq {d['last_seq']} is not its signed head")
            if day_tree.size != d["count"] or day_tree.root().hex() != d["day_root"]:
                report.fail(f"digest {d['day']}: the day's entry hashes do not give its signed Merkle root")
            if tree is not None and (tree.size != d["tree_size"] or tree.root().hex() != d["tree_root"]):
                report.fail(f"digest {d['day']}: the whole tree (seq 1..{d['tree_size']}) is not the signed one")
            day_tree = Frontier()
            index += 1

    close(chain["first_seq"] - 1, chain["prev_hash"])
    for row in _rows(pack, "chain.csv"):
        seq = int(row["seq"])
        if index >= len(pending):
            break
        leaf = bytes.fromhex(row["entry_hash"])
        day_tree.append(leaf)
        if tree is not None:
            tree.append(leaf)
        close(seq, row["chain_hash"])
    if index < len(pending):
        report.fail(f"digest {pending[index]['day']}: the pack's chain ends before the digest's last seq")
    else:
        signed_through = pending[-1]["last_seq"]
        report.note(f"digests: {len(pending)} signed day(s) checked, seq {pending[0]['first_seq']}..{signed_through}"
                    + ("" if signed_through == chain["last_seq"] else
                       f"; seq {signed_through + 1}..{chain['last_seq']} is not covered by a digest yet"))


def check_entries(pack, report):
    """Entry hashes from content, and each entry's place in the chain. Returns what later checks need.

    Both files are in seq order, so they are walked side by side: memory stays flat however many
    entries the pack holds (only the journal.created and event.received records are kept, for later).
    """
    created, received = {}, {}
    chain = _rows(pack, "chain.csv")
    link = next(chain, None)
    checked = bad = 0
    last_seq = 0
    for number, row in enumerate(_rows(pack, "audit_entries.csv"), start=2):
        try:
            seq = int(row["seq"])
            content = {"at": row["at"], "actor": row["actor"], "action": row["action"],
                       "object_type": row["object_type"], "object_id": row["object_id"],
                       "event_id": row["event_id"] or None, "before": json.loads(row["before"]),
                       "after": json.loads(row["after"]), "correlation_id": row["correlation_id"]}
        except ValueError:
            report.fail(f"audit_entries.csv line {number}: entry {row.get('id')} is not well-formed")
            bad += 1
            continue
        if hashlib.sha256(canonical(content)).hexdigest() != row["entry_hash"]:
            report.fail(f"audit_entries.csv line {number}: entry {row['id']} (seq {row['seq']}) does not hash to "
                        "its entry hash: its content was changed")
            bad += 1
        if seq <= last_seq:
            report.fail(f"audit_entries.csv line {number}: entry {row['id']} is out of seq order")
            bad += 1
        last_seq = seq
        while link is not None and int(link["seq"]) < seq:
            link = next(chain, None)
        if link is None or (int(link["seq"]), link["entry_id"], link["entry_hash"], link["chain_hash"]) != (
                seq, row["id"], row["entry_hash"], row["chain_hash"]):
            report.fail(f"audit_entries.csv line {number}: entry {row['id']} is not at seq {seq} of the chain")
            bad += 1
        checked += 1
        if row["action"] == "journal.created":
            created[row["object_id"]] = content["after"]
        elif row["action"] == "event.received" and isinstance(content["after"], dict):
            received[row["object_id"]] = content["after"].get("payload_sha256")
        if bad >= 20:
            report.fail("audit_entries.csv: stopped after 20 problems")
            break
    report.note(f"audit entries: {checked} recomputed and placed in the chain")
    return created, received


def check_journals(pack, report, created):
    lines = {}
    for number, row in enumerate(_rows(pack, "journal_lines.csv"), start=2):
        debit, credit = _money(row["debit"]), _money(row["credit"])
        if debit is None or credit is None:
            report.fail(f"journal_lines.csv line {number}: amounts are not numbers")
            continue
        lines.setdefault(row["journal_id"], []).append((int(row["line_no"]), row, debit, credit))
    journals = 0
    for number, row in enumerate(_rows(pack, "journals.csv"), start=2):
        journals += 1
        jid = row["id"]
        mine = sorted(lines.pop(jid, []), key=lambda item: item[0])
        debits = sum((d for _, _, d, _ in mine), Decimal(0))
        credits = sum((c for _, _, _, c in mine), Decimal(0))
        if not mine or debits != credits:
            report.fail(f"journals.csv line {number}: journal {jid} does not balance ({debits} / {credits})")
        recorded = created.get(jid)
        if recorded is None:
            report.fail(f"journals.csv line {number}: journal {jid} has no journal.created audit entry in the pack")
            continue
        expected = sorted((ln["account"], _money(ln["debit"]), _money(ln["credit"]), ln.get("customer_id") or "",
                           ln.get("invoice_id") or "", ln.get("jurisdiction") or "") for ln in recorded["lines"])
        actual = sorted((r["account"], d, c, r["customer_id"], r["invoice_id"], r["jurisdiction"])
                        for _, r, d, c in mine)
        if expected != actual:
            report.fail(f"journals.csv line {number}: the lines of journal {jid} are not the ones its "
                        "journal.created audit entry recorded")
    for jid in lines:
        report.fail(f"journal_lines.csv: lines of journal {jid}, which is not in journals.csv")
    report.note(f"journals: {journals} balance and match their audit entries")


def check_receipts_and_events(pack, report, received):
    receipts = 0
    for number, row in enumerate(_rows(pack, "receipts.csv"), start=2):
        receipts += 1
        body = base64.b64decode(row["body_base64"])
        if hashlib.sha256(body).hexdigest() != row["sha256"]:
            report.fail(f"receipts.csv line {number}: receipt {row['id']}'s body does not hash to its SHA-256")
    events = 0
    for number, row in enumerate(_rows(pack, "events.csv"), start=2):
        events += 1
        recorded = received.get(row["id"])
        if recorded is not None and recorded != row["payload_hash"]:
            report.fail(f"events.csv line {number}: event {row['id']}'s payload hash is not the one its "
                        "event.received audit entry recorded")
    report.note(f"receipts: {receipts} raw bodies re-hashed; events: {events} checked against their audit entries")


def verify(path, *, public_key_pem=None, kept_digests=None) -> Report:
    """Re-check the pack at `path`; the report names every problem found.

    1. the manifest's Ed25519 signature and every file's SHA-256 and row count (any changed byte fails);
    2. the hash chain over the pack's seq range: every link SHA-256(prev|seq|entry_id|entry_hash), in order,
       without gaps, starting from the chain hash the manifest names;
    3. every signed daily digest in the pack: its signature, its head (the chain hash at its last seq), its
       count, the RFC 6962 Merkle root of its day's entry hashes and the root of the whole tree (folded on
       from the signed frontier of the digest before the pack);
    4. every audit entry of the entity: its hash recomputed from its content, and its place in the chain;
    5. that every journal balances, and that its lines are the ones its journal.created entry recorded;
    6. that every receipt's raw body hashes to its recorded SHA-256, and each event's payload hash is the
       one its event.received entry recorded.
    `public_key_pem` (the key Tieout gave you out of band) pins the signer; `kept_digests` (an export you
    kept earlier) checks that the pack's digests are the ones you already hold.
    """
    report = Report()
    pinned = public_key_from_pem(public_key_pem) if public_key_pem else None
    with zipfile.ZipFile(path) as pack:
        manifest, public = check_manifest(pack, report, pinned)
        if check_chain(pack, manifest, report):
            check_digests(pack, manifest, public, report, kept_digests)
        created, received = check_entries(pack, report)
        check_journals(pack, report, created)
        check_receipts_and_events(pack, report, received)
    return report


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Verify a Tieout evidence pack offline.")
    parser.add_argument("pack")
    parser.add_argument("--public-key", help="PEM of the signing key Tieout gave you (pins the signer)")
    parser.add_argument("--digests", help="a digest export you kept earlier (audit_digest export)")
    args = parser.parse_args(argv)
    pem = open(args.public_key, encoding="utf-8").read() if args.public_key else None
    kept = json.load(open(args.digests, encoding="utf-8")) if args.digests else None
    report = verify(args.pack, public_key_pem=pem, kept_digests=kept)
    for note in report.notes:
        print(f"ok   {note}")
    for failure in report.failures:
        print(f"FAIL {failure}")
    if report.failures:
        print(f"FAILED: {len(report.failures)} problem(s)")
        return 1
    print("OK: the pack is complete and unaltered")
    return 0


if __name__ == "__main__":
    sys.exit(main())
