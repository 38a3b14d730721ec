#!/usr/bin/env bash
# GPU benchmarks for one device session: decode and training speed against x-transformers
# (bf16; eager, then --compile) and the wall time of `arlm train --preset shakespeare-char` to
# validation loss <= 1.47. Every log goes to $OUT; $OUT/summary.txt collects the headline lines.
#
# Prepare on the CPU machine (the device has no network, and ../shared does not travel):
#   bash ../shared/tools/offline-wheels.sh           # x-transformers + its deps -> ./.whl (git-ignored)
#   mkdir -p runs/data && cp ../shared/data/tinyshakespeare.txt runs/data/    # runs/ is git-ignored
# If the device's python lacks arlm's own dependencies, this script names them; fetch those too:
#   bash ../shared/tools/offline-wheels.sh safetensors tokenizers tqdm pyyaml
# Then run on the device, carrying the two ignored folders (each part fits one 10-minute call):
#   bash benchmarks/gpu.sh runs/data/tinyshakespeare.txt speed         carry: [".whl", "runs/data"]
#   bash benchmarks/gpu.sh runs/data/tinyshakespeare.txt shakespeare   (same carry)
# PART: speed | shakespeare | all (default all). SHAKESPEARE_MINUTES caps the run (default 7).
# A session's device budget (15 min, machine start included) may cover only one part: speed first.
set -uo pipefail
DATA=${1:?usage: bash benchmarks/gpu.sh PATH/TO/tinyshakespeare.txt [speed|shakespeare|all]}
PART=${2:-all}
OUT=${OUT:-bench-out}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
SUMMARY="$OUT/summary.txt"

SITE=$(mktemp -d)
if compgen -G ".whl/*.whl" >/dev/null; then
  $PY -m pip install -q --no-index --no-deps --target "$SITE" .whl/*.whl || echo "wheel install failed" | tee -a "$SUMMARY"
else
  echo "no .whl/*.whl here: run ../shared/tools/offline-wheels.sh and carry .whl" | tee -a "$SUMMARY"
fi
export PYTHONPATH="$PWD/src:$PWD/benchmarks:$SITE${PYTHONPATH:+:$PYTHONPATH}"
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1
$PY - <<'EOF' 2>&1 | tee -a "$SUMMARY"
import importlib, torch
missing = [m for m in ("numpy", "safetensors", "tokenizers", "tqdm", "yaml", "x_transformers")
           if importlib.util.find_spec(m) is None]
print(f"torch {torch.__version__}, cuda {torch.cuda.is_available()}, "
      f"{torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU'}; missing modules: {missing or 'none'}")
EOF

bench() {  # bench NAME SECONDS CMD...: log to $OUT/NAME.log, headline lines to the summary
  local name=$1 limit=$2; shift 2
  echo "== $name: $*" | tee -a "$SUMMARY"
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
  echo "   exit $?" >> "$SUMMARY"
  grep -E "^(batch|compile|--compile|params|ratio|initial|flops|chunked| *[a-zA-Z-]+:)" "$OUT/$name.log" >> "$SUMMARY"
}

if [ "$PART" = speed ] || [ "$PART" = all ]; then
  # time limits sum to < 600 s, one device call; the most informative runs go first
  bench generate-gpu         120 $PY benchmarks/generate.py --preset gpu --repeats 3 --new-tokens 256
  bench train-gpt2            90 $PY benchmarks/train.py --preset gpt2 --repeats 3
  bench generate-gpu-compile 150 $PY benchmarks/generate.py --preset gpu --repeats 3 --new-tokens 256 --compile
  bench train-gpt2-compile   120 $PY benchmarks/train.py --preset gpt2 --repeats 3 --compile
  bench train-enwik8          60 $PY benchmarks/train.py --preset enwik8 --repeats 3
  bench loss-gpt2-vocab       30 $PY benchmarks/loss.py --device cuda --rows 8192 --dim 768 --bf16
fi

if [ "$PART" = shakespeare ] || [ "$PART" = all ]; then
  RUN=runs/gpu-shakespeare-char
  rm -rf "$RUN"
  echo "== shakespeare-char to val loss <= 1.47 (bf16 autocast, --compile, cap ${SHAKESPEARE_MINUTES:-7} min)" | tee -a "$SUMMARY"
  t0=$(date +%s)
  $PY -c 'import sys; from arlm.cli.main import main; sys.exit(main())' train --preset shakespeare-char \
    --data "$DATA" --out "$RUN" --device cuda --compile --no-progress \
    --train.max_minutes "${SHAKESPEARE_MINUTES:-7}" --train.ckpt_every 0 > "$OUT/shakespeare.log" 2>&1 &
  pid=$!
  reached() {  # prints the first validation at or below 1.47 and returns 0, else returns 1
    $PY - "$RUN/metrics.jsonl" <<'EOF'
import json, sys
try:
    lines = open(sys.argv[1]).read().splitlines()
except OSError:
    sys.exit(1)
for line in lines:
    try:
        r = json.loads(line)
    except ValueError:
        continue
    if r.get("val_loss") is not None and r["val_loss"] <= 1.47:
        print(f"reached val loss {r['val_loss']:.4f} at step {r['step']}, trainer elapsed {r['elapsed_s']:.1f} s")
        sys.exit(0)
sys.exit(1)
EOF
  }
  while kill -0 "$pid" 2>/dev/null; do
    if msg=$(reached); then
      echo "   $msg; wall $(( $(date +%s) - t0 )) s since launch (imports, data, compile included)" | tee -a "$SUMMARY"
      kill -TERM "$pid"  # the trainer checkpoints and exits 143; no need to run to max_steps
      break
    fi
    sleep 5
  done
  wait "$pid"; echo "   trainer exit $?" >> "$SUMMARY"
  reached >/dev/null || echo "   val loss 1.47 not reached within the cap; last validations:" | tee -a "$SUMMARY"
  grep val_loss "$RUN/metrics.jsonl" | tail -3 >> "$SUMMARY"
  cp "$RUN/metrics.jsonl" "$RUN/config.yaml" "$OUT/" 2>/dev/null
fi
cat "$SUMMARY"
