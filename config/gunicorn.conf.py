"""Gunicorn settings for production and for the production-like `make run` (`gunicorn -c
config/gunicorn.conf.py config.wsgi`): threaded workers (gthread), because a request mostly waits on
PostgreSQL; everything an operator tunes comes from the environment: PORT, HOST (or GUNICORN_BIND),
WEB_CONCURRENCY, GUNICORN_THREADS, GUNICORN_TIMEOUT, FORWARDED_ALLOW_IPS."""
import multiprocessing
import os

_port = os.environ.get("PORT", "8000")
bind = os.environ.get("GUNICORN_BIND") or f"{os.environ.get('HOST', '0.0.0.0')}:{_port}"
workers = int(os.environ.get("WEB_CONCURRENCY") or 2 * multiprocessing.cpu_count())
threads = int(os.environ.get("GUNICORN_THREADS", "4"))
worker_class = "gthread"
keepalive = int(os.environ.get("GUNICORN_KEEPALIVE", "5"))
timeout = int(os.environ.get("GUNICORN_TIMEOUT", "30"))
graceful_timeout = int(os.environ.get("GUNICORN_GRACEFUL_TIMEOUT", "20"))
# Recycle workers now and then so that a slow leak never becomes an outage; jitter avoids a stampede.
max_requests = int(os.environ.get("GUNICORN_MAX_REQUESTS", "2000"))
max_requests_jitter = max_requests // 10
# Behind a load balancer that terminates TLS: trust its X-Forwarded-* only from the addresses given.
forwarded_allow_ips = os.environ.get("FORWARDED_ALLOW_IPS", "127.0.0.1")
# Heartbeat files in memory: a slow disk must not make the arbiter think workers hang.
worker_tmp_dir = "/dev/shm" if os.path.isdir("/dev/shm") else None
# An empty GUNICORN_ACCESSLOG turns the access log off (the `make run` console does).
accesslog = os.environ.get("GUNICORN_ACCESSLOG", "-") or None
errorlog = "-"
loglevel = os.environ.get("GUNICORN_LOGLEVEL", "info")
proc_name = "tieout-web"
# gunicorn's control socket defaults to one path per user ($HOME/.gunicorn/gunicorn.ctl), which two
# instances on one machine would fight over: off unless GUNICORN_CONTROL_SOCKET names a path.
control_socket = os.environ.get("GUNICORN_CONTROL_SOCKET", "")
control_socket_disable = not control_socket
