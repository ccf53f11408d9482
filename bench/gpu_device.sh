#!/usr/bin/env bash
# The device side of bench/gpu.py, on a lent GPU machine (no network, no trl/gguf/sqlite-utils/
# datasets, an older transformers and peft). A call may carry 64 MiB, the tracked files take about
# 20 of them, and the GGUF (~93 MiB) is split in three pieces of at most ~38 MiB
# (.devmodel/part1/smollm2.gguf.part00 and .part01, .devmodel/part2/smollm2.gguf.part02), so three
# calls, back to back (a warm machine keeps /tmp only while idle less than ~30 s):
#
#   1. carry [".devmodel/part1/smollm2.gguf.part00"]:                 bash bench/gpu_device.sh part1
#   2. carry [".devmodel/part1/smollm2.gguf.part01"]:                 bash bench/gpu_device.sh part1
#      (each copies the pieces of .devmodel/part1/ it finds to /tmp/gguf/, where the warm machine keeps them)
#   3. carry [".whl", ".devmodel/part2", ".devmodel/SHA256", "bench/gpu_vectors.npz"]:
#                                                                     bash bench/gpu_device.sh
#      (nvidia-smi; wheels into /tmp/site; the GGUF reassembled and checked; bench/gpu.py,
#       results and log.txt in $OUT)
#
# .whl/ and .devmodel/ are ignored by git (.git/info/exclude, .gitignore), and so is
# bench/gpu_vectors.npz (MiniLM vectors, `python bench/gpu.py --make-vectors`): each travels only
# when `carry` names it. The last call refuses to start without the vectors or with too few pieces.
set -euo pipefail
cd "$(dirname "$0")/.."
trap 'echo "gpu_device.sh: FAILED (exit $?) at line $LINENO: $BASH_COMMAND" >&2' ERR
step() { echo; echo "== $(date +%T) $*"; }
GGUF_PARTS=/tmp/gguf
MODEL=/tmp/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf  # a folder of its own: the loader reads its parent

if [ "${1:-}" = part1 ]; then
    step "copying .devmodel/part1 to $GGUF_PARTS"
    ls .devmodel/part1/smollm2.gguf.part* >/dev/null  # none carried: fails here
    mkdir -p "$GGUF_PARTS"
    cp -v .devmodel/part1/smollm2.gguf.part* "$GGUF_PARTS"/
    ls -l "$GGUF_PARTS"
    df -h /tmp
    exit 0
fi

OUT=${OUT:-/tmp/gpu-out}
mkdir -p "$OUT"
[ -f bench/gpu_vectors.npz ] || {
    echo "no bench/gpu_vectors.npz: carry it (it is ignored by git) in this call" >&2; exit 2; }
for piece in part00 part01; do  # calls 1 and 2, on this warm machine
    [ -f "$GGUF_PARTS/smollm2.gguf.$piece" ] || {
        echo "no $GGUF_PARTS/smollm2.gguf.$piece: run 'bash bench/gpu_device.sh part1' carrying" \
             ".devmodel/part1/smollm2.gguf.$piece first, on this warm machine" >&2; exit 2; }
done

step nvidia-smi
nvidia-smi || echo "nvidia-smi failed (going on)"

step "python and the image's versions"
python3 - <<'EOF'
import importlib.metadata as md, sys
print(sys.version)
for n in ("torch", "transformers", "peft", "accelerate", "huggingface-hub", "tokenizers", "safetensors",
          "numpy", "pyarrow", "pandas", "fsspec", "sentence-transformers", "trl", "datasets", "gguf"):
    try:
        print(f"  {n:22} {md.version(n)}")
    except md.PackageNotFoundError:
        print(f"  {n:22} -")
import torch
print("  cuda available:", torch.cuda.is_available(), "| torch cuda:", torch.version.cuda)
EOF

step "installing the wheels into /tmp/site"
[ -d .whl ] || { echo "no .whl/ here: carry it in this call" >&2; exit 2; }
wheels=(.whl/*.whl)
# transformers 5.23 needs huggingface-hub >= 1.31 (the image's transformers 5.17 takes < 2.0):
# take the shipped 1.33 only if the image's hub is older.
if ! python3 -c 'import huggingface_hub as h, sys; from packaging.version import Version as V; sys.exit(V(h.__version__) < V("1.31"))'; then
    echo "the image's huggingface-hub is older than 1.31: installing $(ls .whl/hub/)"
    wheels+=(.whl/hub/*.whl)
fi
printf '  %s\n' "${wheels[@]}"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "${wheels[@]}"
export PYTHONPATH=/tmp/site:$PWD

step "imports from /tmp/site"
python3 - <<'EOF'
import huggingface_hub, transformers, peft, trl, datasets, gguf, sqlite_utils, accelerate, torch
for m in (transformers, peft, trl, datasets, gguf, huggingface_hub, accelerate, torch):
    print(f"  {m.__name__:16} {getattr(m, '__version__', '?'):12} {m.__file__}")
from trl import DPOTrainer, SFTTrainer  # noqa: F401
import learning.learner, learning.evaluate, learning.gate, learning.train  # noqa: F401,E401
print("  project imports ok")
EOF

step "reassembling the GGUF into $MODEL"
ls "$GGUF_PARTS"/smollm2.gguf.part* >/dev/null 2>&1 || {
    echo "no $GGUF_PARTS/smollm2.gguf.part*: run 'bash bench/gpu_device.sh part1' (carrying each piece of" \
         ".devmodel/part1 in turn) first, on this warm machine" >&2
    exit 2; }
mkdir -p "$(dirname "$MODEL")"
cat "$GGUF_PARTS"/smollm2.gguf.part* .devmodel/part2/smollm2.gguf.part* > "$MODEL"
want=$(cut -d' ' -f1 .devmodel/SHA256)
got=$(sha256sum "$MODEL" | cut -d' ' -f1)
ls -l "$MODEL"
if [ "$want" != "$got" ]; then
    echo "sha256 mismatch: want $want, got $got (parts: $(ls "$GGUF_PARTS" .devmodel/part2 | tr '\n' ' '))" >&2
    exit 3
fi
echo "  sha256 ok ($got)"

step "bench/gpu.py"
set +e
PYTHONUNBUFFERED=1 python3 bench/gpu.py --gguf "$MODEL" --out "$OUT" 2>&1 | tee "$OUT/log.txt"
rc=${PIPESTATUS[0]}
set -e
step "after the run (exit $rc)"
nvidia-smi --query-gpu=name,memory.used,memory.total,utilization.gpu --format=csv || true
ls -l "$OUT"
exit "$rc"
