"""ERP read-back of 100,000 documents from the ERPNext stand-in answering in 20 ms per request (a page).

The stand-in (tests/standins/erpnext.py) runs in this process on 127.0.0.1, loaded in memory (`seed`, no
HTTP) with BENCH_READBACK_DOCS submitted Journal Entries of three account rows each, every one carrying a
reference of our form, all dated November 2026; it sleeps BENCH_ERP_LATENCY before answering each request.
The connector is the production one (`ledger.connectors.erpnext.ErpNextConnector`), for entity US01 of a
fresh bench database (created, migrated and dropped by the script, as the other benchmarks do), reading
`erp_documents` for the month: time, requests made, documents/s, and the rows each page carried. Then,
for comparison in the same run, the per-document pattern (list the names, then `GET .../{name}` for each)
timed over the first BENCH_READBACK_SAMPLE documents and extrapolated to all of them. With
BENCH_READBACK_GL=1 the entries also get their GL Entries and `account_movements` is timed over them.

Knobs: BENCH_READBACK_DOCS (100000), BENCH_ERP_LATENCY (0.020 s), BENCH_READBACK_PAGE_SIZE (500, the
connector's default), BENCH_READBACK_SAMPLE (1000), BENCH_READBACK_GL (off), BENCH_DB (tieout_bench_readback).
"""
import datetime
import os
import resource
import sys
import time

import django

os.environ.setdefault("BENCH_DB", "tieout_bench_readback")

import _common as c  # noqa: E402

# The connector reads the entity (its settings, accounts, currency) through Django: production settings on
# the bench database, created and migrated by prepare() below (setting Django up does not connect).
TOKEN_ENV = "BENCH_ERPNEXT_TOKEN"
ENV = c.bench_env(**{TOKEN_ENV: "key:secret"})
os.environ.update(ENV)
sys.path.insert(0, str(c.BASE_DIR))
django.setup()

from ledger import connectors, services  # noqa: E402
from ledger.models import Entity  # noqa: E402
from tests.standins.erpnext import ErpNextStandin  # noqa: E402

DOCS = int(os.environ.get("BENCH_READBACK_DOCS", "100000"))
LATENCY = float(os.environ.get("BENCH_ERP_LATENCY", "0.020"))
PAGE_SIZE = int(os.environ.get("BENCH_READBACK_PAGE_SIZE", "500"))
SAMPLE = int(os.environ.get("BENCH_READBACK_SAMPLE", "1000"))
WITH_GL = os.environ.get("BENCH_READBACK_GL", "") not in ("", "0")
NOV_1, NOV_30 = datetime.date(2026, 11, 1), datetime.date(2026, 11, 30)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    c.say(f"machine: {c.machine()}")
    c.prepare(ENV)
    erp = ErpNextStandin(latency=LATENCY).start()
    try:
        started = time.monotonic()
        refs = erp.seed(DOCS, gl=WITH_GL)
        c.say(f"stand-in: {len(refs):,} submitted Journal Entries x 3 rows{' with GL Entries' if WITH_GL else ''}, "
              f"seeded in memory in {time.monotonic() - started:.1f} s; {LATENCY * 1000:.0f} ms per request")
        entity = Entity.objects.get(code="US01")
        services.entity_configure_erp(entity=entity, connector="erpnext", actor="bench", erp_settings={
            "url": erp.url, "company": erp.company, "token_env": TOKEN_ENV, "page_size": PAGE_SIZE})
        entity.refresh_from_db()

        # The read-back, as a reconciliation run does it.
        connector = connectors.get_connector(entity)
        erp.requests.clear()
        started = time.monotonic()
        count = lines = 0
        for document in connector.erp_documents(date_from=NOV_1, date_to=NOV_30):
            count += 1
            lines += len(document.lines)
        elapsed = time.monotonic() - started
        c.say("")
        c.say(f"erp_documents: {count:,} documents ({lines:,} lines) in {elapsed:.1f} s; "
              f"{connector.requests_made:,} requests ({connector.retries_made} retried); "
              f"{count / elapsed:,.0f} documents/s")
        c.say(f"  requests: GET /api/resource/Journal Entry, {PAGE_SIZE} rows a page (about "
              f"{PAGE_SIZE // 3} entries with their account rows), keyed by name; latency alone "
              f"{connector.requests_made * LATENCY:.1f} s of the {elapsed:.1f} s")
        assert count == DOCS, f"read {count} of {DOCS} documents"

        # The per-document pattern, for comparison: names listed a page at a time, then one GET per document.
        sample = min(SAMPLE, DOCS)
        connector = connectors.get_connector(entity)
        started = time.monotonic()
        names = []
        after = None
        while len(names) < sample:
            rows = connector._list("/api/resource/Journal Entry", fields=["name"], filters=[],
                                   order_by="name asc", after=after)
            if not rows:
                break
            names += [row["name"] for row in rows]
            after = rows[-1]["name"]
        for name in names[:sample]:
            connector.erp_document(name)
        per_doc = time.monotonic() - started
        estimate = per_doc / sample * DOCS
        c.say(f"per-document GETs (for comparison): {sample:,} documents in {per_doc:.1f} s, "
              f"{connector.requests_made:,} requests; for {DOCS:,}: about {estimate / 60:.0f} min and "
              f"{DOCS + DOCS // PAGE_SIZE:,} requests")

        if WITH_GL:
            connector = connectors.get_connector(entity)
            started = time.monotonic()
            moved = list(connector.account_movements(date_from=NOV_1, date_to=NOV_30,
                                                     accounts=["1200", "2200", "4000"]))
            elapsed = time.monotonic() - started
            c.say(f"account_movements: {len(erp.gl.rows):,} GL Entries into {len(moved)} account-months in "
                  f"{elapsed:.1f} s; {connector.requests_made:,} requests")
        c.say(f"peak RSS of this process (stand-in and reader together): {peak_rss_mb():,.0f} MB; "
              f"load average {c.load():.2f}")
    finally:
        erp.stop()


if __name__ == "__main__":
    main()
