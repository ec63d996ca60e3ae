"""Evaluation results as a markdown table and a PNG bar chart."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from semirec.trainer.offline.evaluate import TABLE_METRICS as METRICS


def markdown(result: dict[str, Any]) -> str:
    lines = [
        f"# Evaluation: {result['data']}" + (" (quick)" if result.get("quick") else ""),
        "",
        f"seeds: {result['seeds']}; oracle AUC: {result.get('oracle_auc')}; "
        f"observable oracle AUC: {result.get('observable_oracle_auc')}; "
        f"stats: {result.get('stats', {})}",
        "",
        "| model | " + " | ".join(METRICS) + " | s/run |",
        "|---|" + "---|" * (len(METRICS) + 1),
    ]
    for row in result["results"]:
        cells = [f"{row[m]:.4f} ± {row[f'{m}_std']:.4f}" if m in row else "-" for m in METRICS]
        lines.append(f"| {row['model']} | " + " | ".join(cells) + f" | {row['seconds']:.0f} |")
    oracle = result.get("oracle")
    if oracle:
        for label, truth in (("*oracle (true P(complete))*", oracle),
                             ("*observable oracle*", result.get("observable_oracle"))):
            if truth:
                cells = [f"{truth[m]:.4f}" if m in truth else "-" for m in METRICS]
                lines.append(f"| {label} | " + " | ".join(cells) + " | |")
    groups = list(result["results"][0].get("auc_by_video_len", {}))
    if groups:
        lines += ["", "AUC by the user's video-sequence length at the watch (cf. Fig. 5):",
                  "", "| model | " + " | ".join(groups) + " |", "|---|" + "---|" * len(groups)]
        rows = [(r["model"], r["auc_by_video_len"]) for r in result["results"]]
        if oracle and "auc_by_video_len" in oracle:
            rows.append(("*oracle*", oracle["auc_by_video_len"]))
        for name, by in rows:
            lines.append(f"| {name} | " + " | ".join(f"{by.get(g, float('nan')):.4f}"
                                                     for g in groups) + " |")
    notes = [f"- {r['model']}: {r['note']}" for r in result["results"] if r.get("note")]
    if notes:
        lines += ["", *notes]
    if result.get("command"):
        lines += ["", f"command: `{result['command']}`"]
    return "\n".join(lines) + "\n"


def bar_chart(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["results"]
    names = [r["model"] for r in rows]
    fig, axes = plt.subplots(1, len(METRICS), figsize=(4.2 * len(METRICS), 4.5), sharey=False)
    for ax, metric in zip(axes, METRICS, strict=True):
        values = [r.get(metric, 0.0) for r in rows]
        errors = [r.get(f"{metric}_std", 0.0) for r in rows]
        colors = ["tab:red" if n == "semi_ccl" else "tab:blue" for n in names]
        ax.barh(names, values, xerr=errors, color=colors)
        if metric == "auc" and result.get("oracle_auc") is not None:
            ax.axvline(result["oracle_auc"], color="black", linestyle="--", label="oracle")
            ax.legend(loc="lower right")
        low = min(values) - 0.05 if metric == "auc" else 0.0
        ax.set_xlim(max(0.0, low), min(1.0, max(values) * 1.1 + 0.02))
        ax.set_title(metric)
        ax.invert_yaxis()
    fig.suptitle(f"{result['data']}: mean ± std over {result['seeds']} seed(s)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(result: dict[str, Any], directory: Path) -> tuple[Path, Path]:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    stem = f"{result['data']}{'-quick' if result.get('quick') else ''}"
    if result.get("vectors", "encoder") != "encoder":
        stem += f"-{result['vectors']}-vectors"
    if result.get("train_fraction", 1.0) < 1.0:
        stem += f"-train{result['train_fraction']:g}"
    md, png = directory / f"{stem}.md", directory / f"{stem}.png"
    md.write_text(markdown(result))
    bar_chart(result, png)
    return md, png
