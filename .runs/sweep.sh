#!/bin/bash
cd /work/wt/ranker && export PYTHONPATH=$PWD PATH=/work/main/.venv/bin:$PATH OMP_NUM_THREADS=1
E="--encoder artifacts/encoder"
for wd in 0 0.01 0.1; do
  /usr/bin/time -f "%e s" semirec evaluate --data world --quick --seeds 1 --jobs 2 $E --models youtubenet,cross_bst,semi --set train.weight_decay=$wd --json > .runs/wd_$wd.json 2> .runs/wd_$wd.err
done
for tau in 0.07 0.2; do
  /usr/bin/time -f "%e s" semirec evaluate --data world --quick --seeds 1 --jobs 2 $E --models semi_ccl,semi_video_ccl --set ccl.tau=$tau --json > .runs/tau_$tau.json 2> .runs/tau_$tau.err
done
/usr/bin/time -f "%e s" semirec evaluate --data world --quick --seeds 1 --jobs 2 $E --models semi_ccl,semi_video_ccl --set ccl.use_time=1,ccl.tau=0.7,ccl.records_per_user=1,ccl.epochs=8 --json > .runs/paperccl.json 2> .runs/paperccl.err
