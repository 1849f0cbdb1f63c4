"""Project configuration: settings per environment, URL map, Celery app, embedded services for dev/test."""
from .celery import app as celery_app

__all__ = ("celery_app",)
