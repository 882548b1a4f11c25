#!/usr/bin/env bash
# Build one of the models shipped inside the package (atfnn/packaged/<corpus>-atfnn): train the configuration on all
# speakers of the corpus (`atfnn train --final`) for the median kept epoch of its cross-validated run in
# results/<corpus>-atfnn, then copy its weights and write its card (training data, licence terms, labels, the
# cross-validated UAR).
#
#   scripts/build_packaged_model.sh                  # CASIA at ../shared/data/casia, run in runs/packaged-casia
#   CORPUS=emodb scripts/build_packaged_model.sh     # EmoDB at ../shared/data/emodb -> atfnn/packaged/emodb-atfnn
#   DATA=/data/casia PYTHON=.venv/bin/python THREADS=1 scripts/build_packaged_model.sh
#   STAGE=package scripts/build_packaged_model.sh    # only the second step, from an already trained run
#
# When a better configuration lands, set CONFIG and CV to it and rerun; the card takes its numbers from CV.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
CORPUS=${CORPUS:-casia}                   # casia | emodb: one packaged model per corpus
case "$CORPUS" in
  casia) DEFAULT_CONFIG=configs/casia_atfnn_v1.yaml ;;  # the reading the shipped CASIA model was trained with
  emodb) DEFAULT_CONFIG=configs/emodb_atfnn_v2.yaml ;;  # the reading the shipped EmoDB model was trained with
  *) echo "error: CORPUS=$CORPUS; packaged models are built for casia or emodb" >&2; exit 2 ;;
esac
CONFIG=${CONFIG:-$DEFAULT_CONFIG}
CV=${CV:-results/$CORPUS-atfnn}           # the exported cross-validated run: epoch count and UAR
DATA=${DATA:-../shared/data/$CORPUS}      # the corpus root
PRECISION=${PRECISION:-bf16-lstm}         # bf16 autocast in the Bi-LSTM only: fp32's accuracy (docs/performance.md)
THREADS=${THREADS:-0}                     # torch threads, 0 = its default; 1 on a machine other jobs keep busy
RUN=${RUN:-runs/packaged-$CORPUS}
OUT=${OUT:-atfnn/packaged/$CORPUS-atfnn}  # its folder name is the packaged model's name
STAGE=${STAGE:-all}                       # all | package

if [ "$STAGE" = all ]; then
  # final_epochs reads the kept (best) epoch of every fold from CV's done.json files and takes their median.
  EPOCHS=$("$PYTHON" -c "from atfnn.experiment import final_epochs; print(final_epochs('$CV'))")
  echo "training $CONFIG on all speakers of $CORPUS for $EPOCHS epochs (median kept epoch of $CV), precision $PRECISION"
  nice -n 10 "$PYTHON" -m atfnn train "$CONFIG" --final --epochs "$EPOCHS" --out "$RUN" --no-progress \
    --set corpus.root="$DATA" --set train.precision="$PRECISION" --set train.threads="$THREADS"
fi
"$PYTHON" -m atfnn.packaged.build "$RUN/final/model" --cv "$CV" --config "$CONFIG" --out "$OUT"
