"""One place for the train-to-serve wiring: the served model, the chat's reranker and the scope
that routes each prompt to a version, its experts, its habit adapter or the base weights.

Contract: `build_served(cfg, model=None, ...)` -> `Served(model, reranker, scope, memory)`, wired
as the chat wires them: the reranker is `rerank.chat_reranker(model, cfg)` (None with
`cfg.rerank` off) and the scope reranks with it. The server (assistant/runtime.py), the
learner's gate (learning/evaluate.py, learning/learner.py) and so the benchmarks route alike.
`model`: a ServedModel to reuse (default: `cfg.model` loaded, keeping at most `cfg.max_side_adapters`
experts and habit adapters); `embedder`: the scope's sentence embedder (default: the recall memory's,
else `make_embedder()` on first need); `scope`: an AdapterScope to reuse (given its reranker if it has
none); `open_memory(reranker)`: opens the recall memory with the reranker (the server's), whose
embedder the scope then shares.
"""
from dataclasses import dataclass
from typing import Callable

from assistant.model import ServedModel, resolve_model
from assistant.rerank import chat_reranker
from assistant.scope import AdapterScope


@dataclass
class Served:
    model: ServedModel
    reranker: object | None  # assistant/rerank.py ModelReranker; None: similarity alone
    scope: AdapterScope
    memory: object | None = None  # what `open_memory` opened


def build_served(cfg, model: ServedModel | None = None, *, embedder=None, scope: AdapterScope | None = None,
                 open_memory: Callable[[object | None], object | None] | None = None) -> Served:
    """The served model, its reranker and the scope, built as the chat builds them (module docstring)."""
    if model is None:
        model = ServedModel(resolve_model(cfg.model, cfg.models_dir), max_side_adapters=cfg.max_side_adapters)
    reranker = scope.reranker if scope is not None and scope.reranker is not None else chat_reranker(model, cfg)
    memory = open_memory(reranker) if open_memory is not None else None
    if embedder is None and memory is not None:
        embedder = memory.embedder
    if scope is None:
        # the embedding model is loaded on the first prompt that meets a scoped adapter
        scope = AdapterScope(embedder, reranker)
    else:
        scope.reranker = reranker
    return Served(model, reranker, scope, memory)
