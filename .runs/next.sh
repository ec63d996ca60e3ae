#!/bin/bash
cd /work/wt/ranker && export PYTHONPATH=$PWD PATH=/work/main/.venv/bin:$PATH OMP_NUM_THREADS=1
while pgrep -f "sweep.sh" > /dev/null; do sleep 5; done
/usr/bin/time -f "%e s" semirec evaluate --data world --quick --seeds 1 --jobs 2 --encoder artifacts/encoder --models semi_ccl,semi_video_ccl --set ccl.tau=0.1,train.weight_decay=0.01 --json > .runs/tau_0.1.json 2> .runs/tau_0.1.err
