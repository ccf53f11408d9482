"""Everything a running assistant holds, built once and shared by the UI, the API and the CLI:
configuration, the served model, recall memory and the chat service."""
import logging
from dataclasses import dataclass

from assistant.chat import ChatService
from assistant.config import Config
from assistant.model import ServedModel
from assistant.serving import build_served
from store import feedback, open_db
from store.conversations import NotFound

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
            self.memory.sync(self.db, wait_s=0, embed=True)  # busy building its index: the next recall syncs
        return fid

    def may_replace(self, feedback_id: str) -> list[dict]:
        """The earlier corrections the correction `feedback_id` may replace: those supersession by
        meaning could not decide and the one the corrected reply was answered from
        (assistant/supersede.py `may_replace`): for the user to confirm
        with `replace`. [] without a superseder, or when deciding fails (logged)."""
        if self.superseder is None:
            return []
        from assistant.supersede import may_replace

        try:
            found = may_replace(self.db, feedback_id, self.superseder)
        except Exception as e:  # noqa: BLE001 - only a suggestion: the correction is stored
            log.warning("could not tell what correction %s may replace: %s", feedback_id, e)
            return []
        return [{"feedback_id": c.id, "prompt": c.prompt, "correction": c.answer} for c in found]

    def replace(self, feedback_id: str, older_ids: list[str]) -> list[str]:
        """The user says the correction `feedback_id` replaces the earlier corrections `older_ids`:
        recorded as supersession by meaning would (recall, routing and training read it at once).
        Raises NotFound for an unknown correction, ValueError for one that is not live or not
        earlier. Returns every correction `feedback_id` now replaces."""
        from assistant.supersede import live_with_earlier

        known = {r["id"]: r for r in self.db.query(
            f"SELECT id, kind FROM feedback WHERE id IN ({','.join('?' * (len(older_ids) + 1))})",
            [feedback_id, *older_ids])}
        missing = [f for f in [feedback_id, *older_ids] if f not in known or known[f]["kind"] != "correction"]
        if missing:
            raise NotFound(f"no correction with id {missing[0]}")
        pending = live_with_earlier(self.db, feedback_id)
        if pending is None:
            raise ValueError(f"correction {feedback_id} was replaced or taken back: it replaces nothing")
        earlier = {c.id for c in pending[1]}
        stale = [f for f in older_ids if f not in earlier]
        if stale:
            raise ValueError(f"correction {stale[0]} is not a live correction made before {feedback_id}")
        feedback.supersede(self.db, older_ids, feedback_id)
        log.info("the user says correction %s replaces %s", feedback_id, ", ".join(older_ids))
        if self.memory is not None:
            self.memory.sync(self.db, wait_s=0)
        return feedback.replaced_by(self.db, feedback_id)


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
