"""`manage.py export_evidence` for one month of 1,000,000 audit entries: time and peak memory (it streams).

Seeds the bench database like bench/audit_verify.py (1,000,000 entries of entity US01 spread over
November 2026, hashed by the application's code, chained, signed into a digest), then runs
`manage.py export_evidence --entity US01 --from 2026-11-01 --to 2026-11-30 OUT.zip` as its own process
and reports its wall time, its peak RSS and the pack's size; then runs the pack's own verify_evidence.py
(standard library only, `python -I -S`) on it and reports the same for the auditor's side.

Knobs: BENCH_EVIDENCE_ENTRIES (1,000,000), BENCH_EVIDENCE_VERIFY (1: also run the verifier), BENCH_DB
(tieout_bench_audit).
"""
import os
import sys
import tempfile
import zipfile
from pathlib import Path

os.environ.setdefault("BENCH_DB", "tieout_bench_audit")

import _common as c  # noqa: E402
import audit_verify as seeding  # noqa: E402

ENTRIES = int(os.environ.get("BENCH_EVIDENCE_ENTRIES", "1000000"))
VERIFY = os.environ.get("BENCH_EVIDENCE_VERIFY", "1") not in ("", "0")


def main() -> None:
    c.say(f"export_evidence: one month, {ENTRIES:,} audit entries of US01 ({c.machine()})")
    env = seeding.ENV  # Django was set up with it when audit_verify was imported
    seeding.prepare(env)
    seconds = seeding.seed(ENTRIES)
    c.say(f"seeded and sealed {ENTRIES:,} entries in {seconds:.1f} s; digest signed in {seeding.digest_all():.1f} s")

    out_dir = Path(tempfile.mkdtemp(prefix="tieout-evidence-"))
    pack = out_dir / "US01-2026-11.zip"
    wall, rss, stdout, _ = seeding.timed_child(
        [str(c.BIN / "python"), "manage.py", "export_evidence", "--entity", "US01", "--from", "2026-11-01",
         "--to", "2026-11-30", str(pack)], env)
    size = pack.stat().st_size
    with zipfile.ZipFile(pack) as zf:
        uncompressed = sum(i.file_size for i in zf.infolist())
    c.say(stdout.strip())
    c.say("")
    c.say(f"export_evidence, {ENTRIES:,} entries: {wall:.1f} s wall ({ENTRIES / wall:,.0f} entries/s, incl. Django "
          f"start-up), peak RSS {rss / 1024:.0f} MiB; pack {size / 2**20:.0f} MiB ({uncompressed / 2**20:.0f} MiB "
          "uncompressed)")
    if VERIFY:
        folder = out_dir / "auditor"
        folder.mkdir()
        with zipfile.ZipFile(pack) as zf:
            (folder / "verify_evidence.py").write_bytes(zf.read("verify_evidence.py"))
            (folder / "key.pem").write_bytes(zf.read("public_key.pem"))
        wall, rss, stdout, _ = seeding.timed_child(
            [sys.executable, "-I", "-S", str(folder / "verify_evidence.py"), str(pack), "--public-key",
             str(folder / "key.pem")], env)
        c.say(f"verify_evidence.py on that pack: {wall:.1f} s, peak RSS {rss / 1024:.0f} MiB; "
              f"{stdout.strip().splitlines()[-1]}")
    for path in sorted(out_dir.rglob("*"), reverse=True):
        path.unlink() if path.is_file() else path.rmdir()
    out_dir.rmdir()


if __name__ == "__main__":
    main()
