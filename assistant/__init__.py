"""The chat half of the personal assistant: model serving, chat, memory, UI, API and CLI."""
import os

# Gradio reports usage to its makers unless told not to, and reads this once, when it is first
# imported: set here, before any module of ours can import it. A personal assistant contacts no
# third party; the Blocks also say analytics_enabled=False (assistant/ui.py).
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"

__version__ = "0.1.0"
