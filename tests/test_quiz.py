"""The self-quiz (learning/quiz.py): which answers become preference pairs, and the model is
left in the mode it was in. Generation is replaced by canned answers; the real generation path
(greedy_answers) is the one self-replay uses and is covered there."""
import learning.quiz as quiz
from learning.neighbours import split_rewrites


class Model:
    def __init__(self):
        self.training = True
        self.modes = []

    def eval(self):
        self.training = False
        self.modes.append("eval")

    def train(self, mode=True):
        self.training = mode
        self.modes.append("train" if mode else "eval")


def row(question, answer, fid="f1"):
    return {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": question},
                         {"role": "assistant", "content": answer}], "feedback_ids": [fid], "source": "neighbour"}


def test_answers_missing_the_fact_become_pairs(monkeypatch):
    rows = [row("Who gives me piano tuition?", "Your piano teacher is Mrs Abernethy."),
            row("Who is my piano instructor?", "Your piano teacher is Mrs Abernethy."),
            row("Give me a tip for a wet afternoon.", "Bake banana bread and watch an old film.", "f2")]
    asked = []

    def canned(model, tok, conversations, max_new_tokens, batch_size):
        asked.extend(c[-1]["content"] for c in conversations)
        assert not model.training  # answers come from the model in eval mode
        return ["Your child attends Elmwood Primary School.", "Mrs abernethy teaches you."]

    monkeypatch.setattr(quiz, "greedy_answers", canned)
    model = Model()
    pairs = quiz.quiz_pairs(model, None, rows)
    # the advice row tells no name or number: it is not asked at all
    assert asked == ["Who gives me piano tuition?", "Who is my piano instructor?"]
    assert pairs == [{"prompt": rows[0]["messages"][:2], "chosen": [rows[0]["messages"][2]],
                      "rejected": [{"role": "assistant", "content": "Your child attends Elmwood Primary School."}],
                      "feedback_ids": ["f1"], "source": "quiz"}]
    assert model.training  # back in training mode for DPO


def test_nothing_to_ask_generates_nothing(monkeypatch):
    monkeypatch.setattr(quiz, "greedy_answers", lambda *a, **k: (_ for _ in ()).throw(AssertionError("asked")))
    assert quiz.quiz_pairs(Model(), None, [row("How do I keep basil fresh?", "In water, on the sill.")]) == []


def test_split_rewrites_holds_out_each_corrections_tail():
    rows = [row("a1", "A", "f1"), row("a2", "A", "f1"), row("a3", "A", "f1"), row("b1", "B", "f2")]
    trained, held_out = split_rewrites(rows, 2)
    assert [r["messages"][1]["content"] for r in trained] == ["a1", "a2", "b1"]
    assert [r["messages"][1]["content"] for r in held_out] == ["a3"]
    assert split_rewrites(rows, 0) == ([], rows)
