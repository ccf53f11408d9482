"""The project's English rules, in one place. Most answer: may something learned from one
question answer another? Recall (assistant/memory.py) and expert routing (assistant/scope.py) both
apply those through `assistant/matching.py`. The rest are the word lists the learner reads text by
(the training rewrites, the gate's word scoring, the habits; "Rules the learner applies" below).
The question grammar (a question's reframings: wh-question patterns, irregular pasts, naming
verbs) lives in assistant/questions.py, which recall and training share.

Contract: constants and pure functions of text, no model, no state. One tokenizer
(`store.text.tokens`, the one the store's same-question key uses too) except where a rule's
output depends on another one (`SCORING_WORD`; augment's keyword form, see REWRITE_STOPWORDS).
Each rule names what it is for and the dev-set measurement that keeps it, or says none is recorded.
Matching's rules:
- `about_user` (FIRST_PERSON): a correction of a question about the user answers only questions
  about the user, or ones naming something it told (`told_words`). Kept by
  bench/results/memory.dev-confusable.md (general questions on the user's topics).
- `asks_way` (HOW_QUANTITIES, ADVICE_MODALS, ADVICE_SUBJECTS): a question asking how, or what to
  do, is not answered by a fact. Kept by bench/results/routing-before-advice.md against routing.md.
- `referred` / `named_things` (REFERRING, NAMING_DETERMINERS, GENERIC_MODIFIERS, PHRASE_ENDS): a
  question naming the user's thing with "the" ("the family boat") may reach what the user taught
  about it. Kept by bench/results/routing-refers.md against routing-before-refers.md.
- `owned_things` (OWNING_DETERMINERS): the things a question names as the user's ("my wife", "our
  boat"), which matching compares by the embedder (matching.SameThing). Kept by
  bench/results/routing-things.md against routing-things-before.md. Where a learned question
  names none, the asked one's thing is compared with its words but THING_STOPWORDS (matching
  `SameThing.among`). Kept by bench/results/routing-thingwords-0.4.md against -off.md.
- `split_at_told` / `split_at_new_word` (LEAD_FRAME_WORDS): where a recalled answer's reply lead
  ends. Kept by bench/results/memory.dev-leadcontent-*.md.
The measurements behind each rule are in bench/HISTORY.md ("Language rules").
Rules the learner applies (learning/augment.py, learning/evaluate.py, learning/habits.py):
REWRITE_TEMPLATES, CONTRACTIONS, REWRITE_STOPWORDS; ANCHOR_STOPWORDS, SCORING_WORD
(`scoring_words`); MAY_LOSE_CAPITAL; SENTENCE_END (shared with `naming`). The stop lists
(REWRITE_STOPWORDS, ANCHOR_STOPWORDS, LEAD_FRAME_WORDS) serve different rules and hold different
words; merging any two would change an output (tests/test_language.py), so each stays its own.
"""
import calendar
import re
from collections.abc import Set as AbstractSet

from store.text import tokens

FIRST_PERSON = frozenset("i me my mine myself we us our ours ourselves".split())
HOW_QUANTITIES = frozenset("many much old tall big large long far heavy".split())  # "how many" asks a quantity
ADVICE_MODALS = frozenset("should shall ought can could".split())
ADVICE_SUBJECTS = frozenset("i we my our".split())  # "Should I ...?" asks what to do; "Can you ...?" does not
# Words that frame an answer rather than tell something ("Your cat is called ...").
LEAD_FRAME_WORDS = frozenset(
    "a an the is are was were am be been being has have had do does did you your yours i my me we our us "
    "it its this that these those of to in on at for by as with from and or s called named name yes no".split())
# A capitalised function word ("The" of "The Paper Kites") is not something an answer told.
FUNCTION_WORDS = LEAD_FRAME_WORDS - {"called", "named", "name", "yes", "no"}
REFERRING = frozenset({"the"})
NAMING_DETERMINERS = frozenset({"my", "our", "the"})
OWNING_DETERMINERS = frozenset({"my", "our", "your"})
WH_KINDS = {"who": "who", "whom": "who", "whose": "who", "when": "when", "where": "where", "why": "why",
            "how": "how", "what": "what", "which": "what"}
# Words that are no thing a question or answer is about (frame words, question words, first
# person): the same-thing check compares a question's own thing with a learned question's and
# answer's other words where that question names none of its own (matching.SameThing).
THING_STOPWORDS = LEAD_FRAME_WORDS | FIRST_PERSON | frozenset(WH_KINDS)
TIME_NOUNS = frozenset("time date day hour year month week".split())
NAME_WORDS = frozenset({"name", "called", "named"})
DO_FORMS = frozenset({"do", "does", "did"})
# A phrase that picks one out of a kind speaks of the kind ("the most common blood type").
GENERIC_MODIFIERS = frozenset("most least best worst common typical average usual normal ideal standard".split())
# Where a named thing's phrase ends: function words (not the "s" of a possessive, "car's
# registration number"), the words that ask for a name, question words and prepositions.
PHRASE_ENDS = (FUNCTION_WORDS - {"s"}) | NAME_WORDS | set(WH_KINDS) | set(
    "about into over under near after before during up down out off".split())
# Where a sentence ends: after . ! or ?, at the space that follows (`naming`; habits.closing).
SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
CALENDAR_NAMES = frozenset(n.lower() for n in (*calendar.day_name, *calendar.day_abbr, *calendar.month_name,
                                               *calendar.month_abbr) if n)

# ---- Rules the learner applies ---------------------------------------------------------------
# Training rewrites of a corrected prompt (learning/augment.py `rewrites`, the surface ones).
# Measured only together with the other rewrites, not list by list: on the dev scenario nine
# rewrites with reframings 39/48 paraphrases, six surface-only 30/48, four 27/48 (bench/README.md
# "Paraphrases"; bench/HISTORY.md "One learning cycle": 25/36 and 18/36).
REWRITE_TEMPLATES = ("Can you remind me: {q}", "Quick question: {q}", "Do you know this? {q}", "Tell me again: {q}")
# The first of these a prompt has is swapped, long form for short or back ("what is" <-> "what's").
CONTRACTIONS = (("what is", "what's"), ("who is", "who's"), ("where is", "where's"), ("when is", "when's"),
                ("how is", "how's"), ("it is", "it's"), ("do not", "don't"))
# Words the keyword form drops ("What is the name of my dog?" -> "name dog?"). That form reads
# words with `[\w']+`, not `store.text.tokens`: it keeps "don't" one word ("don't forget turn?"),
# where tokens splits it into "don", "t" (tests/test_language.py).
REWRITE_STOPWORDS = frozenset("a an the is are was were do does did i my me our we you your of to in on at for "
                              "what which who whom where when how can could would should please tell remind again "
                              "it its this that".split())

# The gate's word scoring (learning/evaluate.py `anchors`): the words a correction's anchors never
# are. No dev-set measurement recorded; the gate's and benchmarks' taught/retention counts
# depend on it, so it stays as it is.
ANCHOR_STOPWORDS = frozenset("""
a about above after again against all am an and any are as at be because been before being
below between both but by can could did do does doing down during each few for from further
had has have having he her here hers herself him himself his how i if in into is it its itself
just me more most my myself no nor not now of off on once only or other our ours ourselves out
over own same she should so some such than that the their theirs them themselves then there
these they this those through to too under until up very was we were what when where which
while who whom why will with would you your yours yourself yourselves called named name is
it's i'm you're don't can't won't let's also get got one
""".split())
# A scored word: ASCII letters and digits, with inner apostrophes and hyphens ("e-mail", "it's";
# "Tromsø" -> "Troms"). Not `store.text.tokens`: the benchmarks' figures are scored by it. No
# dev-set measurement recorded.
SCORING_WORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9'\-]*")

# Words that may lose their capital after a habit's opening ("Captain, the ..."; learning/habits.py
# `with_habits`); names keep theirs. No dev-set measurement recorded.
MAY_LOSE_CAPITAL = frozenset("a an the it it's its this that these those there here to you you're your yes no "
                             "in on at for when if first try keep use make start".split())


def words(text: str) -> set[str]:
    """Lower-case words ("Ingrid's" -> "ingrid", "s")."""
    return set(tokens(text))


def about_user(text_words: set[str]) -> bool:
    """Does a question with these words ask about the user (a first-person word)?"""
    return bool(text_words & FIRST_PERSON)


def told_words(prompt: str, answer: str) -> set[str]:
    """The names and numbers an answer told beyond its question ("Your sister Ingrid's birthday
    is on 14 March." -> ingrid, 14, march): `naming` words except FUNCTION_WORDS. Plain words
    ("called", "negative") would let any general question through."""
    return naming(prompt, answer) - FUNCTION_WORDS


def naming(prompt: str, answer: str) -> set[str]:
    """The words of `answer` not in `prompt` with a capital not opening a sentence, or a digit."""
    return _marked(answer, digits=True) - words(prompt)


def names(text: str) -> set[str]:
    """The names a text uses: words with a capital not opening a sentence ("How much does a kWh
    cost on Fixed 24?" -> fixed), not "I" and not the calendar's day and month names, which
    English capitalises without naming a thing ("Is the centre open on Saturday?"). Numbers are
    not names here: a question often checks a value ("Is the refund window 30 days?")."""
    return {w for w in _marked(text, digits=False) - FUNCTION_WORDS - FIRST_PERSON
            if w not in CALENDAR_NAMES and w.removesuffix("s") not in CALENDAR_NAMES}  # "Saturdays" too


def _marked(text: str, digits: bool) -> set[str]:
    found = set()
    for sentence in SENTENCE_END.split(text or ""):
        for i, w in enumerate(re.findall(r"\w+", sentence)):
            if (digits and any(c.isdigit() for c in w)) or (i and w[0].isupper()):
                found.add(w.lower())
    return found


def may_answer(asked: AbstractSet[str], personal: bool, told: AbstractSet[str], other_kind: bool = False,
               refers: bool = False) -> bool:
    """The FIRST_PERSON guard: may something learned from a question (about the user or not,
    having told `told`) answer a question with the words `asked`? `other_kind`: the question asks
    for a way (`asks_way`) and the learned one did not, which only naming something told excuses.
    `refers`: the question names a thing the learned one named, with "the" (`referred`)."""
    return (not personal or bool(asked & told) or (about_user(asked) and not other_kind)
            or (refers and not other_kind))


def answer_kinds(text: str) -> frozenset[str]:
    """What kind of answer a question asks for, by its first question word: who, what, when
    (also "what time/date/day ..."), where, why or how; a name may be a person's or a thing's
    ("What's the name of ...?": who or what). Empty for a question without one ("Is ...?")."""
    found = tokens(text)
    at = next((i for i, t in enumerate(found) if t in WH_KINDS), None)
    if at is None:
        return frozenset()
    kind = WH_KINDS[found[at]]
    if kind == "what" and TIME_NOUNS & set(found[at + 1:at + 3]):
        return frozenset({"when"})
    if kind == "what" and NAME_WORDS & set(found):
        return frozenset({"what", "who"})
    return frozenset({kind})


def named_phrases(text: str, determiners: frozenset[str], with_determiner: bool = False) -> list[list[str]]:
    """The words after each of `determiners` up to PHRASE_ENDS ("our new app" -> [new, app]; with
    `with_determiner`, [our, new, app]). After do/does/did the phrase is the subject and the verb
    follows it: "What time does my gym class start?" -> [gym, class]."""
    words_in_order, phrases, phrase = tokens(text), [], None
    for i, t in enumerate(words_in_order):
        if t in determiners:
            phrase = [t] if with_determiner else []
            phrases.append((words_in_order[i - 1] if i else "", phrase))
        elif phrase is not None and t == "s":
            continue
        elif phrase is not None and t not in PHRASE_ENDS:
            phrase.append(t)
        else:
            phrase = None
    least = 2 if with_determiner else 1
    return [p[:-1] if before in DO_FORMS and len(p) > least else p for before, p in phrases if len(p) >= least]


def name_runs(question: str) -> list[tuple[int, int, frozenset[str]]]:
    """The names a question uses, whole: each run of words with a capital (not opening the
    question) or a digit, separated by spaces only ("How fast is Spark 30?" -> "Spark 30";
    "Pepper" of "Pepper's"), as (start, end, its lowercased words), when it holds a name
    (`names`), not numbers alone."""
    runs, run = [], []
    for m in re.finditer(r"\w+", question):
        w = m.group()
        named = (m.start() and w[0].isupper()) or w[0].isdigit()
        if named and (not run or not question[run[-1].end():m.start()].strip()):
            run.append(m)
            continue
        runs.append(run)
        run = [m] if named else []
    runs.append(run)
    found = []
    for r in runs:
        words_in = frozenset(m.group().lower() for m in r)
        if r and words_in & names(question):
            found.append((r[0].start(), r[-1].end(), words_in))
    return found


def described(question: str, told: AbstractSet[str], naming_question: str) -> str | None:
    """`question` with the first of its names (`name_runs`) that `told` holds whole put as the
    question that told it named the thing ("What is the cheapest broadband plan called?" -> "the
    cheapest broadband plan"): "How fast is Spark 30?" -> "How fast is the cheapest broadband
    plan?". None when no name of `question` is told whole or `naming_question` names no thing
    after my/our/the."""
    phrases = named_phrases(naming_question, NAMING_DETERMINERS, with_determiner=True)
    run = next(((a, b) for a, b, ws in name_runs(question) if ws <= told), None)
    if not phrases or run is None:
        return None
    before = re.sub(r"\b(?:the|a|an)\s+$", "", question[:run[0]], flags=re.IGNORECASE)  # "the Northstar deadline"
    return before + " ".join(phrases[0]) + question[run[1]:]


def named_things(learned_question: str) -> frozenset[tuple[str, str]]:
    """(answer kind, head noun) for each thing a learned question named after my/our/the
    ("What is the name of our family boat?" -> (what, boat), (who, boat), (what, name)...)."""
    kinds = answer_kinds(learned_question)
    return frozenset((k, p[-1]) for p in named_phrases(learned_question, NAMING_DETERMINERS) for k in kinds)


def owned_things(text: str) -> tuple[str, ...]:
    """The things `text` names as someone's own, each as its phrase ("What's my brother's son
    called?" -> ("brother son",); "Who do I work for?" -> ())."""
    return tuple(dict.fromkeys(" ".join(p) for p in named_phrases(text, OWNING_DETERMINERS)))


def referred(question: str) -> frozenset[tuple[str, str]]:
    """(answer kind, word) for each word of a phrase `question` opens with "the" (not one that
    speaks of a kind, `generic`): a learned question's `named_things` it meets are what it
    names the way the user did. See REFERRING."""
    kinds = answer_kinds(question)
    return frozenset((k, w) for p in named_phrases(question, REFERRING) if not generic(p) for w in p for k in kinds)


def generic(phrase: list[str]) -> bool:
    """Does a phrase speak of a kind rather than one thing (GENERIC_MODIFIERS, "-est")?"""
    return any(w in GENERIC_MODIFIERS or (len(w) > 4 and w.endswith("est")) for w in phrase)


def asks_way(text: str) -> bool:
    """Does `text` ask for a way: how (not a quantity: HOW_QUANTITIES), or what the user should or
    can do (ADVICE_MODALS before ADVICE_SUBJECTS)?"""
    found = tokens(text)
    if not found:  # no letter or digit (emoji, "???"): no "how"
        return False
    return any((t == "how" and nxt not in HOW_QUANTITIES) or (t in ADVICE_MODALS and nxt in ADVICE_SUBJECTS)
               for t, nxt in zip(found, [*found[1:], ""], strict=True))


def split_at_told(prompt: str, answer: str) -> tuple[str, str]:
    """`answer` cut before the first name or number it told beyond `prompt` (`told_words`, with
    a name's capitalised "The"): ("Your team writes the backend in", "Elixir."); ("", answer) when
    it tells none."""
    named = naming(prompt, answer)
    for m in re.finditer(r"\w+", answer):
        if m.group().lower() in named and not m.group().islower():  # "The", not an earlier "the"
            return answer[:m.start()].rstrip(), answer[m.start():].strip()
    return "", answer


def split_at_new_word(prompt: str, answer: str, through: bool = True) -> tuple[str, str]:
    """`answer` cut after (`through`) or before its first word that is neither in `prompt` nor
    one of LEAD_FRAME_WORDS: ("You are learning the cello", ".") after "Which instrument am I
    learning?"; ("", answer) when there is none or the answer opens with it."""
    asked = words(prompt)
    for m in re.finditer(r"\w+", answer):
        w = m.group().lower()
        if w not in asked and w not in LEAD_FRAME_WORDS:
            if m.start() == 0:
                break
            cut = m.end() if through else m.start()
            return answer[:cut].rstrip(), answer[cut:].strip()
    return "", answer


def scoring_words(text: str | None) -> list[str]:
    """The words the gate scores in `text` (SCORING_WORD), apostrophes and hyphens at their ends
    stripped ("Halvorsen-Robotics'" -> "Halvorsen-Robotics"), case kept."""
    return [w.strip("'-") for w in SCORING_WORD.findall(text or "")]
