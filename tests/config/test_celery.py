"""Celery configuration: late acks, one message at a time, a visibility timeout checked at start, and a worker's
database connection kept from one task to the next (renewed as a request's would be)."""
import time
from types import SimpleNamespace

import psycopg
import pytest
from celery.fixups.django import DjangoWorkerFixup
from django.core.exceptions import ImproperlyConfigured
from django.db import connection

from config.celery import _renew_old_connections, app, check_visibility_timeout
from ledger.tasks import post_erp_batch, post_journal


class _Conf:
    def __init__(self, visibility, broker="redis://127.0.0.1:6379/0"):
        self.broker_url = broker
        self.broker_transport_options = {"visibility_timeout": visibility}


def test_a_visibility_timeout_shorter_than_a_countdown_refuses_to_start():
    with pytest.raises(ImproperlyConfigured, match="visibility_timeout"):
        check_visibility_timeout(_Conf(600), backoff_cap=300, retry_after_cap=900)


def test_a_long_enough_visibility_timeout_starts():
    check_visibility_timeout(_Conf(3600), backoff_cap=300, retry_after_cap=900)


def test_other_brokers_are_not_checked():
    check_visibility_timeout(_Conf(1, broker="amqp://guest@127.0.0.1//"), backoff_cap=300, retry_after_cap=900)


def test_posting_tasks_ack_late_and_survive_a_lost_worker():
    for task in (post_journal, post_erp_batch):
        assert task.acks_late and task.reject_on_worker_lost
    assert app.conf.worker_prefetch_multiplier == 1
    assert app.conf.task_routes["ledger.tasks.post_journal"] == {"queue": "posting"}


_TASK = SimpleNamespace(request=SimpleNamespace(is_eager=False))


def _run_tasks(fixup, count):
    for _ in range(count):
        fixup.on_task_prerun(sender=_TASK)
        _renew_old_connections(sender=_TASK)
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_backend_pid()")
            pid = cursor.fetchone()[0]
        fixup.on_task_postrun(sender=_TASK)
    return pid


@pytest.mark.django_db(transaction=True)
def test_a_worker_keeps_its_database_session_from_task_to_task():
    """Celery's Django fix-up closes every connection around each task unless CELERY_DB_REUSE_MAX is set: each
    task then paid for a new PostgreSQL session with cold caches and no prepared statements."""
    assert app.conf.get("CELERY_DB_REUSE_MAX") >= 100
    fixup = DjangoWorkerFixup(app)
    first = _run_tasks(fixup, 1)
    assert _run_tasks(fixup, 20) == first  # one session for them all

    fixup.db_reuse_max = None  # Celery's default: a new session per task
    assert _run_tasks(fixup, 1) != first


@pytest.mark.django_db(transaction=True)
def test_a_task_starts_on_a_fresh_connection_once_the_old_one_is_past_its_age(settings):
    fixup = DjangoWorkerFixup(app)
    first = _run_tasks(fixup, 1)
    connection.close_at = time.monotonic() - 1  # CONN_MAX_AGE reached
    assert _run_tasks(fixup, 1) != first


@pytest.mark.django_db(transaction=True)
def test_a_task_replaces_a_connection_the_server_dropped():
    fixup = DjangoWorkerFixup(app)
    first = _run_tasks(fixup, 1)
    params = connection.get_connection_params()
    with psycopg.connect(**{k: v for k, v in params.items() if k in ("dbname", "user", "host", "port", "password")},
                         autocommit=True) as other:  # as a PostgreSQL restart or an idle timeout would
        other.execute("SELECT pg_terminate_backend(%s)", [first])
    assert _run_tasks(fixup, 1) != first


def test_an_eager_task_leaves_its_callers_connection_alone(db):
    """In eager mode a task runs inside the caller's transaction: renewing would close it under the caller."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        pid = cursor.fetchone()[0]
    _renew_old_connections(sender=SimpleNamespace(request=SimpleNamespace(is_eager=True)))
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        assert cursor.fetchone()[0] == pid
