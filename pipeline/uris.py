"""Store addresses, in one place: what a URI or path names, and how to print it safely.

Both stores take either a local path or a URL: Optuna's `--storage` a journal file path or an
RDB/gRPC URL, MLflow's `--tracking-uri` a `sqlite:///` database or an http(s) server. Passwords
in them are masked wherever a URI reaches output, logs or tags (SQLAlchemy's `hide_password`
misses the `?password=` form).
"""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import urlsplit

SQLITE = "sqlite:///"


def is_url(text: str) -> bool:
    """A URL (`scheme://...`) rather than a plain file path."""
    return "://" in text


def is_server(uri: str) -> bool:
    """An MLflow tracking server (`http(s)://`), which serves its own UI, rather than a store."""
    return uri.startswith(("http://", "https://"))


def server_address(uri: str) -> str:
    """A server URL without the credentials it may carry (`scheme://host[:port]/path`)."""
    u = urlsplit(uri)
    netloc = f"{u.hostname}:{u.port}" if u.port else str(u.hostname)
    return f"{u.scheme}://{netloc}{u.path.rstrip('/')}"


def sqlite_path(uri: str | None) -> Path | None:
    """The database file of a `sqlite:///PATH` URI, else None."""
    if uri is None or not uri.startswith(SQLITE):
        return None
    return Path(uri[len(SQLITE) :])


def sqlite_uri(path: Path) -> str:
    """`sqlite:///<absolute path>`, so it means the same from any working directory."""
    return f"{SQLITE}{path.resolve()}"


def mask_secret(uri: str) -> str:
    """Hide the password of a URL, both `user:pw@host` and `?password=pw` forms."""
    masked = re.sub(r"(://[^:/@]+):[^@/]+@", r"\1:***@", uri)
    return re.sub(r"(?i)([?&](?:password|pwd|pass)=)[^&]+", r"\1***", masked)
