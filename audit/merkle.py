"""RFC 6962 / RFC 9162 Merkle trees over the audit entry hashes in chain (seq) order, leaf = SHA-256(0x00 ||
entry_hash) and node = SHA-256(0x01 || left || right): roots, inclusion and consistency proofs that any
RFC 9162 verifier can check, and `Frontier`, which folds leaves in O(log n) memory so that digests and
`audit_verify` compute roots while streaming; standard library only, because the same algorithms are
copied into the standalone verifier that ships in every evidence pack."""
from __future__ import annotations

import hashlib

EMPTY_ROOT = hashlib.sha256(b"").digest()


def leaf_hash(entry_hash: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + entry_hash).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def _split(n: int) -> int:
    """The largest power of two strictly smaller than n (n >= 2): where RFC 6962 §2.1 splits a tree."""
    return 1 << ((n - 1).bit_length() - 1)


class Frontier:
    """Roots of the perfect subtrees of the leaves seen so far (at most log2(n) of them).

    Appending a leaf merges equal-sized subtrees like a binary counter; the root of the whole tree is the
    right-to-left fold of the remaining subtrees, which is exactly RFC 6962's MTH.
    """

    __slots__ = ("size", "stack")

    def __init__(self, size: int = 0, stack: list[bytes] | None = None):
        self.size = size
        self.stack = list(stack or [])

    def append_leaf(self, leaf: bytes) -> None:
        node = leaf
        size = self.size
        stack = self.stack
        while size & 1:
            node = hashlib.sha256(b"\x01" + stack.pop() + node).digest()
            size >>= 1
        stack.append(node)
        self.size += 1

    def append(self, entry_hash: bytes) -> None:
        self.append_leaf(hashlib.sha256(b"\x00" + entry_hash).digest())

    def root(self) -> bytes:
        if not self.stack:
            return EMPTY_ROOT
        node = self.stack[-1]
        for left in reversed(self.stack[:-1]):
            node = node_hash(left, node)
        return node

    def to_json(self) -> dict:
        return {"size": self.size, "stack": [h.hex() for h in self.stack]}

    @classmethod
    def from_json(cls, value: dict | None) -> "Frontier":
        if not value:
            return cls()
        return cls(int(value["size"]), [bytes.fromhex(h) for h in value["stack"]])


def root(leaves: list[bytes]) -> bytes:
    """MTH over already-hashed leaves (leaf_hash applied)."""
    frontier = Frontier()
    for leaf in leaves:
        frontier.append_leaf(leaf)
    return frontier.root()


def _subtree(leaves: list[bytes], lo: int, hi: int) -> bytes:
    n = hi - lo
    if n == 1:
        return leaves[lo]
    k = _split(n)
    return node_hash(_subtree(leaves, lo, lo + k), _subtree(leaves, lo + k, hi))


def inclusion_path(leaves: list[bytes], index: int) -> list[bytes]:
    """PATH(m, D[n]) of RFC 6962 §2.1.1, for leaf `index` (0-based) of the tree over `leaves`."""
    def path(m: int, lo: int, hi: int) -> list[bytes]:
        n = hi - lo
        if n == 1:
            return []
        k = _split(n)
        if m < k:
            return path(m, lo, lo + k) + [_subtree(leaves, lo + k, hi)]
        return path(m - k, lo + k, hi) + [_subtree(leaves, lo, lo + k)]

    if not 0 <= index < len(leaves):
        raise ValueError("leaf index outside the tree")
    return path(index, 0, len(leaves))


def consistency_proof(leaves: list[bytes], old_size: int) -> list[bytes]:
    """PROOF(m, D[n]) of RFC 6962 §2.1.2: the tree of the first `old_size` leaves is a prefix of this one."""
    def subproof(m: int, lo: int, hi: int, complete: bool) -> list[bytes]:
        n = hi - lo
        if m == n:
            return [] if complete else [_subtree(leaves, lo, hi)]
        k = _split(n)
        if m <= k:
            return subproof(m, lo, lo + k, complete) + [_subtree(leaves, lo + k, hi)]
        return subproof(m - k, lo + k, hi, False) + [_subtree(leaves, lo, lo + k)]

    n = len(leaves)
    if not 0 < old_size <= n:
        raise ValueError("the old tree must be non-empty and no larger than the new one")
    if old_size == n:
        return []
    return subproof(old_size, 0, n, True)


def verify_inclusion(leaf: bytes, index: int, size: int, path: list[bytes], expected_root: bytes) -> bool:
    """RFC 9162 §2.1.3.2."""
    if index >= size:
        return False
    fn, sn, r = index, size - 1, leaf
    for p in path:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    return sn == 0 and r == expected_root


def verify_consistency(old_size: int, new_size: int, old_root: bytes, new_root: bytes, proof: list[bytes]) -> bool:
    """RFC 9162 §2.1.4.2."""
    if old_size == new_size:
        return not proof and old_root == new_root
    if old_size == 0 or old_size > new_size or not proof:
        return False
    path = list(proof)
    if old_size & (old_size - 1) == 0:  # a power of two: the old root is the first node
        path.insert(0, old_root)
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    return sn == 0 and fr == old_root and sr == new_root
