"""Celery tasks of the portal: the beat keeps the dashboard's month-scale figures for every entity fresh
(`portal.selectors.dashboard.month_figures_refresh`), so that no page request has to read them."""
from celery import shared_task

from portal.selectors import dashboard


@shared_task(name="portal.tasks.refresh_dashboard_month_figures", ignore_result=True)
def refresh_dashboard_month_figures():
    dashboard.month_figures_refresh(None)
