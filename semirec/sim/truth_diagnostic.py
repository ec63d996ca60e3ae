"""TRUTH DIAGNOSTIC (reads the world's truth): offline top-k quality of a ranker over the whole catalog.

Separates the model from the serving path: the demo's online figures come from recall + Triton +
the live loop; this scores the same ONNX request graph offline, at the history's last watches
(each user's state just before the watch, the watch's time, its session's intent in the truth),
over every video of the catalog, against popularity (complete watches so far), content
similarity (cosine to the mean vector of the user's newest 10 products and 10 videos), random
(the mean) and the oracle. Value = mean true P(complete) of each policy's top-k.

``among_candidates`` repeats every policy within the candidates that serving's recall
(:class:`semirec.serving.recall.Recall`, popularity = complete watches of the last 24 hours) finds for
the user at that moment: what the demo's online figures compare (random = the candidates' mean).
``among_candidates.terms`` splits the truth's logit into its terms (category taste, style, format,
session intent, quality: :meth:`semirec.worlds.truth.Truth.logit_terms`) and says, per term, how much
it varies within the candidates, what the oracle keeps without it, and how closely the model's and
similarity's orders follow it (:func:`follows`) beside the truth's own order: where the model's gap
to the oracle lies.

    python -m semirec.sim.truth_diagnostic --onnx RUN/models/ranker/1/model.onnx [--users 300] [--json]
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import click
import numpy as np

# (user_id, state, candidate ids, candidate vectors, at) -> scores
Scorer = Callable[[str, Any, list[str], np.ndarray, float], np.ndarray]


def _top(p: np.ndarray, scores: np.ndarray, k: int, rng: np.random.Generator) -> float:
    """Mean of ``p`` over the top-``k`` by ``scores`` (ties broken at random)."""
    return float(p[np.argsort(-(scores + 1e-9 * rng.random(len(scores))))[:k]].mean())


def _policies(p: np.ndarray, model: np.ndarray | None, pop: np.ndarray, sim: np.ndarray | None,
              k: int, rng: np.random.Generator) -> dict[str, float]:
    out = {"random": float(p.mean()), "oracle": _top(p, p, k, rng),
           "popularity": _top(p, pop, k, rng)}
    if sim is not None:
        out["similarity"] = _top(p, sim, k, rng)
    if model is not None:
        out["model"] = _top(p, model, k, rng)
    return out


def _ranks(x: np.ndarray) -> np.ndarray:
    """Ranks of ``x``, ties given their mean rank."""
    order = np.argsort(x, kind="stable")
    rank = np.empty(len(x))
    rank[order] = np.arange(len(x))
    _, tie, count = np.unique(x, return_inverse=True, return_counts=True)
    return (np.bincount(tie, weights=rank) / count)[tie]


def follows(terms: list[dict[str, np.ndarray]], scores: list[np.ndarray]) -> dict[str, float]:
    """Per term, the mean over cases of the rank correlation (Spearman) between ``scores`` and
    the term within the case (only the order within a case matters; a case where the term or the
    scores do not vary is left out of that term's mean)."""
    out = {}
    for name in terms[0]:
        corr = []
        for t, s in zip(terms, scores, strict=True):
            a, b = _ranks(t[name]), _ranks(s)
            if a.std() > 0 and b.std() > 0:
                corr.append(float(np.corrcoef(a, b)[0, 1]))
        out[name] = round(float(np.mean(corr)), 3) if corr else float("nan")
    return out


def _term_table(terms: list[dict[str, np.ndarray]], p: list[np.ndarray],
                ranked: dict[str, list[np.ndarray]], k: int,
                rng: np.random.Generator) -> dict[str, dict[str, float]]:
    """Per term: its spread within the candidates (mean of per-case standard deviations), the
    oracle's top-``k`` without it (ranking by the other terms), and how each scorer's order
    follows it (:func:`follows`) beside how the truth's own logit does (``truth_corr``)."""
    follow = {"truth": follows(terms, [sum(t.values()) for t in terms]),
              **{who: follows(terms, scores) for who, scores in ranked.items() if scores}}
    out: dict[str, dict[str, float]] = {}
    for n in terms[0]:
        without = [_top(pc, sum(v for m, v in t.items() if m != n), k, rng)
                   for t, pc in zip(terms, p, strict=True)]
        out[n] = {"spread": round(float(np.mean([t[n].std() for t in terms])), 3),
                  "oracle_without": round(float(np.mean(without)), 4),
                  **{f"{who}_corr": f[n] for who, f in follow.items()}}
    return out


def serving_cases(world: Any, vectors: np.ndarray, cases: int) -> Iterator[tuple[Any, ...]]:
    """``(watch, user state before it, serving's recall candidates then, complete watches so far
    by video)`` for the last ``cases`` of every third video watch of the history (no truth read).
    Recall's popularity is the complete watches of the 24 hours before the watch."""
    from semirec.core.contracts import Domain
    from semirec.core.sequences import UserState, apply
    from semirec.serving.catalog import CatalogIndex
    from semirec.serving.popularity import PopularitySnapshot
    from semirec.serving.recall import Recall

    catalog = CatalogIndex(vectors.shape[1])
    catalog.upsert([it["item_id"] for it in world.items], vectors,
                   [Domain(it["domain"]) for it in world.items])
    snapshot = PopularitySnapshot()
    recall = Recall(catalog, snapshot)
    events = world.events
    watches = [i for i, e in enumerate(events) if e.domain == "video"]
    states: dict[str, UserState] = {}
    pop: Counter[str] = Counter()
    recent: list[tuple[float, str]] = []  # complete watches (ts, video), for recall's popularity
    done = 0
    for i in watches[-3 * cases::3][-cases:]:
        for e in events[done:i]:
            apply(states.setdefault(e.user_id, UserState()), [(e, done)])
            if e.domain == "video" and e.complete:
                pop[e.item_id] += 1
                recent.append((e.ts, e.item_id))
            done += 1
        e = events[i]
        state = states.get(e.user_id)
        snapshot.counts = dict(Counter(v for t, v in recent if t > e.ts - 24 * 3600))
        snapshot.ranked = sorted(snapshot.counts, key=lambda v: -snapshot.counts[v])
        snapshot.version += 1
        yield e, state, [c.item_id for c in recall.candidates(state)], pop


def diagnose(world: Any, vectors: np.ndarray, scorer: Scorer | None, *, cases: int = 100,
             k: int = 10) -> dict[str, Any]:
    """Mean true P(complete) of each policy's top-``k`` over the catalog's videos, and within
    serving's recall candidates (``among_candidates``)."""
    rows = {it["item_id"]: i for i, it in enumerate(world.items)}
    videos = [it["item_id"] for it in world.items if it["domain"] == "video"]
    column = {v: j for j, v in enumerate(videos)}
    vv = vectors[[rows[v] for v in videos]]
    names = ("model", "popularity", "similarity", "random", "oracle")
    out: dict[str, list[float]] = {p: [] for p in names}
    among: dict[str, list[float]] = {p: [] for p in names}
    sizes: list[int] = []
    truth = getattr(world, "truth", None)
    terms: list[dict[str, np.ndarray]] = []  # per case, within the candidates (with a truth)
    term_p: list[np.ndarray] = []
    term_scores: dict[str, list[np.ndarray]] = {"model": [], "similarity": []}
    rng = np.random.default_rng(0)
    picked = 0
    for e, state, candidates, pop in serving_cases(world, vectors, cases):
        picked += 1
        p = world.item_probs(e.user_id, videos, e.ts)
        popularity = np.array([pop[v] for v in videos], float)
        sim = None
        if state is not None and (state.product or state.video):
            newest = [x.item_id for x in (*state.product[-10:], *state.video[-10:])]
            sim = vv @ vectors[[rows[r] for r in newest]].mean(0)
        model = scorer(e.user_id, state, videos, vv, e.ts) if scorer is not None else None
        for name, value in _policies(p, model, popularity, sim, k, rng).items():
            out[name].append(value)
        cols = np.array([column[c] for c in candidates], np.int64)
        sizes.append(len(cols))
        for name, value in _policies(p[cols], None if model is None else model[cols],
                                     popularity[cols], None if sim is None else sim[cols], k,
                                     rng).items():
            among[name].append(value)
        if truth is not None and model is not None and sim is not None and len(cols) > 1:
            terms.append(truth.item_terms(e.user_id, [videos[c] for c in cols], e.ts))
            term_p.append(p[cols])
            term_scores["model"].append(np.asarray(model, np.float64)[cols])
            term_scores["similarity"].append(np.asarray(sim, np.float64)[cols])

    def means(d: dict[str, list[float]]) -> dict[str, float | None]:
        return {name: round(float(np.mean(v)), 4) if v else None for name, v in d.items()}

    among_out: dict[str, Any] = {**means(among), "candidates": float(np.mean(sizes))}
    if terms:
        among_out.update(terms=_term_table(terms, term_p, term_scores, k, rng),
                         term_cases=len(terms))
    return {"diagnostic": "TRUTH DIAGNOSTIC (reads the world's truth)", "k": k, "cases": picked,
            **means(out), "among_candidates": among_out}


def request_scorer(world: Any, vectors: np.ndarray, run: Callable[[dict[str, np.ndarray]], Any],
                   *, seq_len: int, skipped: bool, id_buckets: int) -> Scorer:
    """Scores of ``run`` (a request graph: [1, ...] tensors -> [1, C] scores) on requests built as
    serving builds them: the incomplete watches when ``skipped`` (``+usr``), and with
    ``id_buckets`` each candidate's watch / complete-watch counts before the request, from the
    world's events (what serving reads from Redis for ``+id``)."""
    from semirec.core.contracts import Domain
    from semirec.serving.catalog import CatalogIndex
    from semirec.serving.features import identity_tensors, rank_request

    catalog = CatalogIndex(vectors.shape[1])
    catalog.upsert([it["item_id"] for it in world.items], vectors,
                   [Domain(it["domain"]) for it in world.items])
    watched: dict[str, list[float]] = {}
    completed: dict[str, list[float]] = {}
    for e in world.events:
        if e.domain == "video":
            watched.setdefault(e.item_id, []).append(e.ts)
            if e.complete:
                completed.setdefault(e.item_id, []).append(e.ts)
    times = {k: np.sort(np.asarray(v)) for k, v in watched.items()}
    done = {k: np.sort(np.asarray(v)) for k, v in completed.items()}
    empty = np.zeros(0)

    def score(user_id: str, state: Any, ids: list[str], candidates: np.ndarray, at: float) -> np.ndarray:
        tensors = rank_request(state, candidates, catalog, at=at, seq_len=seq_len,
                               skipped=skipped).tensors
        if id_buckets:
            w = np.array([np.searchsorted(times.get(i, empty), at) for i in ids], np.float32)
            c = np.array([np.searchsorted(done.get(i, empty), at) for i in ids], np.float32)
            tensors = {**tensors, **identity_tensors(ids, w, c, id_buckets)}
        return np.asarray(run(tensors)).reshape(-1)[: len(candidates)]

    return score


def onnx_scorer(model_onnx: Path, world: Any, vectors: np.ndarray, seq_len: int = 50,
                id_buckets: int = 1 << 18) -> Scorer:
    """Scores of the exported graph as serving computes them (:func:`request_scorer`), with
    ``id_buckets`` for a graph with item identity (the models' default, 2^18)."""
    from semirec.serving.ranking import OnnxRanker

    ranker = OnnxRanker(model_onnx, id_buckets=id_buckets)
    return request_scorer(world, vectors, ranker.rank_sync, seq_len=seq_len,
                          skipped="skipped" in ranker.names, id_buckets=ranker.id_buckets)


def torch_scorer(model: Any, world: Any, vectors: np.ndarray, seq_len: int = 50) -> Scorer:
    """:func:`onnx_scorer` for a torch ranker in process (its request graph's scores)."""
    from semirec.trainer.registry.export import torch_scores

    def run(tensors: dict[str, np.ndarray]) -> np.ndarray:
        return torch_scores(model, {k: v[0] for k, v in tensors.items()})

    return request_scorer(world, vectors, run, seq_len=seq_len,
                          skipped=getattr(model, "user_rate", None) is not None,
                          id_buckets=0 if model.identity is None
                          else model.identity.bias.num_embeddings)


def demo_encoder_cached(world: Any) -> Path:
    """The encoder ``semirec demo`` pre-trained for ``world`` (where the demo caches it); a clear
    error when it is not there: vectors of another encoder would score the ranker on the wrong items."""
    from semirec.sim.orchestrator import DemoOptions, demo_encoder_path

    ckpt = demo_encoder_path(world, DemoOptions().cache_dir)
    if not (ckpt / "encoder.safetensors").is_file():
        raise click.UsageError(f"the demo's encoder for this world is not cached ({ckpt}): run "
                               "`semirec demo` first or name the ranker's encoder with --encoder")
    return ckpt


@click.command()
@click.option("--onnx", "model_onnx", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              default=None, help="The ranker's model.onnx (a version folder of the model repository).")
@click.option("--users", default=300, show_default=True)
@click.option("--size", default="demo", show_default=True)
@click.option("--new-videos", default=30, show_default=True)
@click.option("--seed", default=0, show_default=True)
@click.option("--cases", default=100, show_default=True)
@click.option("--encoder", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="The item encoder the ranker was trained on. Default: the one `semirec demo` "
                   "pre-trained for this world (its cache, $SEMIREC_DEMO_CACHE).")
@click.option("--json", "as_json", is_flag=True)
def main(model_onnx: Path | None, users: int, size: str, new_videos: int, seed: int, cases: int,
         encoder: Path | None, as_json: bool) -> None:
    """TRUTH DIAGNOSTIC: offline top-10 quality of the ranker, popularity, similarity, random, oracle."""
    from semirec.trainer.offline.vectors import item_vectors
    from semirec.worlds import load_world

    world = load_world("world", seed=seed, size=size, users=users, new_videos=new_videos)
    encoder = encoder or demo_encoder_cached(world)
    vectors = item_vectors(world.items, checkpoint=encoder)
    scorer = onnx_scorer(model_onnx, world, vectors) if model_onnx else None
    result = diagnose(world, vectors, scorer, cases=cases)
    result["encoder"] = str(encoder)
    click.echo(json.dumps(result) if as_json else
               "\n".join(f"{k}: {v}" for k, v in result.items()))


if __name__ == "__main__":
    main()
