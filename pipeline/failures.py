"""Store-environment failures as one clear message: a full or read-only disk, an unreachable
tracking server, a lost database connection.

They are not bugs, so they become one TrackingError naming the store, the operation and the
path, instead of MLflow's or SQLite's traceback. Recognised by errno or by the drivers' own
wording (standard library only: used by pipeline.tracking, which talks to MLflow).
"""

from __future__ import annotations

import errno
import functools
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from pipeline.errors import TrackingError

_OS_REASONS = {
    errno.ENOSPC: "the disk is full",
    errno.EDQUOT: "the disk quota is exceeded",
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
}
_TEXT_REASONS = (  # (fragment of the driver's message, lower case) -> reason
    ("database or disk is full", "the disk is full"),
    ("no space left on device", "the disk is full"),
    ("readonly database", "the store is read-only"),
    ("read-only file system", "the file system is read-only"),
    ("unable to open database file", "the database file cannot be opened"),
    ("disk i/o error", "a disk I/O error"),
    ("max retries exceeded", "the tracking server is unreachable"),
    ("connection refused", "the tracking server is unreachable"),
    ("failed to establish a new connection", "the tracking server is unreachable"),
    ("remotedisconnected", "the tracking server closed the connection"),
    ("connection aborted", "the tracking server closed the connection"),
    ("read timed out", "the tracking server did not answer in time"),
    ("server closed the connection unexpectedly", "the database connection was lost"),
    ("terminating connection due to administrator command", "the database connection was lost"),
    ("connection to server at", "the database server is unreachable"),
    # MLflow's basic-auth app (mlflow server --app-name basic-auth) refusing the client
    ("error code 401 != 200", "the tracking server refused the credentials (HTTP 401)"),
    ("error code 403 != 200", "the tracking server's user lacks permission (HTTP 403)"),
)


def store_failure(exc: BaseException) -> tuple[str, str | None] | None:
    """(reason, path or None) if `exc` (or its cause) is a store-environment failure: a full
    or read-only disk, an unreachable server, a lost database connection. None otherwise."""
    seen: set[int] = set()
    node: BaseException | None = exc
    while node is not None and id(node) not in seen:
        seen.add(id(node))
        if isinstance(node, OSError) and node.errno in _OS_REASONS:
            return _OS_REASONS[node.errno], node.filename
        text = f"{type(node).__name__}: {node}".lower()
        for fragment, reason in _TEXT_REASONS:
            if fragment in text:
                return reason, None
        node = node.__cause__ or node.__context__
    return None


def _advice(reason: str) -> str:
    if "HTTP 401" in reason:
        return (
            "Set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD to an account of that "
            "server (README: scale out), then run the same command again."
        )
    if "HTTP 403" in reason:
        return (
            "Ask the server's admin for EDIT permission on the experiment (or MANAGE), or use "
            "an account that has it; nothing was written."
        )
    if "unreachable" in reason or "connection" in reason or "answer" in reason:
        return (
            "Check that the server is up and reachable, then run the same command again "
            "(a search resumes where it stopped)."
        )
    return (
        "Free some space or make it writable (or point --tracking-uri elsewhere), then run the "
        "same command again: the store is unchanged by the failed write, and the next start "
        "closes any run this one could not."
    )


class GuardedClient:
    """An MlflowClient whose store-environment failures become TrackingError (see above);
    every other exception (not found, already exists...) passes through unchanged."""

    def __init__(self, client: Any, display_uri: str, path: str | None) -> None:
        self._client = client
        self._display_uri = display_uri
        self._path = path

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._client, name)
        if not callable(attr):
            return attr

        @functools.wraps(attr)
        def call(*args: Any, **kwargs: Any) -> Any:
            with guard(self._display_uri, name, self._path):
                return attr(*args, **kwargs)

        return call


@contextmanager
def guard(display_uri: str, what: str, path: str | None = None) -> Iterator[None]:
    """Turn a store-environment failure inside the block into one TrackingError."""
    try:
        yield
    except TrackingError:
        raise
    except Exception as exc:
        found = store_failure(exc)
        if found is None:
            raise
        reason, where = found
        where = where or path
        at = f" at {where}" if where else ""
        raise TrackingError(
            f"tracking store {display_uri}: {what} failed: {reason}{at}. {_advice(reason)}"
        ) from None
