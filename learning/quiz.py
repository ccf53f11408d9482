"""Self-quiz: the candidate is asked each corrected fact in words it was NOT trained on, right
after SFT, and every answer that misses the fact becomes a preference pair for DPO.

The original DPO pairs push away from the base model's first answer, which is rarely the
mistake a trained adapter makes. What it does get wrong on our dev scenario is another taught
fact's answer ("Who gives me piano lessons?" -> "Your child attends Elmwood Primary School."):
those are exactly the answers the quiz collects as `rejected`, with the correction as `chosen`.

The questions are word-neighbour rewrites of the corrected prompts (learning/neighbours.py,
held out of SFT), so nothing comes from a test set. An answer counts as right when it names
something the correction told (assistant/memory.py `told_words`: its names and numbers);
corrections that tell none (style, advice) are not quizzed.
"""
from assistant.memory import told_words, words
from learning.augment import greedy_answers


def quizzable(rows: list[dict]) -> list[dict]:
    """The rows whose answer tells a name or number their question does not have."""
    return [r for r in rows if told_words(r["messages"][-2]["content"], r["messages"][-1]["content"])]


def quiz_pairs(model, tok, rows: list[dict], max_new_tokens: int = 24, batch_size: int = 8) -> list[dict]:
    """Greedy answers of `model` (as it is: the caller picks the adapter) to the questions of
    `rows`; a preference pair (correction over the answer) for each answer that names nothing
    the correction told. Each pair keeps its row's feedback ids."""
    rows = quizzable(rows)
    if not rows:
        return []
    was_training = model.training
    model.eval()
    try:
        answers = greedy_answers(model, tok, [r["messages"][:-1] for r in rows], max_new_tokens, batch_size)
    finally:
        model.train(was_training)
    pairs = []
    for row, answer in zip(rows, answers, strict=True):
        *prompt, correction = row["messages"]
        told = told_words(prompt[-1]["content"], correction["content"])
        if answer and not (words(answer) & told):
            pairs.append({"prompt": prompt, "chosen": [correction],
                          "rejected": [{"role": "assistant", "content": answer}],
                          "feedback_ids": row.get("feedback_ids", []), "source": "quiz"})
    return pairs
