"""Child process of bench/reconciliation.py: one billing ↔ ledger reconciliation run of entity BENCH over November
2026 (`billing_sync.services.reconciliation_run`, full), in a process of its own so that its peak RSS is the run's
(the parent samples VmHWM). The ERP side reads nothing: the connector is the built-in one with an empty read-back
(the seeded journals are booked, not posted, so there is nothing to read back anyway; the read-back has its own
bench). Prints one JSON line: the run's figures, the seconds of each step as the run's progress reports them, and
how many marks the run wrote, and the CPU seconds of the database backend that ran it (parallel workers
excepted; read from /proc: the bench runs beside the server) and of this process. Environment: the bench's (production settings on the bench database)."""
import datetime
import json
import os
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import django  # noqa: E402

django.setup()

from django.db import connection  # noqa: E402

from billing_sync import services  # noqa: E402
from billing_sync.models import ReconciliationMark  # noqa: E402
from ledger.connectors.builtin import BuiltinConnector  # noqa: E402
from ledger.models import Entity  # noqa: E402


class NoErp(BuiltinConnector):
    """The built-in connector with a read-back that finds nothing."""

    def erp_documents(self, **kwargs):
        return iter(())

    def erp_document(self, ref):
        return None

    def account_movements(self, **kwargs):
        return iter(())


def _server_cpu() -> float:
    """CPU seconds the database session's backend process has used (it runs on this machine): with the
    process's own, a figure the load of other processes does not inflate the way it does wall time."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        pid = cursor.fetchone()[0]
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    entity = Entity.objects.get(code=sys.argv[1])
    server_before = _server_cpu()
    date_from, date_to = (datetime.date.fromisoformat(d) for d in sys.argv[2:4])
    steps: list[tuple[str, float]] = []
    started = time.monotonic()

    def progress(step, count=None):
        if count is None or step != "ERP documents":
            steps.append((step, time.monotonic(), _server_cpu()))

    run = services.reconciliation_run(entity=entity, date_from=date_from, date_to=date_to, full=True, actor="bench",
                                      connector=NoErp(entity), progress=progress)
    seconds = time.monotonic() - started
    server = _server_cpu() - server_before
    own = resource.getrusage(resource.RUSAGE_SELF)
    timings, last = {}, started
    cpu, last_cpu = {}, server_before
    for step, at, used in steps:
        timings[step] = round(timings.get(step, 0) + at - last, 3)
        cpu[step] = round(cpu.get(step, 0) + used - last_cpu, 2)
        last, last_cpu = at, used
    print(json.dumps({"run": run.pk, "status": run.status, "error": run.error, "seconds": seconds,
                      "matched": run.matched, "breaks": run.breaks, "resolved": run.resolved,
                      "marks_written": ReconciliationMark.objects.filter(run_id=run.pk).count(), "steps": timings,
                      "server_cpu": round(server, 2), "steps_server_cpu": cpu, "process_cpu": round(own.ru_utime + own.ru_stime, 2)}))


if __name__ == "__main__":
    main()
