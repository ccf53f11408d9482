"""Everything a running assistant holds, built once and shared by the UI, the API and the CLI:
configuration, the served model, recall memory and the chat service."""
import logging
from dataclasses import dataclass

from assistant.chat import ChatService
from assistant.config import Config
from assistant.model import ServedModel
from assistant.serving import build_served
from store import feedback, open_db

log = logging.getLogger(__name__)


@dataclass
class Runtime:
    cfg: Config
    model: ServedModel
    chat: ChatService
    memory: object | None = None
    superseder: object | None = None  # assistant/supersede.py; None: only the same question replaces

    @classmethod
    def create(cls, cfg: Config, model: ServedModel | None = None, memory=None,
               with_memory: bool = True) -> "Runtime":
        cfg.home.mkdir(parents=True, exist_ok=True)
        # recall opens with the chat's reranker, and the scope routes with recall's embedder
        open_memory = (lambda reranker: _open_memory(cfg, reranker)) if memory is None and with_memory else None
        served = build_served(cfg, model, embedder=None if memory is None else memory.embedder,
                              open_memory=open_memory)
        model, memory = served.model, served.memory if memory is None else memory
        chat = ChatService(cfg, model, memory, served.scope)
        superseder = None
        if memory is not None and cfg.supersede_by_meaning:
            from assistant.supersede import ModelJudge, Superseder

            superseder = Superseder(memory.embedder, ModelJudge(model, chat.system_prompt()))
        return cls(cfg=cfg, model=model, chat=chat, memory=memory, superseder=superseder)

    @property
    def db(self):
        return self.chat.db

    def record_feedback(self, turn_id: str, kind: str, *, reason: str | None = None,
                        correction: str | None = None) -> str:
        """Write a feedback fact (raises NotFound / ValueError) and let recall see a correction at once,
        with the earlier corrections it replaces (assistant/supersede.py) out of recall and routing."""
        fid = feedback.add_feedback(self.db, turn_id, kind, reason=reason, correction=correction)
        if kind == "correction" and self.superseder is not None:
            from assistant.supersede import supersede_by_meaning

            try:
                supersede_by_meaning(self.db, fid, self.superseder)
            except Exception as e:  # noqa: BLE001 - the correction is stored; only the same question replaces
                log.warning("could not decide what correction %s replaces: %s", fid, e)
        if kind == "correction" and self.memory is not None:
            self.memory.sync(self.db, wait_s=0)  # busy building its index: the next recall syncs
        return fid


def _open_memory(cfg: Config, reranker=None):
    """Recall memory is optional at run time: if the embedding model is missing, chat still works."""
    try:
        from assistant.memory import Memory
    except ImportError:
        return None
    try:
        memory = Memory(cfg, reranker=reranker)
        memory.sync(open_db(cfg.db_path))
        return memory
    except Exception as e:  # noqa: BLE001 - recall is a convenience, never a reason not to serve
        log.warning("recall memory unavailable: %s", e)
        return None
