"""The generated two-domain world: sessions, product clicks and video watches over time.

Each user has sessions in distinct hours (more in the afternoon and evening). A session has a
short-term intent (a category drawn from the user's current product interests); its product
clicks mostly follow that intent and its video watches are exposures that the user finishes
or not, with the probability in :mod:`semirec.worlds.truth`. Clicks and watches are interleaved, so a
watch is often preceded by clicks that reveal the session's intent: the product sequence
carries information about video completion that the (sparse) video sequence does not.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from semirec.core.contracts import Domain, Event
from semirec.worlds.catalog import Side, build_catalog
from semirec.worlds.categories import CATEGORIES
from semirec.worlds.config import WorldConfig
from semirec.worlds.population import Population, build_population
from semirec.worlds.truth import Truth, calibrate_intercept, sigmoid
from semirec.worlds.world import World

# relative share of sessions starting in each hour of the day (UTC)
HOURLY = np.array([2, 1, 1, 1, 1, 2, 3, 5, 6, 6, 6, 7, 9, 8, 6, 6, 7, 8, 10, 12, 13, 12, 8, 4], float)
MAX_EVENTS_PER_SESSION = 40
CLICK_FOLLOWS_INTENT = 0.6  # share of clicks in the session's intent category
EXPOSURE_MIX = (0.45, 0.25, 0.30)  # watch exposures: by video interest / by intent / by popularity
A_STYLE_CLICK = 1.0
ANY = -1
USER_BLOCK = 4096  # users per block when drawing session hours (bounds memory)


def _categorical(probs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One draw per row of a row-stochastic matrix."""
    cdf = probs.cumsum(1)
    return np.minimum((cdf < rng.random((len(probs), 1)) * cdf[:, -1:]).sum(1), probs.shape[1] - 1)


def _by_popularity(side: Side, cats: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Items drawn in proportion to exp(log_pop), within each given category (ANY: all items)."""
    out = np.empty(len(cats), np.int64)
    for c in np.unique(cats):
        members = np.arange(len(side.ids)) if c == ANY else np.flatnonzero(side.category == c)
        cdf = np.exp(side.log_pop[members]).cumsum()
        rows = np.flatnonzero(cats == c)
        out[rows] = members[np.searchsorted(cdf, rng.random(len(rows)) * cdf[-1], side="right")
                            .clip(max=len(members) - 1)]
    return out


def _by_style(side: Side, cats: np.ndarray, taste: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Items drawn with prob. ∝ exp(style match + log_pop) within each category (Gumbel-max)."""
    out = np.empty(len(cats), np.int64)
    dims = side.style.shape[1]
    for c in np.unique(cats):
        members = np.flatnonzero(side.category == c)
        rows = np.flatnonzero(cats == c)
        score = A_STYLE_CLICK * taste[rows] @ side.style[members].T / np.sqrt(dims) + side.log_pop[members]
        out[rows] = members[np.argmax(score + rng.gumbel(size=score.shape), axis=1)]
    return out


def _without_new(videos: Side, new: int) -> Side:
    """The videos with the last ``new`` ones never exposed (zero weight) in the history."""
    if not new:
        return videos
    log_pop = videos.log_pop.copy()
    log_pop[len(log_pop) - new:] = -np.inf  # the first 10 videos cover every category
    return replace(videos, log_pop=log_pop)


def _sessions(cfg: WorldConfig, users: Population, rng: np.random.Generator):
    """Per session: user, hour slot, start ts, click and watch counts."""
    slots = cfg.days * 24
    wanted = 1 + rng.poisson(users.activity * cfg.sessions_per_day * cfg.days)
    n_sess = np.minimum(wanted, slots)
    log_p = np.log(np.tile(HOURLY / HOURLY.sum(), cfg.days))
    s_user = np.repeat(np.arange(cfg.users), n_sess)
    rank = np.arange(len(s_user)) - np.repeat(np.cumsum(n_sess) - n_sess, n_sess)
    s_slot = np.empty(len(s_user), np.int64)
    for lo in range(0, cfg.users, USER_BLOCK):  # Gumbel top-k: hours without replacement, ∝ HOURLY
        hi = min(lo + USER_BLOCK, cfg.users)
        ranked = np.argsort(-(log_p + rng.gumbel(size=(hi - lo, slots))), axis=1)
        rows = (s_user >= lo) & (s_user < hi)
        s_slot[rows] = ranked[s_user[rows] - lo, rank[rows]]
    s_start = cfg.start_ts + s_slot * 3600 + rng.integers(0, 1200, len(s_user))
    clicks = rng.poisson(cfg.clicks_per_session, len(s_user))
    watches = rng.poisson(cfg.watches_per_session, len(s_user))
    clicks[(clicks + watches) == 0] = 1
    watches = np.minimum(watches, MAX_EVENTS_PER_SESSION)
    clicks = np.minimum(clicks, MAX_EVENTS_PER_SESSION - watches)
    return s_user, s_slot, s_start, clicks, watches


def generate_world(cfg: WorldConfig, seed: int = 0) -> World:
    rng_catalog, rng_users, rng_sessions, rng_outcomes = (
        np.random.default_rng(s) for s in np.random.SeedSequence([seed, 5]).spawn(4))
    catalog = build_catalog(cfg, rng_catalog)
    users = build_population(cfg, rng_users)
    rng = rng_sessions
    s_user, s_slot, s_start, clicks, watches = _sessions(cfg, users, rng)
    truth = Truth(cfg, users, catalog.videos, {}, products=catalog.products)
    s_intent = _categorical(truth.product_interest(s_user, s_start.astype(float)), rng)
    keys = zip(s_user.tolist(), s_slot.tolist(), strict=True)
    truth.intents = dict(zip(keys, s_intent.tolist(), strict=True))

    # events: each session's clicks and watches in random order, 5-50 s apart, inside its hour
    size = clicks + watches
    e_sess = np.repeat(np.arange(len(size)), size)
    first = np.cumsum(size) - size
    pos = np.arange(len(e_sess)) - first[e_sess]
    order = np.lexsort((rng.random(len(e_sess)), e_sess))
    is_watch = (pos >= clicks[e_sess])[order]
    gaps = 5 + np.minimum(rng.exponential(40.0, len(e_sess)), 45.0).astype(np.int64)
    elapsed = np.cumsum(gaps)
    elapsed -= (elapsed - gaps)[first][e_sess]
    e_ts = (s_start[e_sess] + elapsed).astype(float)
    e_user = s_user[e_sess]
    e_intent = s_intent[e_sess]

    # product clicks: the session intent or the user's current interests, then style taste
    ci = np.flatnonzero(~is_watch)
    cat = np.where(rng.random(len(ci)) < CLICK_FOLLOWS_INTENT, e_intent[ci],
                   _categorical(truth.product_interest(e_user[ci], e_ts[ci]), rng))
    clicked = _by_style(catalog.products, cat, users.product_style[e_user[ci]], rng)

    # video watches: exposures by interest / intent / popularity; completion from the truth
    wi = np.flatnonzero(is_watch)
    mode = rng.choice(3, size=len(wi), p=EXPOSURE_MIX)
    cat = np.where(mode == 0, _categorical(truth.video_interest(e_user[wi], e_ts[wi]), rng),
                   np.where(mode == 1, e_intent[wi], ANY))
    shown = _by_popularity(_without_new(catalog.videos, cfg.new_videos), cat, rng)
    raw = truth.raw_logit(e_user[wi], shown, e_ts[wi], e_intent[wi])
    truth.intercept = calibrate_intercept(raw, cfg.complete_rate)
    prob = sigmoid(raw + truth.intercept)
    complete = rng_outcomes.random(len(wi)) < prob

    item = np.empty(len(e_sess), np.int64)
    item[ci], item[wi] = clicked, shown
    done = np.zeros(len(e_sess), bool)
    done[wi] = complete
    p_of = np.full(len(e_sess), np.nan)
    p_of[wi] = prob

    events: list[Event] = []
    true_prob: dict[str, float] = {}
    p_ids, v_ids = catalog.products.ids, catalog.videos.ids
    for k, i in enumerate(np.lexsort((e_user, e_ts)).tolist()):
        event_id = f"g{seed}-{k:07d}"
        uid, ts = users.ids[e_user[i]], float(e_ts[i])
        if is_watch[i]:
            events.append(Event(event_id, uid, v_ids[item[i]], Domain.VIDEO, "watch", ts, bool(done[i])))
            true_prob[event_id] = float(p_of[i])
        else:
            events.append(Event(event_id, uid, p_ids[item[i]], Domain.PRODUCT, "click", ts))
    params = {"seed": seed, **cfg.to_dict(), "intercept": truth.intercept,
              "categories": [c.slug for c in CATEGORIES]}
    new_ids = set(v_ids[len(v_ids) - cfg.new_videos:]) if cfg.new_videos else set()
    items = [it for it in catalog.items if it["item_id"] not in new_ids]
    new_items = [it for it in catalog.items if it["item_id"] in new_ids]
    return World("world", items, events, true_prob, truth.item_probs, params, new_items, truth)
