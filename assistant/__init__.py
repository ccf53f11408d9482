"""The chat half of the personal assistant: model serving, chat, memory, UI, API and CLI."""
__version__ = "0.1.0"
