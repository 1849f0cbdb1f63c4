"""The `make run` console (config/devserver.py): quiet unless asked, the URL and logins printed last."""
import runpy
from pathlib import Path

from config import devserver

GUNICORN_CONF = Path(devserver.BASE_DIR) / "config" / "gunicorn.conf.py"


def _level_after(argv: list[str]) -> str:
    return argv[argv.index("-l") + 1]


def test_worker_and_beat_log_at_warning_by_default():
    env = devserver.child_env({})
    app_level, celery_level = devserver.console_levels({})
    commands = devserver._commands(env["PORT"], celery_level)
    assert (app_level, celery_level) == ("WARNING", "WARNING")
    assert _level_after(commands["worker"]) == "warning"
    assert _level_after(commands["beat"]) == "warning"
    assert env["LOG_LEVEL"] == "WARNING"  # the application's loggers in web and worker too
    assert env["GUNICORN_LOGLEVEL"] == "warning"
    assert env["GUNICORN_ACCESSLOG"] == ""  # off
    assert env["HOST"] == "127.0.0.1" and env["PORT"] == "8000"


def test_log_level_asks_for_more_everywhere():
    environ = {"LOG_LEVEL": "info"}
    _, celery_level = devserver.console_levels(environ)
    commands = devserver._commands("8000", celery_level)
    assert _level_after(commands["worker"]) == "info" and _level_after(commands["beat"]) == "info"
    assert devserver.child_env(environ)["LOG_LEVEL"] == "INFO"


def test_celery_log_level_asks_for_celery_alone():
    environ = {"CELERY_LOG_LEVEL": "DEBUG"}
    app_level, celery_level = devserver.console_levels(environ)
    commands = devserver._commands("8000", celery_level)
    assert _level_after(commands["worker"]) == "debug"
    assert app_level == "WARNING" and devserver.child_env(environ)["GUNICORN_LOGLEVEL"] == "warning"


def test_access_log_on_when_asked(monkeypatch):
    env = devserver.child_env({"GUNICORN_ACCESSLOG": "-", "GUNICORN_LOGLEVEL": "info"})
    assert env["GUNICORN_ACCESSLOG"] == "-" and env["GUNICORN_LOGLEVEL"] == "info"
    monkeypatch.setenv("GUNICORN_ACCESSLOG", "-")
    assert runpy.run_path(str(GUNICORN_CONF))["accesslog"] == "-"


def test_gunicorn_reads_an_empty_access_log_as_off(monkeypatch):
    monkeypatch.setenv("GUNICORN_ACCESSLOG", "")
    assert runpy.run_path(str(GUNICORN_CONF))["accesslog"] is None
    monkeypatch.delenv("GUNICORN_ACCESSLOG")
    assert runpy.run_path(str(GUNICORN_CONF))["accesslog"] == "-"  # production keeps it on stdout


def test_banner_ends_with_the_url_and_the_logins():
    logins = "Tieout demo logins (DEVELOPMENT ONLY)\n  ops  finance_ops\nhttp://127.0.0.1:8000/\n"
    text = devserver.banner("http://127.0.0.1:8000/", logins)
    assert "Tieout is running at http://127.0.0.1:8000/" in text
    assert "  ops  finance_ops" in text
    assert text.index("running at") < text.index("ops  finance_ops") < text.index("Ctrl-C")
    assert "Demo logins" not in devserver.banner("http://127.0.0.1:8000/", "")
