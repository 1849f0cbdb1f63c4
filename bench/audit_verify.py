"""`manage.py audit_verify` over 1,000,000 sealed entries: entries/s and peak memory (it streams).

Seeds the bench database set-based: entries built and hashed by the application's own code
(`audit.services.entries._build`, so verification recomputes real hashes, and the database checks each row's
columns against its content as it does for `record`), spread over one month (November
2026) and loaded with COPY, then chained in seq order exactly as the sealer does and loaded with COPY,
then signed into daily digests by `audit.services.digests_build` (so verification also recomputes every
day's Merkle root and the whole tree). Then runs `manage.py audit_verify` as its own process and reports
its wall time, the time it reports for the check itself, entries/s and the process's peak RSS, first
at BENCH_AUDIT_SMALL entries and again at BENCH_AUDIT_ENTRIES: the same peak at both sizes is what
"constant memory, streamed" means; then once more with `--roots` (the thorough pass, which also
re-computes every digest's Merkle roots), for comparison. The entries are synthetic changes of entity US01's objects
(object ids "US01:..."), with small before/after documents like the real ones.

Knobs: BENCH_AUDIT_ENTRIES (1,000,000), BENCH_AUDIT_SMALL (200,000), BENCH_AUDIT_REPEATS (5 runs at the
full size, median reported), BENCH_DB (tieout_bench_audit).
"""
import base64
import datetime
import os
import secrets
import subprocess
import sys
import time

import django

os.environ.setdefault("BENCH_DB", "tieout_bench_audit")

import _common as c  # noqa: E402

# This process seeds through the application's own code, so Django is configured here, at import and
# before that code is imported below: production settings on the bench database (created and migrated
# later by prepare(); setting Django up does not connect) with a throwaway signing key for the digests.
# Every child process (manage.py migrate, audit_verify, export_evidence) gets this same environment, so
# it verifies with the key the digests were signed with.
ENV = c.bench_env(TIEOUT_AUDIT_SIGNING_KEY=base64.b64encode(secrets.token_bytes(32)).decode())
os.environ.update(ENV)
sys.path.insert(0, str(c.BASE_DIR))
django.setup()

from django.db import connection  # noqa: E402

from audit import services  # noqa: E402
from audit.services import entries as audit_entries  # noqa: E402

ENTRIES = int(os.environ.get("BENCH_AUDIT_ENTRIES", "1000000"))
SMALL = int(os.environ.get("BENCH_AUDIT_SMALL", "200000"))
REPEATS = int(os.environ.get("BENCH_AUDIT_REPEATS", "5"))
MONTH_START = (2026, 11, 1)
MONTH_DAYS = 30


def seed(total: int, *, start: int = 0, batch: int = 100_000) -> float:
    """Entries start..total-1 (hashed by the app's code), COPY'd, then sealed in order. Returns seconds."""
    began = time.monotonic()
    month = datetime.datetime(*MONTH_START, tzinfo=datetime.UTC)
    span = MONTH_DAYS * 86400 / max(total, 1)
    with connection.cursor() as cursor:
        cursor.execute("SELECT coalesce(max(seq), 0), coalesce((SELECT chain_hash FROM audit_auditseal "
                       "ORDER BY seq DESC LIMIT 1), %s) FROM audit_auditseal", [services.GENESIS])
        seq, prev = cursor.fetchone()
    raw = connection.connection if connection.connection else (connection.ensure_connection() or connection.connection)
    for lo in range(start, total, batch):
        hi = min(lo + batch, total)
        entries = []
        for n in range(lo, hi):
            at = month + datetime.timedelta(seconds=n * span)
            entries.append(audit_entries._build(
                actor="bench", action="journal.posted", object_type="journal", object_id=f"US01:{n}",
                before={"status": "ready"}, after={"status": "posted", "erp_document_ref": f"JE-{n:08d}"},
                correlation_id=f"corr-{n % 977}", at=at))
        with raw.cursor() as cur:
            with cur.copy("COPY audit_auditentry (at, actor, action, object_type, object_id, correlation_id, "
                          "content, entry_hash) FROM STDIN") as copy:
                for e in entries:
                    copy.write_row((e.at, e.actor, e.action, e.object_type, e.object_id, e.correlation_id,
                                    e.content, e.entry_hash))
            cur.execute("SELECT id, entry_hash FROM audit_auditentry WHERE id > coalesce((SELECT max(entry_id) "
                        "FROM audit_auditseal), 0) ORDER BY id")
            rows = cur.fetchall()
            sealed_at = datetime.datetime.now(datetime.UTC)
            with cur.copy("COPY audit_auditseal (seq, entry_id, entry_hash, prev_hash, chain_hash, sealed_at) "
                          "FROM STDIN") as copy:
                for entry_id, entry_hash in rows:
                    seq += 1
                    link = services.chain_hash(prev, seq, entry_id, entry_hash)
                    copy.write_row((seq, entry_id, entry_hash, prev, link, sealed_at))
                    prev = link
        raw.commit()
        c.say(f"  seeded {hi:,} entries ({time.monotonic() - began:.0f} s)")
    with raw.cursor() as cur:  # what autovacuum would have done by now on a table of this size
        cur.execute("ANALYZE audit_auditentry")
        cur.execute("ANALYZE audit_auditseal")
    raw.commit()
    return time.monotonic() - began


def digest_all(offset: int = 0) -> float:
    """Sign what is sealed so far (all of it carries today's sealed_at): one digest for "today + offset"."""
    began = time.monotonic()
    services.digests_build(through=datetime.datetime.now(datetime.UTC).date() + datetime.timedelta(days=offset))
    return time.monotonic() - began


def _hwm_kib(pid: int) -> int:
    """The process's peak resident set (VmHWM), reset by exec: unlike wait4's ru_maxrss, which on Linux
    still carries the pre-exec size of the forked bench process."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def timed_child(argv: list[str], env: dict) -> tuple[float, int, str, str]:
    """Run a child; return (wall seconds, its peak RSS in KiB, sampled every 50 ms, stdout, stderr)."""
    out_path, err_path = c.log_path("child.out"), c.log_path("child.err")
    peak = 0
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        began = time.monotonic()
        process = subprocess.Popen(argv, cwd=c.BASE_DIR, env=env, stdout=out, stderr=err)
        while process.poll() is None:
            peak = max(peak, _hwm_kib(process.pid))
            time.sleep(0.05)
        wall = time.monotonic() - began
    stdout, stderr = out_path.read_text(), err_path.read_text()
    if process.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed ({process.returncode}):\n{stdout[-2000:]}\n{stderr[-2000:]}")
    return wall, peak, stdout, stderr


def run_verify(env: dict, count: int, *extra: str) -> dict:
    wall, rss, stdout, stderr = timed_child([str(c.BIN / "python"), "manage.py", "audit_verify", *extra], env)
    assert stdout.strip().splitlines()[-1].startswith("OK "), stdout
    reported = float(stderr.strip().split(" in ")[-1].split()[0])
    return {"count": count, "wall": wall, "check": reported, "rate": count / reported, "rss_mib": rss / 1024}


def prepare(env: dict) -> None:
    c.create_database()
    started = time.monotonic()
    c.manage("migrate", "--noinput", "-v", "0", env=env)
    c.manage("setup_entity", "US01", "--currency", "USD", env=env)
    c.say(f"database {c.DB_NAME} created and migrated in {time.monotonic() - started:.1f} s")


def main() -> None:
    c.say(f"audit_verify: {ENTRIES:,} sealed entries over one month ({c.machine()})")
    env = ENV
    prepare(env)
    figures = []
    done = 0
    for round_no, size in enumerate(sorted({min(SMALL, ENTRIES), ENTRIES})):
        seconds = seed(size, start=done)
        done = size
        c.say(f"seeded and sealed {size:,} entries in {seconds:.1f} s; digest signed in {digest_all(round_no):.1f} s")
        figures.append(run_verify(env, size + round_no + 1))  # + the digests' own audit entries
    # This machine's speed drifts by half from one minute to the next: the full size is run REPEATS times
    # and the median reported, with the range.
    runs = [figures[-1]] + [run_verify(env, figures[-1]["count"]) for _ in range(REPEATS - 1)]
    figures[-1] = sorted(runs, key=lambda f: f["rate"])[len(runs) // 2]
    thorough = run_verify(env, figures[-1]["count"], "--roots")
    c.say("")
    for f in figures:
        c.say(f"audit_verify over {f['count']:>9,} entries: {f['rate']:>9,.0f} entries/s (check {f['check']:.1f} s, "
              f"process wall {f['wall']:.1f} s incl. Django start-up), peak RSS {f['rss_mib']:.0f} MiB")
    c.say(f"  the {len(runs)} runs at {figures[-1]['count']:,}: "
          + ", ".join(f"{f['rate']:,.0f}" for f in sorted(runs, key=lambda f: f["rate"])) + " entries/s (median above)")
    c.say(f"audit_verify --roots (the thorough pass, Merkle roots re-computed) over {thorough['count']:,} entries: "
          f"{thorough['rate']:,.0f} entries/s (check {thorough['check']:.1f} s), peak RSS {thorough['rss_mib']:.0f} MiB")
    c.say(f"goal >= 200,000 entries/s: {'met' if figures[-1]['rate'] >= 200_000 else 'NOT met'}; memory "
          f"{figures[0]['rss_mib']:.0f} MiB at {figures[0]['count']:,} vs {figures[-1]['rss_mib']:.0f} MiB at "
          f"{figures[-1]['count']:,}")


if __name__ == "__main__":
    main()
