#!/bin/bash
cd /work/wt/ranker && export PYTHONPATH=$PWD PATH=/work/main/.venv/bin:$PATH OMP_NUM_THREADS=1
/usr/bin/time -f "%e s" semirec evaluate --data ml100k --quick --seeds 3 --jobs 2 --encoder artifacts/encoder --models pop,youtubenet,din,bst,cross_bst,sasrec,semi,semi_ccl,semi_product,semi_product_ccl,semi_video,semi_video_ccl,youtubenet+id,cross_bst+id,semi+id --json --report .runs/report > .runs/ml_quick.json 2> .runs/ml_quick.err
