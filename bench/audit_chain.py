"""What the audit chain costs ingest: POST /api/v1/events with the chain on vs its hashing off, same run.

The same gunicorn set-up, database and clients as bench/ingest.py (whose `hammer` it reuses), run in
alternating rounds (on, off, on, off) so that drift on a shared machine hits both sides alike; the ratio
is the on rounds' total accepted events over the off rounds'. "Hashing off" is the bench-only setting
TIEOUT_AUDIT_HASHING=off: `audit.services.record` then skips the entry hash (SHA-256 of the entry's
canonical content) and writes a placeholder that can never verify. Everything else an audited write does
stays (the canonical content, which is stored either way, the entry row and the database's check of its
columns against that content, its transaction id taken first); the sealer is a beat task off the request path and does
not run here (as in bench/ingest.py: no Celery worker, no beat). Goal: on / off >= 0.90.

Knobs: BENCH_SECONDS per round (10), BENCH_ROUNDS pairs (2), BENCH_CLIENTS (8), BENCH_DB (tieout_bench_chain).
"""
import os

os.environ.setdefault("BENCH_DB", "tieout_bench_chain")
os.environ.setdefault("BENCH_SECONDS", "10")

import _common as c  # noqa: E402
import ingest  # noqa: E402

ROUNDS = int(os.environ.get("BENCH_ROUNDS", "2"))


def main() -> None:
    c.say(f"audit chain cost on ingest: {ingest.CLIENTS} clients, {ROUNDS} x (on, off) rounds of "
          f"{ingest.SECONDS:.0f} s ({c.machine()})")
    env = c.bench_env()
    token = c.prepare(env)
    totals = {"on": [0, 0.0], "off": [0, 0.0]}
    for round_no in range(ROUNDS):
        for mode in ("on", "off"):
            server, port = c.start_gunicorn(dict(env, TIEOUT_AUDIT_HASHING=mode))
            ingest.hammer(port, token, 2.0, f"warm{mode}{round_no}")
            result = ingest.hammer(port, token, ingest.SECONDS, f"r{mode}{round_no}")
            c.stop(server)
            totals[mode][0] += result["accepted"]
            totals[mode][1] += result["elapsed"]
            c.say(f"  round {round_no + 1} hashing {mode:>3}: {result['rate']:7.0f} events/s, p50 "
                  f"{result['p50_ms']:.1f} ms, p99 {result['p99_ms']:.1f} ms, statuses {result['statuses']}")
    on = totals["on"][0] / totals["on"][1]
    off = totals["off"][0] / totals["off"][1]
    c.say("")
    c.say(f"ingest with the audit chain on: {on:.0f} events/s; with its hashing off: {off:.0f} events/s; "
          f"ratio {on / off:.3f} (goal >= 0.90: {'met' if on / off >= 0.90 else 'NOT met'})")


if __name__ == "__main__":
    main()
