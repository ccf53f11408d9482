"""Errors the user can act on. Each message says what went wrong and what to do."""


class AssistantError(Exception):
    """Base class: a clear, user-facing message."""


class EmptyMessage(AssistantError):
    def __init__(self):
        super().__init__("The message is empty: type something to send.")


class AdapterLoadError(AssistantError):
    """An adapter directory that is missing, corrupt or incompatible with the base model."""


class AdapterWeightsDeleted(AdapterLoadError):
    """A version whose weights were deleted to save disk (learning.versions.prune_weights): its
    record stays, it can no longer be loaded."""


class ModelLoadError(AssistantError):
    pass


def is_disk_full(exc: BaseException | None) -> bool:
    """Did `exc` (or an exception it was raised from) come from a full disk? SQLite says
    "database or disk is full" (SQLITE_FULL), a file write ENOSPC; both are the user's disk, not
    a bug, and get their own answer (HTTP 507) rather than an internal error."""
    import errno
    import sqlite3

    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, sqlite3.OperationalError) and "disk is full" in str(exc):
            return True
        if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
            return True
        exc = exc.__cause__ or exc.__context__
    return False
