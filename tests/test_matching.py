"""The one matcher of recall and routing (assistant/matching.py): the key index, the policy, the
guards in one place. Stand-in vectors, so each case says exactly which similarity it sets up;
tests/test_memory.py runs the shipped policy against the real MiniLM."""
import numpy as np
import pytest

from assistant.matching import (
    RECALL_POLICY,
    ROUTING_POLICY,
    KeyIndex,
    MatchPolicy,
    SameThing,
    allowed,
    asked,
    learned,
    unit_rows,
)


class Ordinary:
    """OrdinaryRequests at a fixed similarity."""

    def __init__(self, similarity: float):
        self.value = similarity

    def relevant(self, scores, query, threshold, margin):
        scores = np.asarray(scores)
        return scores >= threshold if margin is None else (scores >= threshold) | (scores - self.value >= margin)


class Phrases:
    """Phrase vectors by a table: equal phrases 1.0, a listed pair its value, others 0."""

    def __init__(self, close: dict[frozenset, float]):
        self.close, self.slots = close, {}

    def encode(self, texts):
        out = np.zeros((len(texts), 64), dtype=np.float32)
        for i, t in enumerate(texts):
            out[i, self.slots.setdefault(t, len(self.slots))] = 1.0
            for pair, sim in self.close.items():
                if t in pair:  # a shared direction worth `sim` of the pair's cosine once normalised
                    out[i, 63] = np.sqrt(sim / (1 - sim))
        return out


def index_of(sims: list[float], sources: list, owners: list | None = None) -> tuple[KeyIndex, np.ndarray]:
    """Keys at the given similarities to the query (unit vectors in 2-D)."""
    keys = unit_rows(np.array([[s, np.sqrt(max(1 - s * s, 0.0))] for s in sims]))
    return KeyIndex(keys, owners or list(range(len(sims))), sources), np.array([1.0, 0.0], dtype=np.float32)


def test_the_policies_hold_every_number_in_one_place():
    assert RECALL_POLICY.threshold == 0.45 and ROUTING_POLICY.threshold == 0.5
    assert RECALL_POLICY.relative_margin == ROUTING_POLICY.relative_margin == 0.1
    assert RECALL_POLICY.same_thing == ROUTING_POLICY.same_thing == 0.45
    assert RECALL_POLICY.fit_tolerance == ROUTING_POLICY.fit_tolerance == 2.25
    with pytest.raises(ValueError, match=r"fit_tolerance must be >= 0 \(got -1\)"):
        MatchPolicy(fit_tolerance=-1)
    with pytest.raises(AttributeError):
        RECALL_POLICY.threshold = 0.3  # frozen: a bench or a test makes its own, never edits the shipped one


def test_candidates_are_the_best_key_of_each_owner_above_the_threshold_best_first():
    general = learned("What is the capital of France?")
    index, query = index_of([0.9, 0.7, 0.6, 0.3], [general] * 4, owners=["a", "b", "a", "c"])
    found = index.candidates("What is the capital of France?", query, MatchPolicy(threshold=0.5, relative_margin=None),
                             Ordinary(0.0), None)
    assert [(c.owner, c.key) for c in found] == [("a", 0), ("b", 1)]
    assert found[0].score == pytest.approx(0.9)
    first = index.candidates("What is the capital of France?", query, MatchPolicy(threshold=0.5, relative_margin=None),
                             Ordinary(0.0), None, limit=1)
    assert [(c.owner, c.key) for c in first] == [("a", 0)]  # the guards stop once the top k are found


def test_a_weaker_key_counts_when_clearly_nearer_than_ordinary_requests():
    index, query = index_of([0.4], [learned("Who is my piano teacher?")])
    policy = MatchPolicy(threshold=0.5, relative_margin=0.1)
    assert index.candidates("Who is my piano teacher now?", query, policy, Ordinary(0.25), None)
    assert not index.candidates("Who is my piano teacher now?", query, policy, Ordinary(0.35), None)


def test_the_guards_keep_a_personal_correction_from_a_general_question():
    mine = learned("What is my blood type?", "Your blood type is O negative.")
    policy = MatchPolicy(same_thing=None)
    assert allowed(asked("What's my blood group?"), mine, None, policy)
    assert not allowed(asked("What is the most common blood type?"), mine, None, policy)
    assert allowed(asked("Is O negative rare?"), mine, None, policy)  # names what it told
    assert not allowed(asked("How do I find out my blood type?"), mine, None, policy)  # asks a way


def test_the_same_thing_check_tells_the_users_things_apart_by_their_phrases():
    things = SameThing(Phrases({frozenset({"wife", "spouse"}): 0.8}))
    cat = learned("What is my cat's name?", "Your cat is called Pemberton.")
    wife = learned("What is my wife's name?", "Your wife is named Oona.")
    policy = MatchPolicy(same_thing=0.45)
    assert allowed(asked("What do I call my cat?"), cat, things, policy)  # the same phrase
    assert allowed(asked("Tell me my spouse's name."), wife, things, policy)  # 0.8
    assert not allowed(asked("What's my wife called?"), cat, things, policy)  # 0.0
    assert allowed(asked("Who am I married to?"), cat, things, policy)  # names nothing: not checked
    assert allowed(asked("What's my wife called?"), cat, things, MatchPolicy(same_thing=None))


def test_a_thing_of_the_users_own_must_be_among_a_learned_question_that_names_none():
    """MatchPolicy.same_thing_words: "Who do I report to now?" names no thing of the user's own,
    so "my therapist" is compared with its question's and answer's words instead."""
    things = SameThing(Phrases({frozenset({"boss", "report"}): 0.5}))
    manager = learned("Who do I report to now?", "Since the reorganisation you report to Declan Moore.")
    policy = MatchPolicy(same_thing=0.45, same_thing_words=0.4)
    assert not allowed(asked("Who is my therapist?"), manager, things, policy)  # 0.0 to every word
    assert allowed(asked("Who is my boss?"), manager, things, policy)  # 0.5 to "report"
    assert allowed(asked("What is my reorganisation date?"), manager, things, policy)  # a word of the answer
    assert allowed(asked("Who do I report to?"), manager, things, policy)  # names nothing: not checked
    assert allowed(asked("Who is my therapist?"), manager, things, MatchPolicy(same_thing_words=None))


def test_a_replaced_questions_things_count_as_the_replacements_own():
    car = learned("Which car do I own now?", "You own a green Volvo.", also_named=("What colour is my car?",))
    assert car.owned == ("car",) and learned("Which car do I own now?").owned == ()


def test_a_question_naming_a_name_matches_only_what_mentions_it():
    """MatchPolicy.same_names: "Fixed 24" and "Warm Home Discount" are named by no word of the
    Sunny Export correction, so a question naming them is about something else of the company."""
    export = learned("What does the Sunny Export tariff pay for solar power?", "Sunny Export pays 15p per kWh exported.")
    policy = MatchPolicy(same_thing=None)
    assert allowed(asked("How much does Sunny Export pay per exported kWh?"), export, None, policy)
    assert allowed(asked("What do I get paid for solar power I export?"), export, None, policy)  # "I" names nothing
    assert allowed(asked("Is it 15p per unit?"), export, None, policy)  # its answer told it
    assert allowed(asked("Does Sunny Export pay on Saturdays in March?"), export, None, policy)  # calendar words
    assert not allowed(asked("How much does a kWh cost on Fixed 24?"), export, None, policy)
    fixed = learned("What is the unit rate on the Fixed 24 tariff?", "Fixed 24 costs 24.5p per kWh.")
    assert allowed(asked("Is the Sunny Export rate the same as Fixed 24's?"), fixed, None, policy)  # names both
    # a name only the asked question uses, against a question that names nothing: the company the
    # user adds ("... at Solara?") to a correction that never said it
    refund = learned("How long is the refund window for smart meters?", "Smart meter refunds: 30 days.")
    assert allowed(asked("How long is the refund window for Solara smart meters?"), refund, None, policy)
    assert allowed(asked("How much does a kWh cost on Fixed 24?"), export, None, MatchPolicy(same_thing=None,
                                                                                           same_names=False))


def test_a_correction_is_linked_to_those_that_told_the_names_its_question_uses():
    from assistant.matching import Link, linked, linked_keys, naming_links

    pairs = [("What is the cheapest plan called?", "The cheapest plan is called Spark 30."),
             ("How fast is Spark 30?", "Spark 30 gives up to 30 Mbit/s."),
             ("What company is this?", "This is Spark Broadband."),  # tells "Spark" too, fewer of the words
             ("Where does Ingrid live?", "Ingrid lives in Tromsø."),  # no correction told "Ingrid"
             ("What is my sister's name?", "Your sister is Ingrid."),
             ("What does broadband cost now?", "From May, Spark 30 costs 25 euros."),  # says something else of it
             ("What is the helpline for Ember EV?", "Call 0800 123 456."),
             ("What is my membership number?", "Your membership number is EV-24245.")]  # a code's letters name nothing
    assert naming_links(pairs) == [[], [0], [], [4], [], [], [], []]
    key, pair = linked(*pairs[1], *pairs[0])
    assert key == "How fast is the cheapest plan?"
    assert pair == ("How fast is the cheapest plan?", "The cheapest plan is called Spark 30. Spark 30 gives up to 30 Mbit/s.")
    links = linked_keys(pairs)  # what recall and routing read: the same, with the naming correction
    assert links[1] == [Link(key, pair, pairs[0])] and links[3] == [Link(*linked(*pairs[3], *pairs[4]), pairs[4])]
    assert sum(map(len, links)) == 2
    assert linked_keys([pairs[0], (pairs[1][0], None)]) == [[], []]  # an answer unknown (an old version's expert)


def test_a_question_linked_to_one_about_the_user_is_about_the_user_and_its_name_counts_as_told():
    through = (("What is my sister's name?", "Your sister is Ingrid."),)
    source = learned("Where does Ingrid live?", "Ingrid lives in Tromsø.", through=through)
    plain = learned("Where does Ingrid live?", "Ingrid lives in Tromsø.")
    assert (source.personal, plain.personal) == (True, False)
    assert "ingrid" in source.told and "ingrid" not in plain.told
    assert "sister" in source.owned
    assert allowed(asked("Where does Ingrid live now?"), source, None, RECALL_POLICY)  # names her: about her
    assert not allowed(asked("Where do sisters usually live?"), source, None, RECALL_POLICY)  # general
