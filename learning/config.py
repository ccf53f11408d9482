"""LearnConfig: every knob of a learning cycle, with CPU-sane defaults.

The LoRA shape (r, alpha, dropout, target modules) is FIXED across versions: a cycle past
`refit_corrections` continues from the active adapter, so changing it would make the new adapter
incompatible with its parent (and the served model refuses a shape change, refits included). A home
whose stored settings name no shape keeps the one its versions have when the default changes
(learner.run_cycle). Everything else may change between cycles.
Invalid combinations fail at construction with the offending values in the message.
Each field's docstring says why its default, in a clause; the measurements behind them are in
bench/HISTORY.md, 'Config defaults: the measurements behind them'.
"""
from dataclasses import asdict, dataclass, field, replace

LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass
class LearnConfig:
    # ---- LoRA shape: fixed across versions -----------------------------------------------
    lora_r: int = 64
    """LoRA rank. 64: on the dev scenario it taught more paraphrases than 16 or 32, for about 15% more cycle
    time and an adapter four times the size (bench/results/learn-dev.md; bench/HISTORY.md 'Config defaults').
    A home keeps the shape its first version was trained with (learner.run_cycle)."""
    lora_alpha: int = 128
    """LoRA scaling numerator (scale = alpha / r, 2 at every rank measured)."""
    lora_dropout: float = 0.0
    """Dropout on the LoRA input; 0 keeps the tiny datasets deterministic."""
    lora_targets: tuple[str, ...] = LORA_TARGETS
    """Module names that get a LoRA (all linear layers of a Llama-style block)."""

    # ---- SFT -------------------------------------------------------------------------------
    sft_epochs: float = 2.0
    """Passes over the SFT rows (corrections, liked answers, augmentations, replay); the habit adapter trains
    for as many. 2: at rank 64 it taught as much as 3 on the dev scenario in about 20% less cycle time
    (bench/results/learn-dev.md; bench/HISTORY.md 'Config defaults')."""
    sft_lr: float = 1e-3
    """Peak learning rate of SFT (linear decay)."""
    sft_batch_size: int = 8
    """Rows per SFT step."""
    sft_max_length: int = 128
    """Token cap of one SFT row (prompt + answer); longer rows are cut at the end."""

    # ---- DPO -------------------------------------------------------------------------------
    dpo_epochs: float = 1.0
    """Passes over the preference pairs; 0 skips DPO."""
    dpo_lr: float = 2e-4
    """Peak learning rate of DPO."""
    dpo_beta: float = 0.1
    """DPO temperature: higher keeps the policy closer to the post-SFT reference."""
    dpo_sft_weight: float = 1.0
    """Weight of the SFT (NLL on the chosen answer) term added to the sigmoid DPO loss:
    keeps the chosen answer likely, the guard against DPO collapse."""
    dpo_batch_size: int = 4
    """Pairs per DPO step."""
    dpo_max_length: int = 128
    """Token cap of prompt + one answer in a pair (long rejected answers are cut)."""

    # ---- data ------------------------------------------------------------------------------
    replay_fraction: float = 1.0
    """Size of the replay sample (rows that trained earlier accepted versions) relative to the new SFT rows; 0
    disables replay of earlier rows. 1.0 replays every earlier correction while the history is small; 0.3 lost
    earlier corrections and failed the gate's retention check (bench/HISTORY.md 'Config defaults')."""
    refit_corrections: int = 24
    """While the user's corrections number at most this many, each cycle trains a FRESH LoRA on all of them (a
    refit) instead of continuing from the active adapter, which lets facts bleed into each other; 0: always
    continue. 24 keeps a refit cycle, with its experts, within 10 minutes (bench/HISTORY.md
    'Config defaults')."""
    self_replay: int = 24
    """How many of the base model's own greedy answers to generic prompts
    (learning/replay_prompts.jsonl) are mixed into SFT, against forgetting; 0 disables."""
    scope_threshold: float | None = 0.5
    """Scoped adapters (assistant/scope.py): the adapter answers only prompts whose cosine similarity to one
    it or an ancestor trained on reaches this ([-1, 1]; None: every prompt), the base weights the rest; stored
    in each version's meta.json for routing. 0.5: recall's threshold when scopes came in, not re-measured
    (bench/HISTORY.md 'Config defaults')."""
    scope_margin: float | None = 0.1
    """A prompt below `scope_threshold` is in scope too when its similarity to the scope beats its similarity
    to ordinary requests by this much (matching.py `relevant`; [0, 2], None: the threshold alone). 0.1 taught
    one more dev paraphrase (bench/results/learn-dev.md; bench/HISTORY.md 'Config defaults')."""
    experts: bool = True
    """Train one small LoRA per correction (learning/experts.py), once, kept by later versions; it answers
    in-scope prompts nearest its correction, so facts taught together cannot bleed into each other. On: more
    dev paraphrases than the shared adapter alone (bench/HISTORY.md 'Config defaults')."""
    half_precision_files: bool = True
    """Store every adapter a cycle writes (shared, habit, experts) as float16 on disk, loaded back into the
    model's float32 LoRA layers: half the disk (an expert 19.6 -> 9.8 MB), the same greedy replies where
    checked (bench/HISTORY.md 'Adapters stored in half precision', 'Config defaults')."""
    int8_expert_files: bool = True
    """Store each new expert's LoRA matrices as 8-bit integers with a float32 scale per row
    (assistant/adapter_files.py `store_int8_rows`), read back as float16 when served: 57% of the
    float16 files (experts 33.8 against 59.0 MB on the dev scenario, 1.4 MB a correction in groups
    of four) for the same dev probes, reply for reply on the same training (bench/results/learn-dev.md,
    experts-*-ab; bench/HISTORY.md '8-bit experts'). Off: float16 as the other adapters."""
    experts_per_cycle: int = 24
    """At most this many corrections get their expert (in groups of `expert_group`) per cycle; the rest get
    theirs in the next cycles (oldest first) and the shared adapter, which trains on them meanwhile, answers
    them. `experts_budget_s` is the limit that binds on a CPU. 12 let a backlog grow in a season of 10-16
    corrections a cycle (4, 5, 8, 12 waiting after cycles 2-5) until a candidate whose shared adapter
    carried 12 of them lost 2 and was rejected (bench/results/season-20261204-012251.md)."""
    experts_budget_s: float | None = 360.0
    """Seconds the experts' stage may plan for: divided by the last new expert's seconds (meta.json) it caps
    new experts (at least one, at most `experts_per_cycle`), so a bigger model or slower machine stays within
    10 minutes; None: counts only. 360 leaves about 240 s for the rest of a cycle on our slower machine
    (bench/HISTORY.md 'Config defaults')."""
    expert_r: int = 16
    """LoRA rank of each correction's expert (alpha twice the rank, the shared adapter's scale). 16 keeps the
    accuracy; 4 takes a quarter of the disk and lost 2 of 96 dev paraphrases, for a home short of disk
    (bench/results/learn-dev.md, experts-r4*; bench/HISTORY.md 'Config defaults')."""
    expert_targets: tuple[str, ...] | None = None
    """Module names that get a LoRA in each expert; None: `lora_targets`. An expert's size scales with the
    modules it adapts: the MLP's three projections alone take 62% of the disk (36.6 against 59.0 MB of experts
    on the dev scenario) and taught 44 and 43 of 48 dev paraphrases against 45 and 46 over two seeds, so all
    modules stay the default; the MLP alone is for a home short of disk (bench/results/learn-dev.md,
    experts-mlp*)."""
    expert_group: int = 4
    """How many of a cycle's new corrections share one expert adapter (trained together, each still routed
    to by its own prompts). 4 learned the dev scenario as one per correction did (paraphrases 47/48 against
    46/48 and 48/48) in a quarter of the disk (bench/results/learn-dev.md, experts-group4). A correction
    taken back drops its group's adapter (the rest is trained anew next cycle); one superseded only stops
    being routed to it."""
    expert_epochs: float = 6.0
    """SFT epochs of an expert over its correction and the correction's rewrites (10 rows)."""
    expert_lr: float = 2e-3
    """Peak SFT learning rate of an expert (DPO then runs on its one pair at `dpo_lr`)."""
    habit_adapter: bool = True
    """Train a habit adapter (learning/habits.py) when corrections show a habit (an opening 3+ corrections to
    different prompts share); it chooses the opening of answers to prompts outside the scope, and the base
    weights answer them as before (bench/results/learn-dev.md; bench/HISTORY.md 'Config defaults')."""
    habit_r: int | None = 8
    """LoRA rank of a new habit adapter (alpha twice the rank; None: the shared adapter's `lora_r`). It only
    writes an opening of a few tokens: 8 learned the dev habit as 64 did (style 4/4, controls 15/20, every
    paraphrase the same) in 4.9 MB instead of 39 (bench/results/learn-dev.md, habit-r8)."""
    habit_lr: float = 1e-3
    """Peak learning rate of the habit adapter, trained for `sft_epochs` (2e-4 taught no habit)."""
    habit_self_replay: int = 48
    """Base-model answers to generic prompts, with the habit added, that train the habit adapter
    next to the corrections showing it: they teach it to open any answer with the habit."""
    habit_min_support: int = 3
    """Corrections to different prompts that must share an opening, a closing or a list format before it is a
    habit (learning/habits.py find_habits): two could be a coincidence, three in one history are a pattern the
    user keeps asking for."""
    habit_max_closing_words: int = 6
    """A closing habit is a sign-off, not content: a last sentence of at most this many words, after another
    one (learning/habits.py closing)."""
    augment: bool = True
    """Add generic rewrites of each corrected prompt (templates, casing, contractions)."""
    augment_rewrites: int = 9
    """Rewrites per corrected prompt (reframings first, learning/augment.py). 9 taught more dev paraphrases
    than 6 (bench/results/learn-dev.md; bench/HISTORY.md 'Config defaults')."""
    max_history_messages: int = 2
    """Earlier messages of the conversation kept in front of the corrected prompt."""
    max_prompt_chars: int = 2000
    """Character cap of one user message in training data."""
    max_answer_chars: int = 1500
    """Character cap of one answer in training data."""
    dedup_threshold: float = 0.97
    """Cosine similarity (prompt + answer embeddings) above which two rows are duplicates;
    the newer one is kept. 1.0 disables near-duplicate removal."""
    heldout_fraction: float = 0.2
    """Share of conversations (by stable hash) whose VOTE-derived rows are held out for the
    gate. Corrections always train: the user asked for them to be learned."""

    # ---- triggers (AutoTrigger) --------------------------------------------------------------
    min_new_feedback: int = 10
    """A cycle starts by itself once this many new learnable feedback items arrived."""
    interval_s: float = 6 * 3600
    """...or when this much time passed since the last cycle and there is any new feedback."""
    min_gap_s: float = 600
    """Never start two automatic cycles closer together than this."""

    # ---- disk ------------------------------------------------------------------------------
    keep_versions: int | None = 5
    """After each cycle, delete the weights of all but the newest this many versions (the active
    one and its parent always keep theirs; learning/pruning.py `prune_weights`). A version's
    record, what it learned and its figures stay. None keeps every version's weights, which at
    rank 64 grows the home by 75-150 MB per cycle."""

    # ---- misc --------------------------------------------------------------------------------
    seed: int = 0
    """Seed of data shuffling and LoRA init (each version also mixes in its number)."""
    logging_steps: int = 1
    """Loss reported every this many steps (progress bar, job row, loss plot)."""
    extra: dict = field(default_factory=dict)
    """Free-form notes stored with the resolved config in meta.json."""

    def __post_init__(self):
        self.lora_targets = tuple(self.lora_targets)
        if self.expert_targets is not None:
            self.expert_targets = tuple(self.expert_targets)
        problems = []
        if self.lora_r <= 0 or self.lora_alpha <= 0:
            problems.append(f"lora_r and lora_alpha must be positive (got {self.lora_r}, {self.lora_alpha})")
        if not 0 <= self.lora_dropout < 1:
            problems.append(f"lora_dropout must be in [0, 1) (got {self.lora_dropout})")
        if not self.lora_targets:
            problems.append("lora_targets must name at least one module")
        if self.sft_epochs <= 0:
            problems.append(f"sft_epochs must be positive (got {self.sft_epochs})")
        if self.dpo_epochs < 0:
            problems.append(f"dpo_epochs must be >= 0 (got {self.dpo_epochs})")
        for name in ("sft_lr", "dpo_lr", "dpo_beta", "habit_lr"):
            if getattr(self, name) <= 0:
                problems.append(f"{name} must be positive (got {getattr(self, name)})")
        if self.scope_threshold is not None and not -1 <= self.scope_threshold <= 1:
            problems.append(f"scope_threshold must be a cosine similarity in [-1, 1] or None "
                            f"(got {self.scope_threshold})")
        if self.scope_margin is not None and not 0 <= self.scope_margin <= 2:
            problems.append(f"scope_margin must be in [0, 2] or None (got {self.scope_margin})")
        if self.expert_targets is not None and not self.expert_targets:
            problems.append("expert_targets must name at least one module, or be None (lora_targets)")
        if self.expert_group < 1:
            problems.append(f"expert_group must be >= 1 (got {self.expert_group})")
        if self.expert_r < 1 or self.experts_per_cycle < 0 or self.expert_epochs <= 0 or self.expert_lr <= 0:
            problems.append(f"expert_r must be >= 1, experts_per_cycle >= 0, expert_epochs and expert_lr "
                            f"positive (got {self.expert_r}, {self.experts_per_cycle}, {self.expert_epochs}, "
                            f"{self.expert_lr})")
        if self.experts_budget_s is not None and not self.experts_budget_s > 0:
            problems.append(f"experts_budget_s must be positive or None (got {self.experts_budget_s})")
        if self.refit_corrections < 0:
            problems.append(f"refit_corrections must be >= 0 (got {self.refit_corrections})")
        if self.augment_rewrites < 0:
            problems.append(f"augment_rewrites must be >= 0 (got {self.augment_rewrites})")
        if self.dpo_sft_weight < 0:
            problems.append(f"dpo_sft_weight must be >= 0 (got {self.dpo_sft_weight})")
        for name in ("sft_batch_size", "dpo_batch_size", "logging_steps"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1 (got {getattr(self, name)})")
        if self.sft_max_length < 16 or self.dpo_max_length < 16:
            problems.append(f"max lengths must be >= 16 tokens (got sft {self.sft_max_length}, "
                            f"dpo {self.dpo_max_length})")
        if not 0 <= self.replay_fraction <= 5:
            problems.append(f"replay_fraction must be in [0, 5] (got {self.replay_fraction})")
        if self.habit_r is not None and self.habit_r < 1:
            problems.append(f"habit_r must be >= 1 or None (got {self.habit_r})")
        if self.habit_self_replay < 0:
            problems.append(f"habit_self_replay must be >= 0 (got {self.habit_self_replay})")
        if self.habit_min_support < 1 or self.habit_max_closing_words < 1:
            problems.append(f"habit_min_support and habit_max_closing_words must be >= 1 "
                            f"(got {self.habit_min_support}, {self.habit_max_closing_words})")
        if self.self_replay < 0 or self.max_history_messages < 0:
            problems.append(f"self_replay and max_history_messages must be >= 0 "
                            f"(got {self.self_replay}, {self.max_history_messages})")
        if not 0 < self.dedup_threshold <= 1:
            problems.append(f"dedup_threshold must be in (0, 1] (got {self.dedup_threshold})")
        if not 0 <= self.heldout_fraction < 1:
            problems.append(f"heldout_fraction must be in [0, 1) (got {self.heldout_fraction})")
        if self.min_new_feedback < 1:
            problems.append(f"min_new_feedback must be >= 1 (got {self.min_new_feedback})")
        if self.interval_s <= 0 or self.min_gap_s < 0:
            problems.append(f"interval_s must be > 0 and min_gap_s >= 0 "
                            f"(got {self.interval_s}, {self.min_gap_s})")
        elif self.min_gap_s > self.interval_s:
            problems.append(f"min_gap_s ({self.min_gap_s}) cannot exceed interval_s ({self.interval_s}): "
                            "the interval trigger could never fire")
        if self.max_prompt_chars < 16 or self.max_answer_chars < 16:
            problems.append(f"character caps must be >= 16 (got {self.max_prompt_chars}, "
                            f"{self.max_answer_chars})")
        if self.keep_versions is not None and self.keep_versions < 0:
            problems.append(f"keep_versions must be >= 0 or None (got {self.keep_versions})")
        if problems:
            raise ValueError("invalid LearnConfig: " + "; ".join(problems))

    def lora_shape(self) -> dict:
        """The part that must match the parent adapter's."""
        return {"r": self.lora_r, "lora_alpha": self.lora_alpha, "lora_dropout": self.lora_dropout,
                "target_modules": sorted(self.lora_targets)}

    def with_shape(self, shape: dict) -> "LearnConfig":
        """This config with another LoRA shape (as `lora_shape` gives it)."""
        return replace(self, lora_r=shape["r"], lora_alpha=shape["lora_alpha"],
                       lora_dropout=shape["lora_dropout"], lora_targets=tuple(shape["target_modules"]))

    def to_dict(self) -> dict:
        d = asdict(self)
        d["lora_targets"] = list(self.lora_targets)
        if self.expert_targets is not None:
            d["expert_targets"] = list(self.expert_targets)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "LearnConfig":
        """Build from stored settings, refusing unknown keys (typos must not pass silently)."""
        known = set(cls.__dataclass_fields__)
        d = {k: v for k, v in d.items() if k not in RETIRED_FIELDS}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown LearnConfig fields {unknown}; known: {sorted(known)}")
        return cls(**d)


SETTINGS_KEY = "learn_config"
# Fields older homes may have stored that no longer mean anything; read as absent.
# scrub_pii: training learns what the user taught verbatim (their phone numbers, dates, codes);
# scrubbing happens where data leaves the machine, `assistant export`.
# sft_neftune_alpha: NEFTune noise on the input embeddings during SFT; measured not to help
# (alpha 5: 40/48 paraphrases, 15: 35/48, off 39/48; bench/results/learn-dev.md).
# anchor_weight, anchor_batch_size: a KL distillation anchor to the base model on its self-replay
# answers; measured not to help (weight 1 or 5 kept 31/40 canaries, as plain self-replay rows;
# bench/results/learn-dev.md).
# contrast: DPO pairs preferring each correction over the most similar other corrected prompt's;
# measured not to help (33/48 paraphrases against 38/48 without, twice the DPO time;
# bench/results/learn-dev.md).
# neighbour_rewrites: rewrites of corrected prompts with a content word swapped for a near word of
# the embedder's vocabulary; measured not to help (3 per prompt: 42, 43, 42 of 48 paraphrases
# against 45, 44, 41 without, seeds 0-2; bench/results/learn-dev.md).
# short_answers: corrections also trained with their short form ("Halvorsen Robotics in Trondheim.");
# measured not to help (3 per correction: 45, 44, 41 of 48, as without; bench/results/learn-dev.md).
RETIRED_FIELDS = frozenset({"scrub_pii", "sft_neftune_alpha", "anchor_weight", "anchor_batch_size", "contrast",
                            "neighbour_rewrites", "short_answers"})


SHAPE_FIELDS = ("lora_r", "lora_alpha", "lora_dropout", "lora_targets")


def load_learn_config(db) -> LearnConfig:
    """The LearnConfig stored in settings (key 'learn_config'), defaults otherwise."""
    return LearnConfig.from_dict(_stored(db))


def shape_is_stored(db) -> bool:
    """Does the stored config name a LoRA shape (rather than take the default's)?"""
    return any(f in _stored(db) for f in SHAPE_FIELDS)


def _stored(db) -> dict:
    from store.settings import get_setting

    return get_setting(db, SETTINGS_KEY, {}) or {}
