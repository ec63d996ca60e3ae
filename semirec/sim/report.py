"""The end of a run: the summary (``--json``), its checks, and a report directory.

The report directory holds ``summary.json``, ``index.html`` and five PNG plots: throughput,
lag, freshness, online completion per policy over time (every recommendation, history replay
included) and the same for the audience's traffic alone, with promotions, the interest shift,
the first minute after it and the new videos marked.
"""

from __future__ import annotations

import html
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from semirec.sim.quality import FIRST_AFTER_SHIFT_S, POLICIES, QualityLog

PLOTS = ("throughput", "lag", "freshness", "completion", "completion_live")
# summary key -> column of the tables (report page, the CLI's summary)
COMPLETION_COLUMNS = (
    ("online_completion", "whole run"),
    ("online_completion_before_shift", "before shift"),
    ("online_completion_after_shift", "after shift"),
    ("online_completion_live", "live"),
    ("online_completion_live_before_shift", "live before shift"),
    ("online_completion_live_after_shift", "live after shift"),
    ("online_completion_first_minute_after_shift", "live 1st min after shift"),
)


def _percentile(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 2) if values else None


def summarize(result: Any, quality: QualityLog, audience: Any, state: Any, *, missing: list[str],
              crashed: list[str], error: str | None, started: float,
              facts: dict[str, Any] | None = None) -> dict[str, Any]:
    """The run's figures and checks; ``ok`` is true only if every check passed."""
    q = quality.summary(new_since_wall=result.new_videos_wall, shift_world=result.shift_world)
    ingest_lag, rec_lag = result.final_ingest_lag, result.final_recommend_lag
    ingested = None if ingest_lag is None else result.events_published - ingest_lag
    without = sorted(result.active_users - result.users_recommended)
    overall = q["online_completion"]
    checks = {
        "every_event_ingested": ingest_lag == 0 and result.events_published > 0,
        "every_active_user_recommended": bool(result.active_users) and not without,
        "lag_back_to_zero": ingest_lag == 0 and rec_lag == 0,
        "nothing_crashed": not crashed and error is None,
        "beats_popularity": bool(overall) and overall["semirec"] > overall["popularity"],
        "all_parts_present": not missing,
    }
    return {
        **q,
        "promotions": len(state.promotions),
        "promotion_log": [{"at": round(t, 3), "model_version": v} for t, v in state.promotions],
        "fallbacks": result.fallbacks,
        "fallbacks_by_reason": dict(result.fallback_reasons),
        "recommendations": result.recommendations,
        "freshness_p50_ms": _percentile(result.freshness_ms, 50),
        "freshness_p99_ms": _percentile(result.freshness_ms, 99),
        "events_ingested": ingested,
        "events_published": result.events_published,
        "history_events": result.history_events,
        "history_paused_s": round(result.history_paused_s, 1),
        "users_active": len(result.active_users),
        "users_recommended": len(result.users_recommended & result.active_users),
        "users_without_recommendation": without[:20],
        "final_lag": {"ingest": ingest_lag, "recommend": rec_lag},
        "model_versions": dict(result.model_versions),
        "unscored": dict(result.unscored),
        "audience": audience.stats(),
        "live_started_at": result.live_started,
        "interest_shift_at": result.shift_wall,
        "new_videos_at": result.new_videos_wall,
        "missing_parts": missing,
        "crashed": crashed,
        "error": error,
        "checks": checks,
        "ok": all(checks.values()),
        "seconds": round(time.time() - started, 1),
        **(facts or {}),
    }


def _marks(ax: Any, summary: dict[str, Any], t0: float) -> None:
    if summary.get("live_started_at"):
        ax.axvline(summary["live_started_at"] - t0, color="tab:gray", ls="-.", lw=1,
                   label="history ends, audience starts")
    for i, p in enumerate(summary.get("promotion_log") or []):
        ax.axvline(p["at"] - t0, color="tab:red", ls="--", lw=1,
                   label="promotion" if i == 0 else None)
    if summary.get("interest_shift_at"):
        ax.axvline(summary["interest_shift_at"] - t0, color="black", lw=1.5, label="interest shift")
    if summary.get("new_videos_at"):
        ax.axvline(summary["new_videos_at"] - t0, color="tab:green", ls=":", lw=1.5, label="new videos")


def write_plots(out: Path, summary: dict[str, Any], result: Any, quality: QualityLog) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t0 = result.started
    tl = result.timeline
    t = np.array([s.t - t0 for s in tl])
    files = []

    def save(fig: Any, name: str) -> None:
        fig.tight_layout()
        path = out / f"{name}.png"
        fig.savefig(path, dpi=90)
        plt.close(fig)
        files.append(path)

    fig, ax = plt.subplots(figsize=(8, 3))
    if len(tl) > 1:
        dt = np.diff(t).clip(min=1e-3)
        ax.plot(t[1:], np.diff([s.events for s in tl]) / dt, label="events/s published")
        ax.plot(t[1:], np.diff([s.recs for s in tl]) / dt, label="recommendations/s received")
    _marks(ax, summary, t0)
    ax.set(xlabel="seconds since the stream started", ylabel="per second", title="Throughput")
    ax.legend(loc="upper right", fontsize=8)
    save(fig, "throughput")

    fig, ax = plt.subplots(figsize=(8, 3))
    for attr, label in (("ingest_lag", "ingest (events)"), ("recommend_lag", "recommend (user-updates)")):
        ax.plot(t, [np.nan if getattr(s, attr) is None else getattr(s, attr) for s in tl], label=label)
    _marks(ax, summary, t0)
    ax.set(xlabel="seconds since the stream started", ylabel="messages", title="Consumer lag")
    ax.legend(loc="upper right", fontsize=8)
    save(fig, "lag")

    fig, ax = plt.subplots(figsize=(8, 3))
    for attr, label in (("freshness_p50", "p50"), ("freshness_p99", "p99")):
        ax.plot(t, [np.nan if getattr(s, attr) is None else getattr(s, attr) for s in tl], label=label)
    _marks(ax, summary, t0)
    ax.set(xlabel="seconds since the stream started", ylabel="ms",
           title="Freshness: event appended -> recommendation published (per sample interval)")
    ax.legend(loc="upper right", fontsize=8)
    save(fig, "freshness")

    for name, live_only, title in (
            ("completion", False, "Online completion per policy, every recommendation (5 s bins)"),
            ("completion_live", True, "Online completion per policy, the audience only (5 s bins)")):
        fig, ax = plt.subplots(figsize=(8, 4.2))
        series = quality.series(t0, 5.0, live_only=live_only)
        for policy in POLICIES:
            ax.plot(series["t"], series[policy], label=policy, lw=2 if policy == "semirec" else 1)
        _marks(ax, summary, t0)
        if live_only and summary.get("interest_shift_at"):
            shift = summary["interest_shift_at"] - t0
            ax.axvspan(shift, shift + FIRST_AFTER_SHIFT_S, color="tab:orange", alpha=0.12,
                       label="first minute after the shift")
            if summary.get("live_started_at"):
                ax.set_xlim(left=summary["live_started_at"] - t0 - 5)
        ax.set(xlabel="seconds since the stream started", ylabel="mean true P(complete) of top-k",
               title=title)
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.22), fontsize=8, ncol=5)
        save(fig, name)
    return files


def _table(rows: list[tuple[str, Any]]) -> str:
    body = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>" for k, v in rows)
    return f"<table>{body}</table>"


def write_report(out: Path, summary: dict[str, Any], result: Any, quality: QualityLog,
                 state: Any = None) -> Path:
    """Write summary.json, the PNGs and index.html under ``out``; returns the HTML page."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    plots = write_plots(out, summary, result, quality)
    columns = [summary.get(key) or {} for key, _ in COMPLETION_COLUMNS]
    head = "".join(f"<th>{html.escape(label)}</th>" for _, label in COMPLETION_COLUMNS)
    scored_live = html.escape(str(summary.get("recommendations_scored_live")))
    policy_rows = "".join(
        f"<tr><th>{p}</th>" + "".join(f"<td>{d.get(p, '-')}</td>" for d in columns) + "</tr>"
        for p in POLICIES)
    checks = _table([(k, "PASS" if v else "FAIL") for k, v in summary["checks"].items()])
    figures = _table([(k, summary.get(k)) for k in (
        "events_published", "events_ingested", "recommendations", "fallbacks", "promotions",
        "freshness_p50_ms", "freshness_p99_ms", "users_active", "users_recommended", "seconds")])
    missing = "".join(f"<li>{html.escape(m)}</li>" for m in summary.get("missing_parts") or [])
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>semirec demo report</title>
<style>body{{font-family:sans-serif;max-width:60em;margin:2em auto}}
table{{border-collapse:collapse;margin:1em 0}}
th,td{{border:1px solid #ccc;padding:.3em .6em;text-align:left}}</style>
</head><body>
<h1>semirec demo: {'all checks passed' if summary['ok'] else 'some checks failed'}</h1>
<h2>Online completion (mean true P(complete) of the top-k, same candidates, same moment)</h2>
<p>"whole run" includes the history replay (ranker/1 was trained on it); "live" is the
audience's traffic alone; recommendations scored live: {scored_live}</p>
<table><tr><th>policy</th>{head}</tr>
{policy_rows}</table>
<h2>Checks</h2>{checks}
{'<h2>Missing parts</h2><ul>' + missing + '</ul>' if missing else ''}
<h2>Figures</h2>{figures}
{''.join(f'<h2>{p.stem}</h2><img src="{p.name}" alt="{p.stem}">' for p in plots)}
<p>Full summary: <a href="summary.json">summary.json</a></p>
</body></html>
"""
    index = out / "index.html"
    index.write_text(page)
    return index
