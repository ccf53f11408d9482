"""Keep what the base model knew: a distillation anchor on its own answers to generic prompts.

Fine-tuning a 135M model hard enough to learn a new fact in one cycle also moves it on
everything else (measured: "How many minutes are in an hour?" -> "24"; "What does CPU stand
for?" -> "Your Computer is called ..."). Mixing the base model's greedy answers into SFT
(`self-replay` rows) only pins the single most likely token at each position. The anchor pins
the base model's whole next-token distribution instead: before training, the base model (adapter
disabled) scores its own answers to the replay prompts and keeps its top-k next-token log-probs
at every answer position; during training, each step adds

    weight * mean over answer tokens of  -sum_b p_base(b) * log p_model(b)

over k+1 buckets b (the base's top-k tokens and "everything else"), on a small batch of those
answers: sparse forward-KL distillation, smallest exactly at the base model (the constant base
entropy is not subtracted). The base scores are computed once per cycle under `torch.no_grad` and take
rows x tokens x k floats (144 x 48 x 32 ~ 1 MB), so a step costs one extra small
forward/backward.
"""
import random

import torch


class DistillationAnchor:
    def __init__(self, model, tok, rows: list[dict], top_k: int = 32, batch_size: int = 4,
                 max_length: int = 128, seed: int = 0):
        self.batch_size, self.top_k = batch_size, top_k
        self.items = [self._tokenize(tok, r["messages"], max_length) for r in rows]
        self.items = [it for it in self.items if it["n_answer"] > 0]
        self.pad_id = tok.pad_token_id
        self.rng = random.Random(seed)
        self.order: list[int] = []
        self.tokens_seen = 0
        was_training = model.training
        model.eval()
        with torch.no_grad(), model.disable_adapter():
            for i in range(0, len(self.items), 8):
                chunk = self.items[i:i + 8]
                logp = self._answer_logprobs(model, chunk)
                for it, lp in zip(chunk, logp, strict=True):
                    top = lp.topk(top_k, dim=-1)
                    it["top_ids"], it["top_p"] = top.indices, top.values.exp()
                    it["tail_p"] = (1 - it["top_p"].sum(-1)).clamp(min=0)
        model.train(was_training)

    @staticmethod
    def _tokenize(tok, messages: list[dict], max_length: int) -> dict:
        prompt = tok.apply_chat_template(messages[:-1], add_generation_prompt=True, return_dict=True)["input_ids"]
        full = tok.apply_chat_template(messages, return_dict=True)["input_ids"][:max_length]
        return {"ids": full, "start": len(prompt), "n_answer": max(0, len(full) - len(prompt))}

    def _answer_logprobs(self, model, chunk: list[dict]) -> list[torch.Tensor]:
        """Per item: log-probs over the vocabulary at the positions that predict answer tokens."""
        width = max(len(it["ids"]) for it in chunk)
        device = next(model.parameters()).device
        ids = torch.tensor([it["ids"] + [self.pad_id] * (width - len(it["ids"])) for it in chunk], device=device)
        mask = torch.tensor([[1] * len(it["ids"]) + [0] * (width - len(it["ids"])) for it in chunk], device=device)
        logits = model(input_ids=ids, attention_mask=mask).logits
        # position t predicts token t+1: answer tokens start..end-1 are predicted at start-1..end-2
        return [logits[b, it["start"] - 1:len(it["ids"]) - 1].float().log_softmax(-1)
                for b, it in enumerate(chunk)]

    def _next_batch(self) -> list[dict]:
        if len(self.order) < self.batch_size:
            fresh = list(range(len(self.items)))
            self.rng.shuffle(fresh)
            self.order += fresh
        batch, self.order = self.order[:self.batch_size], self.order[self.batch_size:]
        return [self.items[i] for i in batch]

    def loss(self, model) -> torch.Tensor:
        """Cross-entropy of the model against the base model's top-k distribution on one batch."""
        batch = self._next_batch()
        logp = self._answer_logprobs(model, batch)
        total, count = 0.0, 0
        for it, lp in zip(batch, logp, strict=True):
            picked = lp.gather(-1, it["top_ids"].to(lp.device))
            tail = torch.log((1 - picked.exp().sum(-1)).clamp(min=1e-6))
            total = total - (it["top_p"].to(lp.device) * picked).sum() - (it["tail_p"].to(lp.device) * tail).sum()
            count += lp.shape[0]
            self.tokens_seen += len(it["ids"])
        return total / max(count, 1)

    def __len__(self) -> int:
        return len(self.items)
