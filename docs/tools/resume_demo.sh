#!/usr/bin/env bash
# A cross-validation killed (SIGKILL) during fold 3's training, then resumed with training.resume=true
# (docs/cross-validation.md#a-stopped-cross-validation-resumes). Run from the project's root:
#   docs/tools/resume_demo.sh [archive]        # default: ../shared/data/malaria_cells_50px.zip
# It writes run1.log (the killed run) and run2.log (the resumed one) in the current folder.
set -u
export DO_NOT_TRACK=1 KEDRO_LOGGING_CONFIG=$PWD/conf/logging.yml
ARCHIVE=$(realpath "${1:-../shared/data/malaria_cells_50px.zip}")
P="profile=cpu,ingestion.source=$ARCHIVE,training.epochs=3,cross_validation.compare.quantifiers.resamples=2"
.venv/bin/python -m kedro run --pipelines cross_validation --params "$P" > run1.log 2>&1 &
pid=$!
# fold 3's training has started and logged two epochs: kill it
until grep -q "Running node: train_model_node.*cv_fold_3" run1.log; do sleep 1; done
until [ "$(sed -n '/Running node: train_model_node.*cv_fold_3/,$p' run1.log | grep -c ' full ')" -ge 2 ]; do
  sleep 1
done
kill -9 $pid
wait $pid
echo "killed: exit $?" | tee -a run1.log
/usr/bin/time -v .venv/bin/python -m kedro run --pipelines cross_validation --params "$P,training.resume=true" \
  > run2.log 2>&1
echo "resumed: exit $?"
grep -E "Resuming from epoch|holds no checkpoint" run2.log
