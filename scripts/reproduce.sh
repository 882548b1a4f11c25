#!/usr/bin/env bash
# Issue 8's runs, in the order they were run on the 2-core development machine (docs/results.md). Every command
# resumes: rerun this script after an interruption and finished folds are skipped. After each run its small files
# (no weights) are exported to results/<run>/, which is what the repository keeps.
#
#   scripts/reproduce.sh                 # everything below, in order
#   scripts/reproduce.sh casia-atnn      # one run by name
#
# JOBS (default 2) folds train at once; EXTRA is added to every train command (e.g. JOBS=1 EXTRA="--set
# train.threads=1" for two copies of this script side by side, each on its own list of runs; a later --seeds in
# EXTRA overrides the entry's). Runs marked "monitored" also log the test speaker's UAR per epoch
# (train.monitor_test, analysis only: selection never sees it, training is unchanged). To add seeds to a run whose
# results/ export is all that is left, copy results/<run> to runs/<run> first: its finished folds are skipped (the
# fold set it names in foldset.json is in results/folds/; `atfnn train` writes it again into runs/<run>/folds/).
# The export stores each fold set once in results/folds/<corpus>-<fingerprint>/, uids relative to the corpus root.
set -euo pipefail
cd "$(dirname "$0")/.."
ATFNN=${ATFNN:-.venv/bin/atfnn}
JOBS=${JOBS:-2}
EXTRA=${EXTRA:-}
MONITOR="--set train.monitor_test=true"

declare -A CMD=(
  [casia-atfnn]="configs/casia_atfnn_v1.yaml --seeds 3"
  [casia-atnn]="configs/casia_atnn_v1.yaml --seeds 3 $MONITOR"
  [casia-afnn]="configs/casia_afnn_v1.yaml --seeds 3 $MONITOR"
  [casia-atfnn-spknorm]="configs/casia_atfnn_spknorm.yaml $MONITOR"
  [casia-tfnn]="configs/casia_tfnn_v1.yaml --seeds 3 $MONITOR"
  [emodb-2s-atfnn]="configs/emodb_atfnn_v1.yaml $MONITOR"  # on the superseded 2-s copy of EmoDB
  [casia-atfnn-spknorm-aug]="configs/casia_atfnn_spknorm_aug.yaml $MONITOR"
  [casia-atfnn-utterancenorm]="configs/casia_atfnn_utterancenorm.yaml $MONITOR"
  [casia-atfnn-spknorm-reg]="configs/casia_atfnn_spknorm_reg.yaml $MONITOR"
  [casia-atfnn-spknorm-reg-ema]="configs/casia_atfnn_spknorm_reg_ema.yaml $MONITOR"
  [casia-atfnn-spknorm-reg-ema-spkval]="configs/casia_atfnn_spknorm_reg_ema_spkval.yaml $MONITOR"
  [casia-atfnn-spknorm-reg-seed1]="configs/casia_atfnn_spknorm_reg.yaml --set train.seed=1 $MONITOR"
  [casia-atfnn-spknorm-reg-adv]="configs/casia_atfnn_spknorm_reg_adv.yaml $MONITOR"
  [casia-atfnn-spknorm-reg-adv-lr]="configs/casia_atfnn_spknorm_reg_adv_lr.yaml $MONITOR"
  [casia-atfnn-spknorm-reg-embnorm]="configs/casia_atfnn_spknorm_reg_embnorm.yaml $MONITOR"
  [casia-atfnn-gnorm]="configs/casia_atfnn_gnorm.yaml"
  # The default reading of 2026-12-02 (configs/paper_v2.yaml); both trained one fold at a time each, side by side
  # (JOBS=1 --set train.threads=1 in the session that made them).
  [casia-atfnn-v2]="configs/casia_atfnn_v2.yaml --seeds 3 $MONITOR"  # seed 0 on the AMD EPYC (af71fb3); seeds 1-2 to add from its export
  [emodb-atfnn]="configs/emodb_atfnn_v2.yaml $MONITOR"
  # The convergence study (docs/results.md): each option alone on the first reading, the default reading under
  # inner-LOSO with 3 seeds, Table III's ablations on the default reading, then the combinations.
  [casia-atfnn-long]="configs/casia_atfnn_long.yaml $MONITOR"
  [casia-atfnn-htk]="configs/casia_atfnn_htk.yaml $MONITOR"
  [casia-atfnn-encoding]="configs/casia_atfnn_encoding.yaml $MONITOR"
  [casia-atfnn-silence]="configs/casia_atfnn_silence.yaml $MONITOR"
  [casia-atfnn-trainhop]="configs/casia_atfnn_trainhop.yaml $MONITOR"
  [casia-atfnn-cosine]="configs/casia_atfnn_cosine.yaml $MONITOR"
  [casia-atfnn-innerloso]="configs/casia_atfnn_innerloso.yaml --seeds 3 $MONITOR"
  [casia-atfnn-combo]="configs/casia_atfnn_combo.yaml --seeds 3 $MONITOR"
  [casia-atfnn-gnorm-long]="configs/casia_atfnn_gnorm_long.yaml $MONITOR"
  [casia-atnn-gnorm-long]="configs/casia_atnn_gnorm_long.yaml $MONITOR"
  [casia-afnn-gnorm-long]="configs/casia_afnn_gnorm_long.yaml $MONITOR"
  [casia-tfnn-gnorm-long]="configs/casia_tfnn_gnorm_long.yaml $MONITOR"
  [casia-atfnn-combo-encoding]="configs/casia_atfnn_combo_encoding.yaml --seeds 3 $MONITOR"
  [casia-atnn-v2]="configs/casia_atnn_v2.yaml --seeds 3 $MONITOR"
  [casia-afnn-v2]="configs/casia_afnn_v2.yaml --seeds 3 $MONITOR"
  [casia-tfnn-v2]="configs/casia_tfnn_v2.yaml --seeds 3 $MONITOR"
  # The default from 2026-12-03 on (configs/paper.yaml, the combination): its ATFNN is casia-atfnn-combo (the same
  # configuration, tests/test_config.py), Table III's ablations and EmoDB on it.
  [casia-atnn-v3]="configs/casia_atnn.yaml --seeds 3 $MONITOR"
  [casia-afnn-v3]="configs/casia_afnn.yaml --seeds 3 $MONITOR"
  [casia-tfnn-v3]="configs/casia_tfnn.yaml --seeds 3 $MONITOR"
  [emodb-atfnn-v3]="configs/emodb_atfnn.yaml $MONITOR"
  # Issue 22, item 3: the combination under inner-LOSO selection, 3 seeds.
  [casia-atfnn-combo-innerloso]="configs/casia_atfnn_combo_innerloso.yaml --seeds 3 $MONITOR"
)
ORDER=(casia-atfnn casia-atnn casia-afnn casia-atfnn-spknorm casia-tfnn emodb-2s-atfnn casia-atfnn-spknorm-aug
       casia-atfnn-utterancenorm casia-atfnn-spknorm-reg casia-atfnn-spknorm-reg-ema casia-atfnn-spknorm-reg-ema-spkval
       casia-atfnn-spknorm-reg-seed1 casia-atfnn-spknorm-reg-adv casia-atfnn-spknorm-reg-adv-lr
       casia-atfnn-spknorm-reg-embnorm casia-atfnn-gnorm casia-atfnn-v2 emodb-atfnn
       casia-atnn-v2 casia-afnn-v2 casia-tfnn-v2 casia-atfnn-silence casia-atfnn-htk casia-atfnn-encoding
       casia-atfnn-trainhop casia-atfnn-cosine casia-atfnn-long casia-atfnn-innerloso casia-atfnn-combo
       casia-atfnn-gnorm-long casia-atfnn-combo-encoding
       casia-atnn-gnorm-long casia-afnn-gnorm-long casia-tfnn-gnorm-long
       casia-atnn-v3 casia-afnn-v3 casia-tfnn-v3 emodb-atfnn-v3 casia-atfnn-combo-innerloso)

for run in "${@:-${ORDER[@]}}"; do
  [[ -n "${CMD[$run]:-}" ]] || { echo "unknown run $run; one of: ${ORDER[*]}" >&2; exit 2; }
  echo "== $run: $(date -u +%FT%TZ)"
  # shellcheck disable=SC2086
  $ATFNN train ${CMD[$run]} $EXTRA --out "runs/$run" --jobs "$JOBS" --no-progress
  $ATFNN report "runs/$run" --export "results/$run" > /dev/null
  echo "== $run done: $(date -u +%FT%TZ)"
done
