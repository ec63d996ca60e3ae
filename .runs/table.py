import json, sys
for path in sys.argv[1:]:
    r = json.load(open(path))
    print(f"\n<!-- {path}: {r['command']} wall {r['wall_s']} s; oracle {r['oracle_auc']} observable {r.get('observable_oracle_auc')} -->")
    print(r['stats'])
    cols = ["auc", "gauc", "hr@10_popneg", "auc_shown", "auc_short_video", "auc_long_video", "hr@3"]
    print("| model | AUC | GAUC | HR@10 pop-neg | AUC shown | AUC ≤2 videos | AUC >2 videos | HR@3 (paper) | val AUC | s/run | best / last epoch |")
    print("|---|" + "---|" * 10)
    seeds = r['seeds']
    for x in r["results"]:
        cells = []
        for c in cols:
            if c not in x: cells.append("-"); continue
            cells.append(f"{x[c]:.4f}" + (f" ± {x[c+'_std']:.4f}" if seeds > 1 else ""))
        ep = f"{x.get('best_epoch', ''):g} / {x.get('epochs', ''):g}" if 'best_epoch' in x else ""
        va = f"{x['val_auc']:.4f}" if 'val_auc' in x else ""
        print(f"| {x['model']} | " + " | ".join(cells) + f" | {va} | {x['seconds']:.0f} | {ep} |")
    for name, o in (("*oracle*", r.get("oracle")), ("*observable oracle*", r.get("observable_oracle"))):
        if o:
            print(f"| {name} | " + " | ".join(f"{o[c]:.4f}" if c in o else "-" for c in cols) + " | | | |")
    for x in r["results"]:
        if "ccl_time_only_acc" in x:
            print(f"CCL {x['model']}: records {x['ccl_records']}, loss {x['ccl_loss_first']} -> {x['ccl_loss_last']}, pairing acc {x['ccl_pairing_acc']}, time-only {x['ccl_time_only_acc']}, chance {x['ccl_chance']}")
