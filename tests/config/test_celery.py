"""Celery posting configuration: late acks, one message at a time, and a visibility timeout checked at start."""
import pytest
from django.core.exceptions import ImproperlyConfigured

from config.celery import app, check_visibility_timeout
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
