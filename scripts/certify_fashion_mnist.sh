#!/usr/bin/env bash
# Certify the Fashion-MNIST zoo: issue 23's plan, with `bench run` only, one run after another,
# niced and logged. Every run goes to one results store ($RESULTS), so a killed script resumes:
# the harness finds a run by its id and certifies only the images it has not stored yet.
# Each run's predicted CPU time (`bench run --estimate`: one batch timed, for the images left)
# is printed and logged before it starts; a run whose model is not in registry.yaml yet is
# skipped with a log line (scripts/train_fashion_mnist_zoo.sh registers models as they land).
#
#   ESTIMATE_ONLY=1 scripts/certify_fashion_mnist.sh   # the commands and estimates, a total;
#                                                       # nothing certified
#   scripts/certify_fashion_mnist.sh                    # the plan (resumes where it stopped)
#
# Plan (docs/results-fashion-mnist.md): --subset cohen500 (500 images), alpha 0.001, N0 100;
# gaussian, smoothadv, macer, consistency at sigma 0.25/0.5/1 with sequential certification
# up to N = $N, plus one fixed-N twin ($TWIN); dds and diffsmooth at each sigma and the
# multi-scale cascade at B = $B predictions per image; ndc on the first $NDC_IMAGES images.
# The built-in networks run channels-last (--memory-format auto: the harness's choice, in the
# run id; a diffusion model keeps NCHW), at --batch $BATCH.
# Variables: RESULTS, LOG, N, B, TWIN (METHOD:SIGMA), TWIN_IMAGES, DIFF_IMAGES (dds, diffsmooth,
# multiscale), NDC_IMAGES, NDC_B, NDC_SIGMAS, BATCH, MEMORY_FORMAT, SIGMAS, EXTRA_REGISTRY (estimates with scripts/fashion_mnist_standins.py), PYTHON, THREADS
# (torch threads per process, default 1: on this shared 2-core VM one thread forwarded 2-4x
# more samples per second than two, docs/performance.md) and PARALLEL (processes certifying
# the same run at once, sharing its images through the store; default 1).
# Changing N, B, TWIN, NDC_*, MEMORY_FORMAT or a model makes other runs (other run ids): they
# start afresh; BATCH never changes a certificate nor a run id.
set -uo pipefail
cd "$(dirname "$0")/.."
RESULTS=${RESULTS:-results/fashion-mnist-store}
LOG=${LOG:-results/certify-fashion-mnist.log}
ESTIMATE_ONLY=${ESTIMATE_ONLY:-0}
N=${N:-100000}
B=${B:-10000}
TWIN=${TWIN:-gaussian:0.5}
NDC_IMAGES=${NDC_IMAGES:-100}
NDC_B=${NDC_B:-$B}
TWIN_IMAGES=${TWIN_IMAGES:-500}  # the first K of cohen500 (--max-images: not in the run id,
DIFF_IMAGES=${DIFF_IMAGES:-500}  # so a later, larger K extends the same runs)
BATCH=${BATCH:-256}
MEMORY_FORMAT=${MEMORY_FORMAT:-auto}
SIGMAS=${SIGMAS:-0.25 0.5 1}
NDC_SIGMAS=${NDC_SIGMAS:-$SIGMAS}
EXTRA_REGISTRY=${EXTRA_REGISTRY:-}
PY=${PYTHON:-python}
THREADS=${THREADS:-1}
PARALLEL=${PARALLEL:-1}
export OMP_NUM_THREADS=$THREADS MKL_NUM_THREADS=$THREADS
mkdir -p "$(dirname "$LOG")"
if [ -n "$EXTRA_REGISTRY" ] && [ "$ESTIMATE_ONLY" != 1 ]; then
    echo "EXTRA_REGISTRY is for estimates with stand-in models only: set ESTIMATE_ONLY=1" >&2
    exit 2
fi
COMMON=(--dataset fashion-mnist --subset cohen500 --alpha 0.001 --n0 100 --results "$RESULTS"
        --batch "$BATCH" --memory-format "$MEMORY_FORMAT" --quiet)
[ -n "$EXTRA_REGISTRY" ] && COMMON+=(--extra-registry "$EXTRA_REGISTRY")
TOTAL_S=0
FAILED=0

log() { echo "$(date -Is) $*" | tee -a "$LOG"; }

registered() {  # registered NAME: a model entry in registry.yaml (or EXTRA_REGISTRY)
    grep -q "^  $1:" registry.yaml ${EXTRA_REGISTRY:+"$EXTRA_REGISTRY"} 2>/dev/null
}

certify() {  # certify LABEL "MODEL ..." BENCH-RUN-ARGS...: estimate, then run unless estimating
    local label=$1 models=$2; shift 2
    local m
    for m in $models; do
        if ! registered "$m"; then
            log "skip $label: model $m is not in registry.yaml yet"
            return 0
        fi
    done
    local cmd=("$PY" -m bench run "$@" "${COMMON[@]}")
    local estimate
    if ! estimate=$("${cmd[@]}" --estimate 2>&1); then
        log "FAILED estimate $label: ${cmd[*]}: $estimate"; FAILED=$((FAILED + 1)); return 0
    fi
    log "$label: ${estimate##*$'\n'}"
    local seconds=${estimate##*seconds=}
    TOTAL_S=$((TOTAL_S + ${seconds%%[^0-9]*}))
    if [ "$ESTIMATE_ONLY" = 1 ]; then
        log "  would run: nice -n 19 ${cmd[*]}"
        return 0
    fi
    if [[ $estimate == *" 0 images left"* ]]; then
        log "done $label (every image already in $RESULTS)"; return 0
    fi
    log "start $label ($PARALLEL process(es), $THREADS thread(s) each): nice -n 19 ${cmd[*]}"
    local pids=() ok=1 i p
    for ((i = 0; i < PARALLEL; i++)); do
        nice -n 19 "${cmd[@]}" >>"$LOG" 2>&1 &
        pids+=($!)
    done
    for p in "${pids[@]}"; do wait "$p" || ok=0; done
    if [ "$ok" = 1 ]; then
        log "done $label"
    else
        log "FAILED $label"; FAILED=$((FAILED + 1))
    fi
}

log "plan: N=$N (sequential) B=$B twin=$TWIN ndc=$NDC_IMAGES images at B=$NDC_B batch=$BATCH" \
    "memory-format=$MEMORY_FORMAT threads=$THREADS parallel=$PARALLEL results=$RESULTS" \
    "estimate-only=$ESTIMATE_ONLY"
# 1. The training methods: sequential certification up to N (looks at 200 .. 1.2 N).
for method in gaussian smoothadv macer consistency; do
    for s in $SIGMAS; do
        model="fashion-mnist-cnn-$method-$s"
        certify "$method sigma $s sequential" "$model" --method "$method" --sigma "$s" \
            --model "$model" --n "$N" --certification sequential
    done
done
# 2. The fixed-N twin of one of them (bench protocols pairs the two on the same images).
twin_method=${TWIN%%:*} twin_sigma=${TWIN##*:}
certify "$twin_method sigma $twin_sigma fixed-N twin" "fashion-mnist-cnn-$twin_method-$twin_sigma" \
    --method "$twin_method" --sigma "$twin_sigma" --model "fashion-mnist-cnn-$twin_method-$twin_sigma" \
    --n "$N" --certification fixed --max-images "$TWIN_IMAGES"
# 3. The diffusion methods at B predictions per image (N = B // m).
for s in $SIGMAS; do
    certify "dds sigma $s" "fashion-mnist-ddpm fashion-mnist-cnn-clean" --method dds --sigma "$s" \
        --model denoiser=fashion-mnist-ddpm --model classifier=fashion-mnist-cnn-clean --budget "$B" \
        --max-images "$DIFF_IMAGES"
    certify "diffsmooth sigma $s" "fashion-mnist-ddpm fashion-mnist-cnn-gaussian-0.25" \
        --method diffsmooth --sigma "$s" --model denoiser=fashion-mnist-ddpm \
        --model classifier=fashion-mnist-cnn-gaussian-0.25 --budget "$B" --max-images "$DIFF_IMAGES"
done
certify "multiscale cascade" "fashion-mnist-ddpm-multiscale fashion-mnist-cnn-clean" \
    --method multiscale --model denoiser=fashion-mnist-ddpm-multiscale \
    --model classifier=fashion-mnist-cnn-clean --budget "$B" --max-images "$DIFF_IMAGES"
# 4. The noised diffusion classifier (EPNDC: classes x grid UNet passes per sample).
for s in $NDC_SIGMAS; do
    certify "ndc sigma $s" "fashion-mnist-ddpm-cond" --method ndc --sigma "$s" \
        --model conditional=fashion-mnist-ddpm-cond --budget "$NDC_B" --max-images "$NDC_IMAGES"
done
log "total estimated: $(awk "BEGIN {printf \"%.1f\", $TOTAL_S / 3600}") h of one process at" \
    "$THREADS thread(s) for the images left of the runs above that were not skipped; $FAILED failed"
[ "$FAILED" = 0 ]
