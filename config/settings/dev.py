"""Developer settings: `make run` on the embedded PostgreSQL and Redis; never for production."""
import os

from .base import *  # noqa: F401,F403
from .base import env_bool, env_list

DEBUG = env_bool("DEBUG", True)
SECRET_KEY = os.environ.get("SECRET_KEY") or "dev-only-not-secret-tieout"
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", "localhost,127.0.0.1,[::1]")
SESSION_COOKIE_SECURE = env_bool("SESSION_COOKIE_SECURE", False)
CSRF_COOKIE_SECURE = env_bool("CSRF_COOKIE_SECURE", False)
LOG_JSON = env_bool("LOG_JSON", False)
from config.logging import build_logging  # noqa: E402

LOGGING = build_logging(os.environ.get("LOG_LEVEL", "INFO"), LOG_JSON)
