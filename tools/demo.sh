#!/usr/bin/env bash
# The whole mission in one command (what `make demo` runs after installing):
#   the shipped model on eight real frames -> data -> inspect -> fit MarsSeg -> evaluate -> convert int8/float32 (+ parity) ->
#   camera folder -> edge-seg run (overlays, labels) -> benchmarks/run.py -> one final screen.
#
# Settings (environment variables):
#   DATA=../shared/data/ai4mars-msl-256  real Curiosity NAVCAM frames: an AI4Mars folder (its root
#                                        or any folder under it), read at SIZE
#   DATA=path/to/mars_for_students.npz   or the course file instead of synthetic data
#   SIZE=128x128                         frame size for an AI4Mars folder (an npz keeps its own)
#   LOSS=...                             the training loss (default: trainer fit's, rover-safe)
#   OUT=demo                             where everything goes
#   EPOCHS=5 WIDTH=0.25 LIMIT=1500       the training budget (a few minutes on 2 CPU cores)
#   FRAMES=3000 TEST_FRAMES=300          size of the synthetic set
#   CAMERA_FRAMES=200 RUNS=100           edge run and benchmark sizes
#   PYTHON_BIN=.venv/bin                 where trainer, edge-seg and python are
set -euo pipefail
cd "$(dirname "$0")/.."

OUT="${OUT:-demo}"
EPOCHS="${EPOCHS:-5}"
WIDTH="${WIDTH:-0.25}"
LIMIT="${LIMIT:-1500}"
FRAMES="${FRAMES:-3000}"
TEST_FRAMES="${TEST_FRAMES:-300}"
CAMERA_FRAMES="${CAMERA_FRAMES:-200}"
RUNS="${RUNS:-100}"
SIZE="${SIZE:-128x128}"
BIN="${PYTHON_BIN:-.venv/bin}"
RUN="$OUT/runs/marsseg"
STEPS=8
# elapsed time counts from `make demo`'s start (the install) when it passes DEMO_START
START=$((SECONDS - ($(date +%s) - ${DEMO_START:-$(date +%s)})))
export TF_CPP_MIN_LOG_LEVEL=2 PYTHONUNBUFFERED=1

step() {  # step N "what": a progress line with the time so far
  printf '\n[%s/%s] %s  (%dm%02ds elapsed)\n' "$1" "$STEPS" "$2" $(((SECONDS - START) / 60)) $(((SECONDS - START) % 60))
}
quiet() {  # run a command, keep its log, show its tail if it fails
  local log="$1"; shift
  if ! "$@" > "$log" 2>&1; then
    tail -25 "$log"; echo "demo: step failed; full log in $log" >&2; exit 1
  fi
}

mkdir -p "$OUT/logs"
step 1 "the shipped rover model on eight real NAVCAM frames (docs/samples/ai4mars, CC BY 4.0)"
rm -rf "$OUT/shipped"
quiet "$OUT/logs/shipped.log" "$BIN/edge-seg" run --camera-dir docs/samples/ai4mars/frames \
    --labels docs/samples/ai4mars/labels --overlay --out "$OUT/shipped"
grep -E "^model: |^frames [0-9]+|mIoU" "$OUT/logs/shipped.log" | head -4 | sed 's/^/  /'
echo "  overlays: $OUT/shipped/overlays/"

FIT_EXTRA=()
[[ -n "${LOSS:-}" ]] && FIT_EXTRA+=(--loss "$LOSS")
if [[ -n "${DATA:-}" && -d "$DATA" ]]; then
  step 2 "data: $DATA (real AI4Mars NAVCAM frames, read at $SIZE)"
  FIT_EXTRA+=(--size "$SIZE")
elif [[ -n "${DATA:-}" ]]; then
  step 2 "data: $DATA (the real file)"
  [[ -f "$DATA" ]] || { echo "demo: no data at DATA=$DATA (give an npz or an AI4Mars folder)" >&2; exit 1; }
else
  DATA="$OUT/data/synthetic.npz"
  step 2 "data: synthetic Mars terrain, $FRAMES frames + $TEST_FRAMES test frames -> $DATA"
  if [[ ! -f "$DATA" ]]; then
    quiet "$OUT/logs/data.log" "$BIN/python" tools/make_synthetic.py "$DATA" --frames "$FRAMES" \
        --test-frames "$TEST_FRAMES" --preview "$OUT/data/preview.png"
  fi
fi
INSPECT_EXTRA=()
[[ -d "$DATA" ]] && INSPECT_EXTRA+=(--size "$SIZE")
quiet "$OUT/logs/inspect.log" "$BIN/trainer" inspect "$DATA" --out "$OUT/inspect" "${INSPECT_EXTRA[@]}"
grep -v "^INFO" "$OUT/logs/inspect.log" | head -6 | sed 's/^/  /'

step 3 "trainer fit: MarsSeg width $WIDTH, $EPOCHS epochs on up to $LIMIT frames -> $RUN"
rm -rf "$RUN"
"$BIN/trainer" fit "$DATA" --arch marsseg --width "$WIDTH" --epochs "$EPOCHS" --lr 1e-3 \
    --limit "$LIMIT" --runs "$OUT/runs" --name marsseg "${FIT_EXTRA[@]}" 2>&1 | tee "$OUT/logs/fit.log" \
    | awk '/val_miou/ {match($0, /val_miou: [0-9.]+/); split($0, part, " - ");
                       printf "  epoch %d  %s  (%s)\n", ++epoch, substr($0, RSTART, RLENGTH), part[2]; fflush()}
           /^done after/ {print "  " $0; fflush()}' || true
[[ -f "$RUN/model.keras" ]] || { tail -25 "$OUT/logs/fit.log"; echo "demo: training failed" >&2; exit 1; }

step 4 "trainer evaluate (validation split)"
quiet "$OUT/logs/evaluate.log" "$BIN/trainer" evaluate "$RUN" "$DATA"
grep -E "^mean IoU|^big_rock:" "$OUT/logs/evaluate.log" | sed 's/^/  /' || true

step 5 "trainer convert --int8 --float32 (integer-only check, parity report)"
quiet "$OUT/logs/convert.log" "$BIN/trainer" convert "$RUN" --int8 --float32 --data "$DATA"
grep -E "^(parity on|model |float32 |int8 )" "$OUT/logs/convert.log" | sed 's/^/  /' || true

step 6 "edge-seg run on a camera folder of $CAMERA_FRAMES held-out frames, as files at their own size (overlays, labels)"
rm -rf "$OUT/camera" "$OUT/camera-labels" "$OUT/edge"
quiet "$OUT/logs/export.log" "$BIN/python" tools/export_frames.py "$DATA" --run "$RUN" \
    --frames-dir "$OUT/camera" --npz "$OUT/eval.npz" --limit "$CAMERA_FRAMES"
quiet "$OUT/logs/edge.log" "$BIN/edge-seg" run --camera-dir "$OUT/camera" \
    --model "$RUN/model_int8.tflite" --out "$OUT/edge" --overlay --labels "$OUT/camera-labels"
sed -n '/^frames [0-9]*  errors/,$p' "$OUT/logs/edge.log" | sed 's/^/  /'

step 7 "benchmarks/run.py: float32 vs int8, 1 and 2 threads, $RUNS runs"
quiet "$OUT/logs/bench.log" "$BIN/python" benchmarks/run.py --models "$RUN/model_float32.tflite" \
    "$RUN/model_int8.tflite" --data "$OUT/eval.npz" --threads 1,2 --runs "$RUNS" --out "$OUT/report"

step 8 "summary"
"$BIN/python" tools/demo_summary.py "$OUT" --seconds $((SECONDS - START))
