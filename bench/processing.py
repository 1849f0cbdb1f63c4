"""Statements per event processed: one at a time vs set-based chunks (issue 13's goal: 3 or fewer, amortised).

On a fresh bench database (production settings, entity US01, no worker), TIEOUT_PROCESS_CHUNK invoice
events (200 by default) are accepted and processed by `event_process` one at a time, then as many again by
`events_process` in one chunk, in process (`_roundtrips.py chunk`): every statement sent to PostgreSQL is
counted (BEGIN, COMMIT and SAVEPOINTs included, and what runs after commit: wake-ups, the posting relay),
with the Redis round trips and the time per event, and the ratio of the two side by side; once with the
built-in ledger posting each journal inline after commit (as a worker does), once processing alone.
"""
import _common as c


def main() -> None:
    env = c.bench_env()
    c.say(f"processing: statements per invoice event, one at a time vs chunked ({c.machine()})")
    token = c.prepare(env)
    trips = c.helper("chunk", env=dict(env, BENCH_TOKEN=token))
    for suffix, what in (("", "processed and posted (the built-in ledger posts inline after commit)"),
                         ("_processing_only", "processed only (outbox relay off: journals left ready)")):
        one, chunked = trips["one_at_a_time" + suffix], trips["chunked" + suffix]
        c.say(f"{what}:")
        for label, row in (("one at a time (event_process)", one),
                           (f"chunk of {trips['events']} (events_process)", chunked)):
            c.say(f"  {label}: {row['db_round_trips_per_event']} DB round trips per event "
                  f"({row['db_round_trips']} for {trips['events']}, {row['processed']} processed), "
                  f"{row['redis_round_trips']} Redis in all, {row['ms_per_event']} ms per event in process")
            c.say(f"    by statement: {dict(sorted(row['sql'].items(), key=lambda kv: -kv[1]))}")
        c.say(f"  chunked / one at a time: {chunked['db_round_trips'] / max(1, one['db_round_trips']):.2f} of the "
              f"statements, {chunked['ms_per_event'] / max(0.01, one['ms_per_event']):.2f} of the time")

if __name__ == "__main__":
    main()
