"""The process supervisor behind `make run` (`python -m config.devserver`): starts web (gunicorn), Celery
worker and beat with the production-like configuration, waits until web answers /healthz, prints the URL
and the demo logins (`manage.py load_demo` output, saved by `make run` in var/demo-logins.txt) last, then
waits. Ctrl-C or SIGTERM stops all three gracefully; if one dies on its own the others are stopped too and
the exit status is non-zero, so a broken start never looks like a running system. The console stays quiet
(WARNING) unless asked; see `child_env` and `Supervisor`."""
from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = BASE_DIR / "var"
BIN_DIR = Path(sys.executable).parent
GRACE_SECONDS = 30
PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # runs in the child between fork and exec
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:
        pass  # not Linux: the supervisor's own shutdown path still stops the children


DEFAULT_CONSOLE_LEVEL = "WARNING"  # Celery logs a line per task and beat tick at INFO: the URL would scroll away


def console_levels(environ) -> tuple[str, str]:
    """(application and gunicorn level, Celery level) for the dev console: WARNING unless the environment asks."""
    app_level = (environ.get("LOG_LEVEL") or DEFAULT_CONSOLE_LEVEL).upper()
    celery_level = (environ.get("CELERY_LOG_LEVEL") or app_level).upper()
    return app_level, celery_level


def child_env(environ) -> dict[str, str]:
    """The environment of web, worker and beat: the caller's, with the quiet console defaults filled in.

    Worker, beat, gunicorn and the application loggers log at WARNING unless asked (`CELERY_LOG_LEVEL=INFO`
    for Celery alone, `LOG_LEVEL=INFO` for everything), and gunicorn's access log is off unless
    `GUNICORN_ACCESSLOG=-` (or a file) asks for it.
    """
    env = dict(environ)
    env.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.dev")
    env.setdefault("PYTHONUNBUFFERED", "1")
    env.setdefault("PORT", "8000")
    if "GUNICORN_BIND" not in env:
        env.setdefault("HOST", "127.0.0.1")  # a developer's machine: not reachable from the network
    app_level, _ = console_levels(environ)
    env["LOG_LEVEL"] = app_level
    env.setdefault("GUNICORN_LOGLEVEL", app_level.lower())
    # An empty GUNICORN_ACCESSLOG turns the access log off (config/gunicorn.conf.py); `-` asks for it.
    env.setdefault("GUNICORN_ACCESSLOG", "")
    return env


def _commands(port: str, celery_level: str = DEFAULT_CONSOLE_LEVEL) -> dict[str, list[str]]:
    celery = str(BIN_DIR / "celery")
    level = celery_level.lower()
    return {
        "web": [str(BIN_DIR / "gunicorn"), "-c", str(BASE_DIR / "config" / "gunicorn.conf.py"), "config.wsgi"],
        "worker": [celery, "-A", "config", "worker", "-Q", "celery,posting,callbacks", "-l", level,
                   "-n", "tieout-dev@%h"],
        "beat": [
            celery, "-A", "config", "beat", "-l", level,
            "-s", str(VAR_DIR / "celerybeat-schedule"),
            "--pidfile", str(VAR_DIR / "celerybeat.pid"),
        ],
    }


class Supervisor:
    """The web, worker and beat children, stopped together.

    Each child runs in its own session so that the terminal's Ctrl-C reaches only this supervisor, which then
    shuts the children down in order (SIGTERM, then SIGKILL after a grace period); on Linux a child also gets
    SIGTERM if the supervisor itself is killed.
    """

    def __init__(self) -> None:
        self.children: dict[str, subprocess.Popen] = {}
        self.stopping = False

    def start(self, name: str, argv: list[str], env: dict[str, str]) -> None:
        self.children[name] = subprocess.Popen(
            argv, cwd=BASE_DIR, env=env, start_new_session=True, preexec_fn=_die_with_parent
        )

    def request_stop(self, signum, _frame) -> None:
        if not self.stopping:
            print(f"\ndevserver: {signal.Signals(signum).name} received, stopping web, worker and beat ...",
                  file=sys.stderr, flush=True)
        self.stopping = True

    def exited(self) -> list[str]:
        return [name for name, proc in self.children.items() if proc.poll() is not None]

    def stop_all(self) -> None:
        # SIGTERM to each main process only: gunicorn's arbiter and Celery's main process stop their own
        # workers gracefully; the whole process group gets SIGKILL only after the grace period.
        for proc in self.children.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + GRACE_SECONDS
        for name, proc in self.children.items():
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                print(f"devserver: {name} did not stop in {GRACE_SECONDS}s, killing it", file=sys.stderr)
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait()


def _port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def _wait_for_web(url: str, sup: Supervisor, timeout: float = 90) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not sup.stopping and not sup.exited():
        try:
            with urllib.request.urlopen(url + "healthz", timeout=2) as response:
                if response.status == 200:
                    return True
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.3)
    return False


def banner(url: str, logins: str) -> str:
    """What the console shows last, once web answers: the URL, the demo logins (if any) and how to stop."""
    lines = ["", "=" * 72, f"Tieout is running at {url}   (API docs: {url}api/v1/docs, admin: {url}admin/)"]
    if logins.strip():
        lines += ["Demo logins:", logins.rstrip()]
    lines += ["Ctrl-C stops web, worker and beat.", "=" * 72, ""]
    return "\n".join(lines)


def main() -> int:
    env = child_env(os.environ)
    port = env["PORT"]
    _, celery_level = console_levels(os.environ)
    VAR_DIR.mkdir(exist_ok=True)
    url = f"http://127.0.0.1:{port}/"

    host = env.get("HOST", "127.0.0.1")
    if "GUNICORN_BIND" not in env and not _port_free(host, int(port)):
        # Checked up front: another server answering /healthz there would pass for ours.
        print(f"devserver: port {port} is in use; stop what listens there or run `make run PORT=8001`",
              file=sys.stderr)
        return 1

    sup = Supervisor()
    signal.signal(signal.SIGINT, sup.request_stop)
    signal.signal(signal.SIGTERM, sup.request_stop)
    signal.signal(signal.SIGHUP, sup.request_stop)
    print(f"devserver: starting web, worker and beat (logs at {env['LOG_LEVEL']}, Celery at {celery_level};"
          " LOG_LEVEL=INFO make run shows more) ...", flush=True)
    for name, argv in _commands(port, celery_level).items():
        sup.start(name, argv, env)

    status = 0
    if _wait_for_web(url, sup):
        logins = VAR_DIR / "demo-logins.txt"
        print(banner(url, logins.read_text() if logins.exists() else ""), flush=True)
    elif not sup.stopping:
        print(f"devserver: the web process did not answer {url}healthz", file=sys.stderr)
        status = 1

    while status == 0 and not sup.stopping:
        dead = sup.exited()
        if dead:
            for name in dead:
                print(f"devserver: {name} exited with status {sup.children[name].returncode}; stopping the rest",
                      file=sys.stderr)
            status = 1
            break
        time.sleep(0.5)

    sup.stop_all()
    print("devserver: stopped", file=sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(main())
