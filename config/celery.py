"""The Celery application: `celery -A config worker` loads Django settings (namespace CELERY_). At worker
start we refuse a Redis visibility timeout shorter than the longest countdown a task may wait (backoff cap,
ERP Retry-After cap): Redis would otherwise hand a merely-waiting message to a second worker, and the same
journal would be in flight twice. It also adds the event lanes (`config.lanes`) to the queues a worker
consumes: every lane for a worker of the default queue, or those `TIEOUT_WORKER_LANES` pins it to. Each task
starts as a web request does: a database connection past CONN_MAX_AGE, or that fails its health check, is
replaced, and a live one is kept (Celery's own fix-up would close it after every task: CELERY_DB_REUSE_MAX)."""
import os

from celery import Celery
from celery.signals import celeryd_after_setup, task_prerun, worker_init
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import close_old_connections

from config import lanes

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.dev")

app = Celery("tieout")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


def check_visibility_timeout(conf, *, backoff_cap: float, retry_after_cap: float) -> None:
    if not str(conf.broker_url or "").startswith(("redis://", "rediss://", "redis+socket://")):
        return
    visibility = float((conf.broker_transport_options or {}).get("visibility_timeout", 3600))
    longest = max(backoff_cap, retry_after_cap)
    if visibility <= longest:
        raise ImproperlyConfigured(
            f"Redis visibility_timeout ({visibility:.0f}s) must exceed the longest task countdown ({longest:.0f}s); "
            "raise CELERY_VISIBILITY_TIMEOUT or lower TIEOUT_POSTING_BACKOFF_CAP")


@worker_init.connect
def _on_worker_init(sender=None, **kwargs):
    check_visibility_timeout(app.conf, backoff_cap=settings.TIEOUT_POSTING_BACKOFF_CAP,
                             retry_after_cap=settings.TIEOUT_POSTING_RETRY_AFTER_CAP)


# After `-Q` was applied and before the consumer starts: the lanes join the selected queues (and the banner).
@celeryd_after_setup.connect
def _add_event_lanes(sender=None, instance=None, **kwargs):
    queues = instance.app.amqp.queues
    for name in lanes.worker_queues(list(queues.consume_from), os.environ):
        queues.select_add(name)


@task_prerun.connect
def _renew_old_connections(sender=None, **kwargs):
    # Not for an eager task: it runs inside its caller's transaction, whose connection must not be touched.
    if getattr(getattr(sender, "request", None), "is_eager", False):
        return
    close_old_connections()
