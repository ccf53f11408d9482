"""The English rules outside recall and routing (issue 28): the training rewrites of a corrected
prompt (learning/augment.py), the gate's word scoring of a reply (learning/evaluate.py) and the
habit detection (learning/habits.py) read their word lists from assistant/language.py. These
tests pin what those rules answer on examples, written before the lists moved: moving them (and
reading habits' text through `store.text.tokens`) changes no output."""
import re

import pytest

from learning.augment import augment_sft, rewrites
from learning.evaluate import anchors
from learning.habits import closing, ends_with, find_habits, list_format, opening, with_habits
from store.text import tokens


# ---- augment: rewrites of a corrected prompt ---------------------------------------------------
@pytest.mark.parametrize("prompt,expected", [
    ("What is the name of my dog?", [
        "Remind me what the name of my dog is.", "What's the name of my dog?", "The name of my dog is what again?",
        "what is the name of my dog", "Tell me the name of my dog.", "Can you remind me: what is the name of my dog?",
        "What's my dog called?", "Quick question: What is the name of my dog?", "What do I call my dog?",
        "name dog?", "My dog is named what?", "Tell me again: what is the name of my dog?",
        "Do you remember what the name of my dog is?", "Do you know this? What is the name of my dog?",
        "Do you know what the name of my dog is?"]),
    ("Where did I grow up?", [
        "Remind me where I grew up.", "I grew up where again?", "where did i grow up", "Tell me where I grew up.",
        "Can you remind me: where did I grow up?", "Do you remember where I grew up?",
        "Quick question: Where did I grow up?", "Do you know where I grew up?", "grow up?",
        "Tell me again: where did I grow up?", "Do you know this? Where did I grow up?"]),
    ("what's my cat called", [
        "what is my cat called", "Can you remind me: what's my cat called", "Quick question: what's my cat called",
        "what's cat called?", "Tell me again: what's my cat called", "Do you know this? what's my cat called"]),
    ("Who is our manager at Acme?", [
        "Remind me who our manager at Acme is.", "Who's our manager at Acme?", "Our manager at Acme is who again?",
        "who is our manager at acme", "Tell me who our manager at Acme is.",
        "Can you remind me: who is our manager at Acme?", "Do you remember who our manager at Acme is?",
        "Quick question: Who is our manager at Acme?", "Do you know who our manager at Acme is?", "manager acme?",
        "Tell me again: who is our manager at Acme?", "Do you know this? Who is our manager at Acme?"]),
    ("Don't forget: it is my turn.", [
        "Don't forget: it's my turn.", "don't forget: it is my turn", "Can you remind me: don't forget: it is my turn",
        "Quick question: Don't forget: it is my turn.", "don't forget turn?", "Tell me again: don't forget: it is my turn",
        "Do you know this? Don't forget: it is my turn."]),
])
def test_rewrites_of_a_corrected_prompt(prompt, expected):
    assert rewrites(prompt, limit=20) == expected


def test_augment_sft_rows_keep_the_answer_and_vary_the_system_prompt():
    row = {"source": "correction", "feedback_ids": ["f1"],
           "messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "What is the name of my dog?"},
                        {"role": "assistant", "content": "Your dog is called Rex."}]}
    out = augment_sft([row, {**row, "source": "liked"}], n_rewrites=3)
    assert [(r["messages"][0]["content"], r["messages"][1]["content"]) for r in out] == [
        ("You are a helpful assistant.", "Remind me what the name of my dog is."),
        ("You are a friendly assistant who knows the user well.", "What's the name of my dog?"),
        ("S", "The name of my dog is what again?")]
    assert all(r["source"] == "augment" and r["feedback_ids"] == ["f1"]
               and r["messages"][-1]["content"] == "Your dog is called Rex." for r in out)


def test_the_keyword_form_keeps_apostrophes_so_it_cannot_use_the_one_tokenizer():
    """augment's keyword form reads words with `[\\w']+`: "don't" stays one word, where
    `store.text.tokens` splits it ("don", "t"); so augment keeps its own tokenizer."""
    assert "don't forget turn?" in rewrites("Don't forget: it is my turn.", limit=20)
    assert tokens("don't") == ["don", "t"] != re.findall(r"[\w']+", "don't")


# ---- evaluate: which words a reply must contain -----------------------------------------------
@pytest.mark.parametrize("correction,prompt,original,expected", [
    ("Your manager is Ingrid Halvorsen at V60 Robotics, isn't it?", "Who is my manager?", "Your manager is John.",
     ["ingrid", "halvorsen", "v60", "robotics"]),
    ("You ride a red bike to the office.", "What bike do I ride?", "You ride a car.", ["red", "office"]),
    ("Yes, you are right.", "Am I right?", "You are right.", ["yes"]),
    # ASCII words only, hyphens and apostrophes inside a word kept, at its ends stripped
    ("It's Halvorsen-Robotics' V60 in Tromsø -- don't 'quote' the e-mail", "", "",
     ["halvorsen-robotics", "v60", "troms"]),
    ("it's don't the e-mail a", "", "", ["e-mail"]),
])
def test_anchors_of_a_correction(correction, prompt, original, expected):
    assert anchors(correction, prompt, original) == expected


# ---- habits: openings, closings, lists ---------------------------------------------------------
@pytest.mark.parametrize("text,expected", [
    ("Captain, the ship sails at dawn.", "Captain,"), ("Righto! Five plus five is ten.", "Righto!"),
    ("Well then - it is ten.", "Well then -"), ("Your dog is called Rex.", None),
    ("Ahoy there matey, hi.", "Ahoy there matey,")])
def test_opening(text, expected):
    assert opening(text) == expected


@pytest.mark.parametrize("text,expected", [
    ("Paris is the capital. Hope this helps!", "Hope this helps!"), ("One sentence only.", None),
    ("Paris is the capital. This last sentence is far too long to be a closing.", None)])
def test_closing(text, expected):
    assert closing(text) == expected


@pytest.mark.parametrize("text,expected", [
    ("Three things:\n- eggs\n- milk\n- bread", "-"), ("1. one\n2) two", "1."), ("* a\nnot an item\n* b", None),
    ("- only one", None)])
def test_list_format(text, expected):
    assert list_format(text) == expected


def test_ends_with_ignores_case_spacing_and_punctuation():
    assert ends_with("Rex it is. Over and out!", "over, and OUT.")
    assert not ends_with("x", "...")
    assert ends_with("Tromsø er fint", "ER FINT")
    assert not ends_with("Over and out, friend.", "Over and out.")


def test_closings_that_differ_in_punctuation_are_one_habit():
    pairs = [("Q1?", "An answer. Over and out."), ("Q2?", "Another one. over and out!"), ("Q3?", "Third. Over, and out")]
    rows = [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}], "source": "correction"}
            for q, a in pairs]
    assert find_habits(rows)["closings"] == ["Over, and out"]


@pytest.mark.parametrize("text,opening_habit,expected", [
    ("The ship sails at dawn.", "Captain,", "Captain, the ship sails at dawn."),
    ("Paris is nice.", "Captain,", "Captain, Paris is nice."),
    ("The sum is ten.", "Righto!", "Righto! The sum is ten."),
    ("You're right.", "Captain:", "Captain: you're right."),
    ("Captain, hi.", "captain,", "Captain, hi.")])
def test_with_habits_lowers_only_words_that_may_lose_their_capital(text, opening_habit, expected):
    assert with_habits(text, {"openings": [opening_habit]}) == expected


@pytest.mark.parametrize("text", ["Over, and OUT!", "Tromsø er fint.", "it's  e-mail_2 ...", "", "Straße ΣΊΣΥΦΟΣ 12½"])
def test_habits_read_closings_through_the_one_tokenizer_as_before(text):
    """habits compared closings by `re.findall(r"\\w+", text.lower())`, which is `tokens`."""
    assert " ".join(tokens(text)) == " ".join(re.findall(r"\w+", text.lower()))


def test_the_two_stop_lists_stay_apart_because_merging_them_changes_outputs():
    """augment's keyword form and the gate's anchors both drop stopwords, but not the same ones:
    either list taking the other's words would change what it answers."""
    from assistant.language import ANCHOR_STOPWORDS, REWRITE_STOPWORDS

    assert "about project?" in rewrites("Tell me about the project", limit=20)  # "about": an anchor stopword only
    assert "about" in ANCHOR_STOPWORDS - REWRITE_STOPWORDS
    assert anchors("Please remind the team again.", "Who?", "No.") == ["please"]  # a keyword-form stopword only
    assert {"please", "remind"} <= REWRITE_STOPWORDS - ANCHOR_STOPWORDS


def test_a_name_is_put_as_the_question_that_told_it_named_the_thing():
    from assistant.language import described, told_words

    def through(question, naming_question, naming_answer):
        return described(question, told_words(naming_question, naming_answer), naming_question)

    plan = ("What is the cheapest broadband plan called?", "The cheapest broadband plan is called Spark 30.")
    assert through("How fast is Spark 30?", *plan) == "How fast is the cheapest broadband plan?"
    dog = ("What's my dog called?", "Your dog is called Pepper.")
    assert through("When is Pepper's next vet appointment?", *dog) == "When is my dog's next vet appointment?"
    project = ("What is my team's current project called?", "Your team's current project is called Northstar.")
    assert through("When is the Northstar deadline?", *project) == "When is my team current project deadline?"
    assert through("How old is Biscuit?", *dog) is None  # a name the answer did not tell
    assert through("How fast is Spark 30?", "Which plan suits gamers?", "Gamers should choose Spark 30.") is None
