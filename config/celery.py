"""The Celery application: `celery -A config worker` loads Django settings (namespace CELERY_). At worker
start we refuse a Redis visibility timeout shorter than the longest countdown a task may wait (backoff cap,
ERP Retry-After cap): Redis would otherwise hand a merely-waiting message to a second worker, and the same
journal would be in flight twice."""
import os

from celery import Celery
from celery.signals import worker_init
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

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
