#!/usr/bin/env bash
# The Table 2 sweep of docs/reproducing-the-paper.md: every row of recipes/mini, the eps rows whose
# differences the paper's findings rest on first, each beside its second training seed
# (recipes/mini/seeds). ~24 minutes a row on a 2-core CPU; run it alone (no tests or benchmarks
# beside it: its train and sample times are published).
# Each run is paired with the first run it can be paired with (the same test noise, the same sample
# noise); the --pair options add the other comparisons the findings rest on (B minus A; for a seed-1
# row against seed-1 eps + L_simple only the samples' line is new: its bound is paired with it anyway).
# Interrupt it at any time: the same command keeps finished rows and resumes the unfinished one.
set -euo pipefail
cd "$(dirname "$0")/.."
m=recipes/mini
exec .venv/bin/ddpm-kit sweep \
  $m/eps_fixed_beta.toml $m/seeds/eps_fixed_beta_seed1.toml \
  $m/eps_vlb_fixed_beta.toml $m/seeds/eps_vlb_fixed_beta_seed1.toml \
  $m/eps_fixed_beta_tilde.toml $m/seeds/eps_fixed_beta_tilde_seed1.toml \
  $m/x0_fixed_beta.toml $m/mu_vlb_fixed_beta.toml $m/mu_mse_fixed_beta.toml $m/eps_vlb_learned.toml \
  $m/mu_vlb_fixed_beta_tilde.toml $m/mu_vlb_learned.toml $m/improved_hybrid.toml \
  --pair eps_vlb_fixed_beta_seed1:eps_fixed_beta_seed1 --pair eps_fixed_beta_tilde_seed1:eps_fixed_beta_seed1 \
  --pair mu_vlb_fixed_beta:eps_vlb_fixed_beta --pair mu_mse_fixed_beta:mu_vlb_fixed_beta --pair mu_vlb_fixed_beta_tilde:mu_vlb_fixed_beta \
  --pair eps_vlb_learned:eps_vlb_fixed_beta --pair mu_vlb_learned:mu_vlb_fixed_beta \
  --pair improved_hybrid:eps_vlb_learned \
  --report-dir docs/results/mini --doc docs/reproducing-the-paper.md "$@"
