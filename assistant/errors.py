"""Errors the user can act on. Each message says what went wrong and what to do."""


class AssistantError(Exception):
    """Base class: a clear, user-facing message."""


class EmptyMessage(AssistantError):
    def __init__(self):
        super().__init__("The message is empty: type something to send.")


class UnstorableText(AssistantError):
    """Text with a NUL or a lone UTF-16 surrogate: refused with the reason (see `storable_problem`)."""


class TurnNotSaved(AssistantError):
    """The reply was generated (it is in the turn) but saving it failed; `__cause__` says why
    (a full disk: `is_disk_full`). Raised by ChatService.pieces after the last piece."""

    def __init__(self, turn, cause: BaseException):
        super().__init__(f"The reply was generated but could not be saved: {cause}")
        self.turn = turn


def storable_problem(text: str) -> str | None:
    """Why `text` cannot be stored, or None. A NUL ends C strings (and is never meant in chat), and
    a lone surrogate such as the JSON escape "\\ud800" has no UTF-8 form, so SQLite cannot store it:
    both are refused with the reason rather than stored or failing later."""
    if "\x00" in text:
        return "the text contains a NUL character (\\u0000), which is not accepted: remove it"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        return (f"the text contains a lone UTF-16 surrogate ({text[e.start]!r} at character {e.start}), "
                "which is not valid Unicode: send the whole character")
    return None


class AdapterLoadError(AssistantError):
    """An adapter directory that is missing, corrupt or incompatible with the base model."""


class AdapterWeightsDeleted(AdapterLoadError):
    """A version whose weights were deleted to save disk (learning.pruning.prune_weights): its
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
