#!/usr/bin/env bash
# Issue 25's measurements on a finished quickstart run (docs/variance-axis.md): Gamma, bits/dim by the
# bound with beta / beta-tilde / Analytic-DPM's variance and by the probability-flow ODE, and FID on
# 1,000 samples at K = 10, 20, 50, 100 steps beside ancestral-1000. Each command's wall time goes to
# RUN/variance_axis_times.tsv. Needs the CPU alone (~50 min on 2 cores); finished steps are skipped.
#   bash scripts/variance_axis.sh runs/quickstart && .venv/bin/python scripts/variance_axis_report.py runs/quickstart
set -euo pipefail
RUN=${1:-runs/quickstart}
DDPM=${DDPM:-.venv/bin/ddpm-kit}
IMAGES=${IMAGES:-64}      # test images for the bounds (the differences between rows are paired: same images, same noise)
SAMPLES=${SAMPLES:-1000}  # samples per FID row
TIMES="$RUN/variance_axis_times.tsv"
touch "$TIMES"

step() {  # step NAME OUTPUT_FILE COMMAND...: run unless OUTPUT_FILE exists, record the wall time
    local name=$1 out=$2; shift 2
    if [ -f "$out" ]; then echo "skip $name ($out exists)"; return; fi
    echo "== $name"
    local start=$(date +%s.%N)
    "$@"
    printf '%s\t%.1f\n' "$name" "$(echo "$(date +%s.%N) - $start" | bc)" >> "$TIMES"
}

step gamma "$RUN/analytic/gamma.json" $DDPM analytic-gamma "$RUN" --images 256
for variance in fixed_beta fixed_beta_tilde; do
    step "bpd $variance" "$RUN/eval/bpd_limit${IMAGES}_variance${variance}.json" \
        $DDPM evaluate "$RUN" --metric bpd --param limit=$IMAGES --param variance=$variance
done
step "bpd analytic" "$RUN/eval/bpd_analytic_limit${IMAGES}.json" $DDPM evaluate "$RUN" --metric bpd_analytic --param limit=$IMAGES
for K in 10 20 50 100; do
    for variance in fixed_beta fixed_beta_tilde; do
        step "bpd $variance K=$K" "$RUN/eval/bpd_limit${IMAGES}_variance${variance}_steps$K.json" \
            $DDPM evaluate "$RUN" --metric bpd --param limit=$IMAGES --param variance=$variance --param steps=$K
    done
    step "bpd analytic K=$K" "$RUN/eval/bpd_analytic_limit${IMAGES}_steps$K.json" \
        $DDPM evaluate "$RUN" --metric bpd_analytic --param limit=$IMAGES --param steps=$K
    step "bpd analytic optimal K=$K" "$RUN/eval/bpd_analytic_limit${IMAGES}_steps${K}_trajectoryoptimal.json" \
        $DDPM evaluate "$RUN" --metric bpd_analytic --param limit=$IMAGES --param steps=$K --param trajectory=optimal
done
step "bpd ode" "$RUN/eval/bpd_ode_limit${IMAGES}.json" $DDPM evaluate "$RUN" --metric bpd_ode --param limit=$IMAGES
for K in 10 20 50 100; do
    step "fid analytic K=$K" "$RUN/eval/fid_analytic-$K.json" \
        $DDPM evaluate "$RUN" --metric fid --num-samples $SAMPLES --sampler analytic --steps $K
    step "fid analytic optimal K=$K" "$RUN/eval/fid_analytic-$K-trajectoryoptimal.json" \
        $DDPM evaluate "$RUN" --metric fid --num-samples $SAMPLES --sampler analytic --steps $K --sampler-param trajectory=optimal
    step "fid analytic no clip K=$K" "$RUN/eval/fid_analytic-$K-clip_pixel0.json" \
        $DDPM evaluate "$RUN" --metric fid --num-samples $SAMPLES --sampler analytic --steps $K --sampler-param clip_pixel=0
    step "fid analytic optimal no clip K=$K" "$RUN/eval/fid_analytic-$K-trajectoryoptimal-clip_pixel0.json" \
        $DDPM evaluate "$RUN" --metric fid --num-samples $SAMPLES --sampler analytic --steps $K \
        --sampler-param trajectory=optimal --sampler-param clip_pixel=0
    step "fid respaced beta K=$K" "$RUN/eval/fid_respaced-$K-variancefixed_beta.json" \
        $DDPM evaluate "$RUN" --metric fid --num-samples $SAMPLES --sampler respaced --steps $K --sampler-param variance=fixed_beta
    step "fid respaced beta-tilde K=$K" "$RUN/eval/fid_respaced-$K-variancefixed_beta_tilde.json" \
        $DDPM evaluate "$RUN" --metric fid --num-samples $SAMPLES --sampler respaced --steps $K --sampler-param variance=fixed_beta_tilde
    step "fid dpm-solver++ sde K=$K" "$RUN/eval/fid_diffusers-sde-dpm-solver++-$K.json" \
        $DDPM evaluate "$RUN" --metric fid --num-samples $SAMPLES --sampler diffusers-sde-dpm-solver++ --steps $K
done
step "fid ancestral 1000" "$RUN/eval/fid_ancestral.json" \
    $DDPM evaluate "$RUN" --metric fid --num-samples $SAMPLES --sampler ancestral
