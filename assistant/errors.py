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
