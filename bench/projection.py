"""A season projected past what 2 cores can train (issue 26): routing and recall with 1,000 and 5,000
stored corrections, no training, and each learning stage's cost at those sizes from season.py's rates.

Corrections: synthetic but varied and distinct, templated from lists of relations x entities
(relatives and acquaintances x personal attributes, an energy utility's products and sites x their
attributes, the user's things x theirs), each asked through one of three question templates with a
value drawn from a pool (names, dates, times, phone numbers, codes, prices), deterministic seed.
The 1,000 are the first 1,000 of the 5,000. The measured subset (`--subset`, drawn from the first
1,000, the same in both sizes) is asked through the OTHER two templates: held-out paraphrases that
were never stored. General questions: the dev sets' controls and the ordinary requests
(self-replay prompts and canaries), none about a stored correction.

Recall: `assistant.memory.Memory` over a fresh store holding the corrections as the chat stores
them (bench/routing.py `recall_memory`). Routing: a version directory written as the learner writes
it, one expert per correction, stand-in weights (bench/routing.py `write_version`), routed by
`AdapterScope.route`, the chat's and the gate's code. Reranker as in the chat (the embedded model),
unless `--rerank off`.

Cost projection: every stage's seconds per cycle from bench/results/season-latest.json (`--season`),
fitted as  t_stage(N, n) = a + b*n + c*N  (N corrections stored before the cycle's learning, n new
in the cycle; non-negative least squares over the season's cycles; with fewer than 3 cycles, a
stage is taken as proportional to n (training stages) or to N (data, evaluation and gate) or
constant (loading, start-up), the one rate measured), then evaluated at N = 1,000 and 5,000 with n
= the season's median cycle size. Disk and resident memory likewise as a + b*N.

    python bench/projection.py [--sizes 1000,5000] [--subset 100] [--general 120] [--rerank on|off] [--season FILE]
"""
import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

from benchkit import RESULTS, ROOT

# isort: split

import routing  # bench/routing.py: write_version, recall_memory, ordinary_requests, dev_items

from assistant.embedders import embedder_name, make_embedder
from assistant.scope import AdapterScope
from learning.config import LearnConfig

SEED = 26

# ---- value pools ----------------------------------------------------------------------------------
FIRST = ("Ada Alma Anders Anouk Arvid Astrid Bram Britt Caius Cato Dagny Dario Edda Elin Emil Enzo Esme Fenna "
         "Filip Freya Gaia Greta Hakon Hanne Ilse Ingo Iris Jonas Juno Kaja Kasper Lars Leni Liv Lotta Luca "
         "Maja Malte Marit Milo Nils Noor Odin Olga Oskar Pia Quirin Rasmus Ronja Rune Saga Siri Sten Tilde "
         "Timo Tove Ulla Vera Viggo Wanda Yrsa Zeno").split()
LAST = ("Aalto Berg Castell Dahl Eklund Falk Gran Holm Ibsen Jansen Kvist Lund Moe Nyberg Olsen Pihl Quist "
        "Rask Sand Tveit Ulf Vik Wahl Yde Zorn Brandt Carver Dunmore Ellery Fairlie").split()
CITIES = ("Aalborg Bergen Cork Dundee Esbjerg Fulda Galway Haarlem Innsbruck Jena Kiel Leuven Malmo Nantes "
          "Odense Porto Quimper Rostock Split Tartu Utrecht Vigo Wexford Ypres Zadar Lund Graz Bruges").split()
COLOURS = "teal crimson ochre lilac navy mustard coral olive maroon turquoise amber plum".split()
FOODS = "lasagne ramen paella falafel goulash sushi pierogi risotto moussaka tacos dal pho borscht".split()
JOBS = ("nurse architect welder pharmacist librarian carpenter surveyor pilot baker geologist "
        "translator electrician midwife actuary plumber").split()
CARS = "Skoda Volvo Kia Toyota Renault Fiat Mazda Peugeot Subaru Dacia Honda Saab".split()
BANDS = ("The Lumineers|Fleet Foxes|Daughter|Khruangbin|Portishead|Bombay Bicycle Club|Alvvays|"
         "Beach House|Wilco|Low Roar|Big Thief|Sigur Ros").split("|")
INSTRUMENTS = "cello oboe banjo viola trumpet harp clarinet accordion ukulele trombone".split()
HOBBIES = ("pottery|birdwatching|bouldering|beekeeping|woodturning|orienteering|calligraphy|"
           "sea swimming|bookbinding|fencing").split("|")
MONTHS = "January February March April May June July August September October November December".split()
PRODUCT_A = "Kestrel Aurora Nimbus Solace Harbour Beacon Meridian Vale Summit Tidal Ember Willow Granite Lark Fjord".split()
PRODUCT_B = "Fix Flex Saver Green EV Plus Home Night Smart Core Max Lite Basic Family Business Solar".split()
SITES = ("Dunmore Harrowgate Lindholm Penrith Carrick Ashby Brecon Tamworth Kendal Ludlow Whitby Bude Fowey "
         "Hexham Ripon Settle Oban Alnwick Buxton Malton").split()
SITE_KINDS = ["depot", "office", "call centre", "warehouse", "shop", "training centre"]
THINGS = ("car|bike|boat|flat|laptop|phone|camera|piano|caravan|allotment|garden shed|motorbike|tablet|"
          "guitar|sewing machine|lawnmower|kayak|tent|printer|espresso machine|e-reader|drone|smartwatch|"
          "telescope|3D printer|fridge|washing machine|dishwasher|boiler|router|scooter|canoe|van|trailer|"
          "greenhouse|hot tub|sofa|desk|watch|headphones").split("|")


def pick(rng, pool):
    return rng.choice(pool)


def value(kind: str, rng: random.Random) -> str:
    if kind == "date":
        return f"{rng.randint(1, 28)} {pick(rng, MONTHS)}"
    if kind == "isodate":
        return f"{rng.randint(2015, 2027)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"
    if kind == "phone":
        return f"0{rng.randint(1100, 7999)} {rng.randint(100, 999)} {rng.randint(100, 999)}"
    if kind == "time":
        return f"{rng.randint(6, 21)}:{rng.choice(['00', '15', '30', '45', '10', '40'])}"
    if kind == "code":
        return f"{''.join(rng.choice('ABCDEFGHJKLMNPRSTUVWXYZ') for _ in range(2))}-{rng.randint(1000, 99999)}"
    if kind == "pence":
        return f"{rng.randint(5, 40)}.{rng.randint(0, 9)} pence"
    if kind == "pounds":
        return f"{rng.randint(5, 400)} pounds"
    if kind == "months":
        return f"{rng.choice([6, 12, 18, 24, 36])} months"
    if kind == "percent":
        return f"{rng.randint(2, 60)} percent"
    if kind == "person":
        return f"{pick(rng, FIRST)} {pick(rng, LAST)}"
    if kind == "number":
        return str(rng.randint(10, 9999))
    return pick(rng, {"first": FIRST, "city": CITIES, "colour": COLOURS, "food": FOODS, "job": JOBS,
                      "car": CARS, "band": BANDS, "instrument": INSTRUMENTS, "hobby": HOBBIES}[kind])


# attribute: (value kind, three question templates, answer template); {o} the owner ("my sister"),
# {O} its answer form ("your sister"); {p} a product, {s} a site, {t} a thing
PERSON = [
    ("date", ["When is {o}'s birthday?", "What date is {o}'s birthday?", "When was {o} born?"], "{O}'s birthday is on {v}."),
    ("phone", ["What is {o}'s phone number?", "How do I ring {o}?", "Which number do I call to reach {o}?"], "{O}'s number is {v}."),
    ("colour", ["What is {o}'s favourite colour?", "Which colour does {o} like best?", "What colour does {o} love?"], "{O}'s favourite colour is {v}."),
    ("city", ["Where does {o} live?", "Which city is {o} in?", "What town does {o} live in?"], "{O} lives in {v}."),
    ("job", ["What does {o} do for a living?", "What is {o}'s job?", "What work does {o} do?"], "{O} works as a {v}."),
    ("car", ["What car does {o} drive?", "Which car brand does {o} have?", "What make is {o}'s car?"], "{O} drives a {v}."),
    ("first", ["What is {o}'s dog called?", "What's the name of {o}'s dog?", "What did {o} name the dog?"], "{O}'s dog is called {v}."),
    ("food", ["What is {o}'s favourite dish?", "Which food does {o} like most?", "What does {o} love to eat?"], "{O}'s favourite dish is {v}."),
    ("first", ["What is {o}'s middle name?", "Which middle name does {o} have?", "Tell me {o}'s middle name."], "{O}'s middle name is {v}."),
    ("band", ["Which band does {o} like?", "What is {o}'s favourite band?", "What music does {o} listen to most?"], "{O}'s favourite band is {v}."),
    ("instrument", ["What instrument does {o} play?", "Which instrument is {o} learning?", "What does {o} play in music?"], "{O} plays the {v}."),
    ("hobby", ["What is {o}'s hobby?", "What does {o} do in their spare time?", "Which pastime does {o} enjoy?"], "{O}'s hobby is {v}."),
    ("isodate", ["When did {o} move house?", "What date did {o} move?", "When was {o}'s move?"], "{O} moved on {v}."),
    ("time", ["What time does {o} finish work?", "When does {o} get off work?", "At what time is {o} done with work?"], "{O} finishes work at {v}."),
    ("number", ["What is {o}'s house number?", "Which number is {o}'s house?", "What number does {o} live at?"], "{O} lives at number {v}."),
    ("first", ["What is {o}'s cat called?", "What's the name of {o}'s cat?", "What did {o} call the cat?"], "{O}'s cat is called {v}."),
    ("city", ["Where did {o} grow up?", "Which town is {o} from?", "Where was {o} raised?"], "{O} grew up in {v}."),
    ("code", ["What is {o}'s membership number?", "Which membership number does {o} have?", "Remind me of {o}'s membership number."], "{O}'s membership number is {v}."),
    ("date", ["When is {o}'s name day?", "What date is {o}'s name day?", "On which day does {o} celebrate the name day?"], "{O}'s name day is on {v}."),
    ("food", ["What is {o} allergic to?", "Which food can't {o} eat?", "What allergy does {o} have?"], "{O} is allergic to {v}."),
]
OWNERS = ("sister|brother|mother|father|aunt|uncle|cousin|grandmother|grandfather|niece|nephew|son|daughter|"
          "wife|husband|partner|neighbour|landlord|boss|colleague|accountant|dentist|doctor|lawyer|plumber|"
          "godson|flatmate|mentor|stepfather|stepmother|goddaughter|brother-in-law|sister-in-law|"
          "father-in-law|mother-in-law|babysitter|piano teacher|swimming coach|driving instructor|"
          "best friend|oldest friend|business partner|tenant|carer|physiotherapist|vet|barber|"
          "hairdresser|optician|gardener|cleaner|tutor|pen pal|team lead|line manager|mechanic|"
          "electrician|therapist|godfather|godmother|great-aunt").split("|")
PRODUCT = [
    ("pence", ["What is the unit rate on {p}?", "How much per kWh does {p} charge?", "What does {p} cost per unit?"], "{p} charges {v} per kWh."),
    ("pence", ["What is the standing charge on {p}?", "How much is the daily standing charge for {p}?", "What daily charge applies on {p}?"], "The standing charge on {p} is {v} a day."),
    ("months", ["How long is the contract on {p}?", "What is the term of {p}?", "For how many months does {p} run?"], "{p} runs for {v}."),
    ("pounds", ["What is the exit fee on {p}?", "How much does it cost to leave {p} early?", "What fee applies when {p} is cancelled early?"], "Leaving {p} early costs {v}."),
    ("isodate", ["When was {p} launched?", "What is the launch date of {p}?", "Since when has {p} been on sale?"], "{p} was launched on {v}."),
    ("phone", ["What is the helpline for {p} customers?", "Which number do {p} customers call?", "How can a {p} customer phone for help?"], "{p} customers call {v}."),
    ("person", ["Who manages {p}?", "Who is the product manager of {p}?", "Which person is responsible for {p}?"], "{p} is managed by {v}."),
    ("code", ["What is the tariff code of {p}?", "Which code does {p} have in the billing system?", "What is the internal code for {p}?"], "The tariff code of {p} is {v}."),
    ("percent", ["What discount does {p} give for paying by direct debit?", "How much is the direct debit discount on {p}?", "What is the direct debit saving on {p}?"], "{p} gives {v} off for direct debit."),
    ("percent", ["How much of {p}'s electricity is renewable?", "What share of {p} comes from renewables?", "How green is {p}?"], "{v} of {p}'s electricity is renewable."),
    ("time", ["When does the cheap rate start on {p}?", "At what time does {p}'s off-peak period begin?", "When do off-peak hours begin on {p}?"], "The cheap rate on {p} starts at {v}."),
    ("pounds", ["What is the sign-up bonus for {p}?", "How much credit do new {p} customers get?", "What welcome credit comes with {p}?"], "New {p} customers get {v} of credit."),
]
SITE = [
    ("time", ["When does the {s} open?", "What time does the {s} open in the morning?", "At what time can people get into the {s}?"], "The {s} opens at {v}."),
    ("phone", ["What is the phone number of the {s}?", "How can someone ring the {s}?", "Which number reaches the {s}?"], "The {s} is on {v}."),
    ("person", ["Who runs the {s}?", "Who is in charge of the {s}?", "Who manages the {s}?"], "The {s} is run by {v}."),
    ("code", ["What is the door code of the {s}?", "Which code opens the {s}?", "What is the entry code for the {s}?"], "The door code of the {s} is {v}."),
    ("number", ["How many people work at the {s}?", "What is the headcount at the {s}?", "How big is the staff at the {s}?"], "{v} people work at the {s}."),
    ("isodate", ["When did the {s} open?", "What year did the {s} start?", "Since when has the {s} existed?"], "The {s} opened on {v}."),
]
THING = [
    ("colour", ["What colour is my {t}?", "Which colour did I pick for my {t}?", "My {t} is what colour?"], "Your {t} is {v}."),
    ("isodate", ["When did I buy my {t}?", "What date did I get my {t}?", "How long have I had my {t}?"], "You bought your {t} on {v}."),
    ("pounds", ["How much did my {t} cost?", "What did I pay for my {t}?", "What was the price of my {t}?"], "Your {t} cost {v}."),
    ("code", ["What is the serial number of my {t}?", "Which serial number does my {t} have?", "Where do I find my {t}'s serial?"], "Your {t}'s serial number is {v}."),
    ("first", ["What did I name my {t}?", "What's my {t} called?", "Which name did I give my {t}?"], "Your {t} is called {v}."),
]


def synthetic(n: int, seed: int = SEED) -> list[dict]:
    """`n` distinct corrections, shuffled by `seed`: {"id", "prompt", "correction", "paraphrases"}."""
    rng = random.Random(seed)
    slots = []
    for owner in OWNERS:
        for a, attr in enumerate(PERSON):
            slots.append(("person", f"my {owner}", f"your {owner}", a, attr))
    products = [f"{x} {y}" for x in PRODUCT_A for y in PRODUCT_B]
    for prod in products:
        for a, attr in enumerate(PRODUCT):
            slots.append(("product", prod, prod, a, attr))
    for site in (f"{s} {k}" for s in SITES for k in SITE_KINDS):
        for a, attr in enumerate(SITE):
            slots.append(("site", site, site, a, attr))
    for thing in THINGS:
        for a, attr in enumerate(THING):
            slots.append(("thing", thing, thing, a, attr))
    if n > len(slots):
        raise ValueError(f"only {len(slots)} distinct corrections can be made, {n} asked")
    rng.shuffle(slots)
    out = []
    for i, (kind, who, answer_who, _a, (vkind, templates, answer)) in enumerate(slots[:n]):
        fill = {"person": "o", "product": "p", "site": "s", "thing": "t"}[kind]
        stored = rng.randrange(3)
        qs = [t.replace("{" + fill + "}", who) for t in templates]
        v = value(vkind, rng)
        text = answer.replace("{O}", answer_who[0].upper() + answer_who[1:]).replace("{" + fill + "}", who) \
            .replace("{v}", v)
        text = text[0].upper() + text[1:]
        out.append({"id": f"s{i}", "prompt": qs[stored], "correction": text,
                    "paraphrases": [q for j, q in enumerate(qs) if j != stored]})
    return out


# ---- measuring ------------------------------------------------------------------------------------
def general_questions() -> list[str]:
    qs = []
    for dev in routing.DEV_SETS:
        qs += routing.dev_items(dev)[1]
    return list(dict.fromkeys(qs + routing.ordinary_requests()))


def measure(corrections: list[dict], subset: list[dict], general: list[str], embedder, reranker, lcfg) -> dict:
    facts = [{"id": c["id"], "teach": [(c["prompt"], c["correction"])], "paraphrases": c["paraphrases"]}
             for c in corrections]
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        memory = routing.recall_memory(Path(tmp) / "home", facts, embedder, reranker)
        store_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        memory.recall("warm up")
        index_s = time.perf_counter() - t0
        owner_of_prompt = {c["prompt"]: c["id"] for c in corrections}
        recall_ms, para = [], []
        for c in subset:
            for q in c["paraphrases"]:
                t0 = time.perf_counter()
                got = memory.recall(q)
                recall_ms.append(1000 * (time.perf_counter() - t0))
                para.append((c["id"], q, [owner_of_prompt.get(r["prompt"]) for r in got]))
        gen = []
        for q in general:
            t0 = time.perf_counter()
            got = memory.recall(q)
            recall_ms.append(1000 * (time.perf_counter() - t0))
            gen.append((q, [r["prompt"] for r in got]))

        version = Path(tmp) / "v1"
        t0 = time.perf_counter()
        owner, n_prompts = routing.write_version(version, facts, lcfg)
        scope = AdapterScope(embedder, reranker)
        scope.warm(version)
        scope_s = time.perf_counter() - t0

        def routed(text):
            key, _ = scope.route(1, version, text)
            if key is None:
                return None
            return owner[key[1].removeprefix(routing.scope_mod.EXPERT_KEY)] if isinstance(key, tuple) else ""

        route_ms, rpara, rgen = [], [], []
        for c in subset:
            for q in c["paraphrases"]:
                t0 = time.perf_counter()
                rpara.append((c["id"], q, routed(q)))
                route_ms.append(1000 * (time.perf_counter() - t0))
        for q in general:
            t0 = time.perf_counter()
            rgen.append((q, routed(q)))
            route_ms.append(1000 * (time.perf_counter() - t0))

    def pct(values, q):
        v = sorted(values)
        return round(v[min(len(v) - 1, int(q * len(v)))], 1) if v else None

    return {
        "stored": len(corrections), "paraphrases": len(para), "general": len(gen),
        "recall_own_first": sum(bool(g) and g[0] == fid for fid, _, g in para),
        "recall_own_anywhere": sum(fid in g for fid, _, g in para),
        "recall_other_first": sum(bool(g) and g[0] != fid for fid, _, g in para),
        "recall_none": sum(not g for _, _, g in para),
        "general_recalling": sum(bool(g) for _, g in gen),
        "route_own": sum(g == fid for fid, _, g in rpara),
        "route_other": sum(g not in (fid, None, "") for fid, _, g in rpara),
        "route_outside": sum(g is None for _, _, g in rpara),
        "general_to_an_expert": sum(bool(g) for _, g in rgen),
        "recall_ms_p50": pct(recall_ms, 0.5), "recall_ms_p95": pct(recall_ms, 0.95),
        "route_ms_p50": pct(route_ms, 0.5), "route_ms_p95": pct(route_ms, 0.95),
        "store_s": round(store_s, 1), "recall_index_s": round(index_s, 1), "scope_prompts": n_prompts,
        "scope_build_s": round(scope_s, 1),
        "recall_misses": [{"question": q, "own": fid, "recalled": g} for fid, q, g in para
                          if not g or g[0] != fid][:30],
        "general_recalled": [{"question": q, "recalled": g[0]} for q, g in gen if g][:30],
        "route_misses": [{"question": q, "own": fid, "routed": g} for fid, q, g in rpara if g != fid][:30],
        "general_routed": [{"question": q, "routed": g} for q, g in rgen if g][:30],
    }


# ---- cost projection ------------------------------------------------------------------------------
PER_NEW = ("sft_s", "dpo_s", "habit_s", "experts_s", "teach_s")
PER_STORED = ("data_s", "extra_rows_s", "evaluate_gate_s", "evaluate_gate_startup_s")


def fit(points: list[tuple[float, float, float]], key: str) -> tuple[float, float, float, str]:
    """(a, b, c, how) for t = a + b*n + c*N over (n, N, t) points."""
    if len(points) >= 3:
        import numpy as np
        from scipy.optimize import nnls

        A = np.array([[1.0, n, big] for n, big, _ in points])
        coef, _ = nnls(A, np.array([t for _, _, t in points]))
        return float(coef[0]), float(coef[1]), float(coef[2]), "least squares"
    if key in PER_NEW:
        return 0.0, statistics.mean(t / max(n, 1) for n, _, t in points), 0.0, "per new correction"
    if key in PER_STORED:
        return 0.0, 0.0, statistics.mean(t / max(big, 1) for _, big, t in points), "per stored correction"
    return statistics.mean(t for *_, t in points), 0.0, 0.0, "constant"


def project(season: dict, sizes: list[int]) -> dict:
    rows = [r for r in season.get("rows", []) if r.get("cycle")]
    if not rows:
        return {"note": "no learning cycle in the season results"}
    sample = statistics.median(r["new_corrections"] for r in rows)
    stage_keys = sorted({k for r in rows for k, v in (r.get("stages") or {}).items()
                         if k.endswith("_s") and isinstance(v, int | float)})
    series = {k: [(r["new_corrections"], r["corrections"], r["stages"][k]) for r in rows
                  if isinstance((r.get("stages") or {}).get(k), int | float)] for k in stage_keys}
    for k in ("teach_s", "swap_s"):
        series[k] = [(r["new_corrections"], r["corrections"], r[k]) for r in rows if r.get(k) is not None]
    out = {"cycles_measured": len(rows), "new_per_cycle": sample, "stages": {}}
    for k, pts in series.items():
        a, b, c, how = fit(pts, k)
        out["stages"][k] = {"a": round(a, 3), "b_per_new": round(b, 3), "c_per_stored": round(c, 5), "how": how,
                            "projected_s": {str(N): round(a + b * sample + c * N, 1) for N in sizes}}
    out["stages"]["cycle (sum)"] = {"a": None, "b_per_new": None, "c_per_stored": None, "how": "sum of the above",
                                    "projected_s": {str(N): round(sum(v["projected_s"][str(N)] for v in out["stages"].values()), 1)
                                                    for N in sizes}}
    measured = [r["cycle_s"] for r in rows if r.get("cycle_s")]
    out["measured_cycle_s"] = {"first": measured[0] if measured else None, "last": measured[-1] if measured else None}
    for key, get in (("adapters_mb", lambda r: r["disk_mb"]["adapters"]), ("database_mb", lambda r: r["disk_mb"]["database"]),
                     ("server_rss_mb", lambda r: r["rss_mb"]["rss"])):
        pts = [(r["corrections"], get(r)) for r in season["rows"] if get(r) is not None]
        if len(pts) >= 2:
            import numpy as np

            b, a = np.polyfit([p[0] for p in pts], [p[1] for p in pts], 1)
        else:
            a, b = (pts[0][1] if pts else 0.0), 0.0
        out[key] = {"a": round(float(a), 2), "b_per_correction": round(float(b), 3),
                    "projected": {str(N): round(float(a + b * N), 1) for N in sizes}}
    out["formula"] = ("t_stage(N, n) = a + b*n + c*N seconds (N: corrections given by the end of the cycle, n: new in it = "
                      f"{sample:g}); a, b, c >= 0 by least squares over the measured cycles when there are 3 or "
                      "more, else the one measured rate: training stages (sft, dpo, habit, experts, teach) per new "
                      "correction, data, extra rows and evaluation+gate per stored correction (an upper bound: their "
                      "fixed part is counted as growing), the rest constant. A cycle is the sum of its stages. Disk and memory: a + b*N, a line through the measured cycles (cycle 0 included).")
    return out


def markdown(res: dict, cmd: str) -> str:
    lines = ["# Projection: routing and recall with many stored corrections, and cost per stage", "",
             f"Command: `{cmd}`  ", f"Embedder `{res['embedder']}`, reranker {res['rerank']}. Synthetic corrections "
             f"(seed {SEED}); {res['subset']} of the first 1,000 asked through 2 held-out paraphrases each; "
             f"{res['general']} general questions (dev controls, self-replay prompts, canaries).", "",
             "| stored | recall: own first | own in top-k | other first | none | general recalling "
             "| route: own expert | other expert | outside | general to an expert | recall ms p50/p95 "
             "| route ms p50/p95 | store s | scope build s |", "|" + "---|" * 14]
    for m in res["sizes"]:
        p, g = m["paraphrases"], m["general"]
        lines.append(f"| {m['stored']} | {m['recall_own_first']}/{p} | {m['recall_own_anywhere']}/{p} | "
                     f"{m['recall_other_first']} | {m['recall_none']} | {m['general_recalling']}/{g} | "
                     f"{m['route_own']}/{p} | {m['route_other']} | {m['route_outside']} | "
                     f"{m['general_to_an_expert']}/{g} | {m['recall_ms_p50']}/{m['recall_ms_p95']} | "
                     f"{m['route_ms_p50']}/{m['route_ms_p95']} | {m['store_s']} | {m['scope_build_s']} |")
    cost = res.get("cost") or {}
    lines += ["", f"## Cost projection (from `{res.get('season_file')}`)", ""]
    if "stages" in cost:
        sizes = list(next(iter(cost["stages"].values()))["projected_s"])
        lines += [f"Formula: {cost['formula']}", "", f"Measured cycles: {cost['cycles_measured']}.", "",
                  "| stage | a s | b s per new | c s per stored | fit | " + " | ".join(f"N={s} s" for s in sizes) + " |",
                  "|" + "---|" * (5 + len(sizes))]
        for k, v in cost["stages"].items():
            lines.append(f"| {k} | {v['a']} | {v['b_per_new']} | {v['c_per_stored']} | {v['how']} | "
                         + " | ".join(str(v["projected_s"][s]) for s in sizes) + " |")
        lines += ["", "| resource | a | b per correction | " + " | ".join(f"N={s}" for s in sizes) + " |",
                  "|" + "---|" * (3 + len(sizes))]
        for k in ("adapters_mb", "database_mb", "server_rss_mb"):
            v = cost[k]
            lines.append(f"| {k} | {v['a']} | {v['b_per_correction']} | "
                         + " | ".join(str(v["projected"][s]) for s in sizes) + " |")
    else:
        lines.append(cost.get("note", "no season results"))
    for m in res["sizes"]:
        lines += ["", f"Examples at {m['stored']} stored:", ""]
        lines += [f"- recall miss: \"{x['question']}\" ({x['own']}) -> {', '.join(map(str, x['recalled'])) or 'nothing'}"
                  for x in m["recall_misses"][:10]]
        lines += [f"- general question recalled: \"{x['question']}\" -> \"{x['recalled']}\""
                  for x in m["general_recalled"][:10]]
        lines += [f"- route miss: \"{x['question']}\" ({x['own']}) -> {x['routed']}" for x in m["route_misses"][:10]]
        lines += [f"- general question routed: \"{x['question']}\" -> {x['routed']}" for x in m["general_routed"][:10]]
    return "\n".join(lines) + "\n"


def latest_season(given: str | None) -> Path | None:
    if given:
        return Path(given)
    default = RESULTS / "season-latest.json"
    if default.exists():
        return default
    found = sorted(RESULTS.glob("season*-latest.json"), key=lambda p: p.stat().st_mtime)
    return found[-1] if found else None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="1000,5000")
    ap.add_argument("--subset", type=int, default=100, help="corrections asked by paraphrase (of the first 1,000)")
    ap.add_argument("--general", type=int, default=120, help="general questions asked (a seeded sample; 0: all)")
    ap.add_argument("--rerank", choices=("on", "off"), default="on")
    ap.add_argument("--season", help="season results to take the rates from (default: season-latest.json)")
    ap.add_argument("--out", default="projection")
    ap.add_argument("--cost-only", action="store_true",
                    help="keep the routing and recall figures of <out>.json, redo the cost projection from --season")
    args = ap.parse_args(argv)
    if args.cost_only:
        res = json.loads((RESULTS / f"{args.out}.json").read_text())
        season_file = latest_season(args.season)
        res["season_file"] = str(season_file)
        res["cost"] = project(json.loads(season_file.read_text()), [int(s) for s in args.sizes.split(",")])
        (RESULTS / f"{args.out}.json").write_text(json.dumps(res, indent=1))
        (RESULTS / f"{args.out}.md").write_text(markdown(res, "python bench/projection.py " + " ".join(
            argv if argv is not None else sys.argv[1:])))
        print(f"wrote {RESULTS / args.out}.md")
        return 0
    sizes = [int(s) for s in args.sizes.split(",")]
    everything = synthetic(max(sizes))
    assert len({c["prompt"] for c in everything}) == len(everything)
    subset = random.Random(SEED + 1).sample(everything[:min(sizes)], args.subset)
    general = general_questions()
    if 0 < args.general < len(general):
        general = random.Random(SEED + 2).sample(general, args.general)
    embedder = make_embedder()
    embedder.load()
    reranker = routing.model_reranker() if args.rerank == "on" else None
    lcfg = LearnConfig()
    res = {"embedder": embedder_name(), "rerank": args.rerank, "subset": args.subset, "general": len(general),
           "seed": SEED, "sizes": []}
    season_file = latest_season(args.season)
    res["season_file"] = str(season_file.relative_to(ROOT)) if season_file and season_file.is_relative_to(ROOT) \
        else (str(season_file) if season_file else None)
    res["cost"] = project(json.loads(season_file.read_text()), sizes) if season_file and season_file.exists() \
        else {"note": "no season results yet: run bench/season.py first"}
    cmd = "python bench/projection.py " + " ".join(argv if argv is not None else sys.argv[1:])
    RESULTS.mkdir(parents=True, exist_ok=True)
    for n in sizes:  # saved after each size: the larger one takes long on 2 cores
        t0 = time.perf_counter()
        m = measure(everything[:n], subset, general, embedder, reranker, lcfg)
        m["wall_s"] = round(time.perf_counter() - t0, 1)
        res["sizes"].append(m)
        print(f"{n} stored: recall own first {m['recall_own_first']}/{m['paraphrases']}, none {m['recall_none']}, "
              f"general recalling {m['general_recalling']}/{m['general']}; route own {m['route_own']}/{m['paraphrases']}, "
              f"other {m['route_other']}, general to an expert {m['general_to_an_expert']}; recall ms p50 "
              f"{m['recall_ms_p50']} p95 {m['recall_ms_p95']} ({m['wall_s']} s)", flush=True)
        (RESULTS / f"{args.out}.json").write_text(json.dumps(res, indent=1))
        (RESULTS / f"{args.out}.md").write_text(markdown(res, cmd))
    print(f"wrote {RESULTS / args.out}.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
