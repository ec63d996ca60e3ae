#!/bin/bash
cd /work/wt/ranker && export PYTHONPATH=$PWD PATH=/work/main/.venv/bin:$PATH OMP_NUM_THREADS=1
while pgrep -f "next.sh" > /dev/null; do sleep 5; done
TAU=$(python - <<'PY'
import json
best = None
for t in ("0.07", "0.1", "0.2"):
    r = json.load(open(f".runs/tau_{t}.json"))
    v = sum(x["val_auc"] for x in r["results"]) / len(r["results"])
    print(f"tau {t}: mean val AUC {v:.4f}", file=open(".runs/tau_choice.txt", "a"))
    if best is None or v > best[1]:
        best = (t, v)
print(best[0])
PY
)
echo "chosen $TAU" >> .runs/tau_choice.txt
/usr/bin/time -f "%e s" semirec evaluate --data world --quick --seeds 3 --jobs 2 --encoder artifacts/encoder --models pop,youtubenet,din,bst,cross_bst,sasrec,semi,semi_ccl,youtubenet+id,cross_bst+id,semi_ccl+id --set ccl.tau=$TAU --json --report .runs/report > .runs/world_quick.json 2> .runs/world_quick.err
