"""What monthly partitions cost the ingest (issue 13 item 4): single-event receives (the lean statement) and
1,000-event batches, in process, on the partitioned tables (with their key-table triggers) and on the same
database migrated back to plain tables (audit 0005, billing_sync 0012), side by side in one run, twice each
in alternation; then the time the migrations take to partition the rows written meanwhile.

Knobs (environment): BENCH_SINGLES (2000), BENCH_BATCHES (10), BENCH_PG_URL, BENCH_DB.
"""
import json
import os
import subprocess
import time

import _common as c

SINGLES = os.environ.get("BENCH_SINGLES", "2000")
BATCHES = os.environ.get("BENCH_BATCHES", "10")


def run(env: dict) -> dict:
    result = subprocess.run([str(c.BIN / "python"), "bench/_partitions_run.py", SINGLES, BATCHES], cwd=c.BASE_DIR,
                            env=env, capture_output=True, text=True, timeout=1800)
    if result.returncode != 0:
        raise SystemExit(f"bench/_partitions_run.py failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    env = c.bench_env()
    c.prepare(env)
    figures = {"partitioned": [], "plain": []}
    for _ in range(2):
        figures["partitioned"].append(run(env))
        c.manage("migrate", "audit", "0005", "-v", "0", env=env)
        c.manage("migrate", "billing_sync", "0012", "-v", "0", env=env)
        figures["plain"].append(run(env))
        rows = c.psql("SELECT (SELECT count(*) FROM audit_auditentry) + (SELECT count(*) FROM billing_sync_event)"
                      " + (SELECT count(*) FROM billing_sync_receipt)", db=c.DB_NAME)[0][0]
        started = time.monotonic()
        c.manage("migrate", "-v", "0", env=env)
        c.say(f"migrations partitioned {rows} rows (audit entries, events, receipts) in "
              f"{time.monotonic() - started:.1f} s")
    for kind in ("single_per_s", "batch_per_s"):
        part = c.median([f[kind] for f in figures["partitioned"]])
        plain = c.median([f[kind] for f in figures["plain"]])
        c.say(f"{kind}: partitioned {part:.0f}, plain tables {plain:.0f}, ratio {part / plain:.2f}")
    c.say(c.machine())


if __name__ == "__main__":
    main()
