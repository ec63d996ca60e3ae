"""ONNX export of a ranker as one request graph with a candidate axis.

Inputs (one user, C candidates): ``video`` [Lv, d] float32, ``video_age`` [Lv] int64 (hours
before the request), ``video_mask`` [Lv] bool (True = real entry), the same three for
``product``, and ``candidates`` [C, d] float32. Output: ``score`` [C] = P(watched completely).
Lv, Lp and C are dynamic. The user side runs once per call, whatever C is.
A sequence with no entries is passed as one padded slot with mask False. Inputs a model does
not read (the product sequence of a video-only model) are absent from its graph; :func:`run_onnx`
feeds only the inputs a session declares.

The 7-day window (§4.1) is applied inside the graph: an entry is used only if
``0 <= age <= 168`` (:func:`semirec.trainer.offline.samples.in_window`), so the server passes the stored
sequence (newest 50 of any age) as it is, with ``age = ts // 3600 (request) - ts // 3600
(entry)``.

A model trained with item identity (``ModelConfig.item_identity``; :mod:`semirec.trainer.nets.identity`)
has three more inputs, :data:`IDENTITY_INPUTS`, one value per candidate (see there). A model
with the user's completion rate (``+usr``, ``ModelConfig.user_rate``) has three more,
:data:`SKIPPED_INPUTS`: the incomplete watches, in the format of ``video``.

The batched graph (:func:`export_batched_onnx`, served by Triton as model ``ranker``) has the same
input names with a leading batch axis B: ``video`` [B, Lv, d], ... , ``candidates`` [B, C, d] ->
``score`` [B, C]. It declares every name in :data:`INPUTS` whatever the model reads (an unread
input is fed through as ``+ 0 * x[..., first element]``), so Triton's config and a TensorRT engine
have one tensor contract for all models (plus :data:`SKIPPED_INPUTS` for a ``+usr`` model and
:data:`IDENTITY_INPUTS`, [B, C] each, for a model with item identity).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from semirec.trainer.nets.ranker import Ranker, UserBatch
from semirec.trainer.offline.samples import WINDOW_HOURS, in_window

INPUTS = ("video", "video_age", "video_mask", "product", "product_age", "product_mask",
          "candidates")
SKIPPED_INPUTS = ("skipped", "skipped_age", "skipped_mask")
"""Extra inputs of a ``+usr`` model (semirec.trainer.nets.signals.UserRate): the user's newest
incomplete video watches (``UserState.skipped``) as ``video`` / ``video_age`` / ``video_mask``
are built from the complete ones (right-aligned, newest last, ages in hour blocks, the 7-day
window applied inside the graph)."""
IDENTITY_INPUTS = ("candidate_bucket", "candidate_watches", "candidate_completes")
"""Extra inputs of a model with item identity, each [C], aligned with ``candidates``:

- ``candidate_bucket`` int64: ``semirec.trainer.nets.identity.item_bucket(video_id, buckets)`` = the first
  8 bytes of ``hashlib.blake2b(video_id.encode("utf-8"), digest_size=8).digest()`` as an
  unsigned little-endian integer, modulo ``buckets`` = ``ModelConfig.id_buckets`` (2^18 =
  262144; in the checkpoint's config.json as ``model.id_buckets``).
- ``candidate_watches`` float32: how many watches of the video (complete or not, by anyone)
  happened before the request.
- ``candidate_completes`` float32: how many of those were complete.

The graph smooths the two counts itself: rate = (completes + 10 * prior) / (watches + 10),
``prior`` = the training set's completion rate (stored in the graph). An unknown video is
bucket + zero counts: it gets no learned bias (unless its bucket collides) and the prior rate.
"""
OUTPUT = "score"
OPSET = 17


def user_batch(feeds: dict[str, Tensor]) -> UserBatch:
    """The user side of a batched request (leading batch axis), by input name."""
    return UserBatch(*(feeds[k] for k in INPUTS[:6]), *(feeds.get(k) for k in SKIPPED_INPUTS))


def uses_skipped(model: Ranker) -> bool:
    """Whether ``model`` reads the incomplete watches (``+usr``)."""
    return getattr(model, "user_rate", None) is not None


def input_names(model: Ranker) -> tuple[str, ...]:
    """The graph's inputs for ``model``: :data:`INPUTS`, plus :data:`SKIPPED_INPUTS` for a
    ``+usr`` model, plus :data:`IDENTITY_INPUTS` if it uses item identity."""
    return (INPUTS + (SKIPPED_INPUTS if uses_skipped(model) else ())
            + (IDENTITY_INPUTS if model.identity is not None else ()))


def cascades(model: Ranker, deep_top: int) -> bool:
    """Whether ``model``'s graph is exported as a cascade of ``deep_top`` (> 0 and the model has
    a wide part: :attr:`Ranker.has_wide_part`)."""
    return deep_top > 0 and model.has_wide_part


def cascade_probs(model: Ranker, ctx: tuple[Tensor, ...], candidates: Tensor,
                  items: tuple[Tensor, ...] | None, k: int) -> Tensor:
    """[B, C] scores of a cascade: every candidate by the model's wide part, the whole model for
    the wide part's best ``k`` only; the others score below all of those, in the wide part's order.

    Real candidates' scores: P(watched completely) for the ``k`` (the full model's exactly);
    ``0.5 * sigmoid(wide) * min(those k)`` for the rest. Padding rows (all-zero vectors) never
    enter the ``k``. ``k`` is a constant of the graph; requests with fewer candidates are padded
    inside it (``k`` zero rows whose wide logit is -1e9), so any C works."""
    # the wide part of every candidate and of one padding row (zero vector, zero counts), once:
    # the best k reuse their features and wide logits instead of computing them again
    n = candidates.shape[1]
    ext = torch.cat([candidates, torch.zeros_like(candidates[:, :1])], dim=1)  # [B, C + 1, d]
    feats = model.wide_features(ctx, ext)
    wide = model.wide_logits_of(feats, None if items is None else tuple(
        torch.cat([t, torch.zeros_like(t[:, :1])], dim=1) for t in items))  # [B, C + 1]
    # the norms unit() computes for the features (one ReduceL2 after onnxruntime's CSE)
    real = torch.linalg.vector_norm(ext, dim=-1, keepdim=True)[:, :n, 0] > 0
    order = torch.where(real, wide[:, :n], torch.full_like(wide[:, :n], -1e9))
    order = torch.cat([order, torch.full_like(order[:, :1], -1e9).expand(-1, k)], dim=1)
    top = order.topk(k, dim=1).indices  # [B, k], in 0..C + k - 1
    # rows of ext, flat: the k padding slots all read its zero row (a row gather, not an
    # element-wise GatherElements over [B, k, d] indices)
    rows = top.clamp(max=n) + torch.arange(top.shape[0])[:, None] * (n + 1)
    sub = ext.flatten(0, 1)[rows]  # [B, k, d]
    sub_feats = feats.flatten(0, 1)[rows]
    deep = torch.sigmoid(model.head_logits(ctx, sub, sub_feats) + wide.flatten()[rows])
    rest = 0.5 * deep.amin(dim=1, keepdim=True) * torch.sigmoid(order)
    return rest.scatter(1, top, deep)[:, :n]


def cascade_overlap(model: Ranker, ctx: tuple[Tensor, ...], candidates: Tensor,
                    items: tuple[Tensor, ...] | None, k: int, top: int = 10) -> np.ndarray:
    """[B] |top ``top`` of the whole model & top ``top`` of the cascade of ``k``| / ``top``."""
    with torch.inference_mode():
        full = model.logits(ctx, candidates, items).topk(top, dim=1).indices
        cut = cascade_probs(model, ctx, candidates, items, k).topk(top, dim=1).indices
    hits = (full[:, :, None] == cut[:, None, :]).any(dim=2).sum(dim=1)
    return hits.numpy() / top


def cascade_diff(cascade: np.ndarray, full: np.ndarray, k: int) -> float:
    """How far a cascade's scores [B, C] are from the full model's: the max |difference| over
    each row's best ``k`` by the cascade's own score (which must be the full model's), ``inf``
    when a row's other candidates do not all score below those. Ties of the wide part may pick
    any of the tied candidates, so this checks the cascade against the model, not one
    selection."""
    worst = 0.0
    for got, want in zip(cascade, full, strict=True):
        order = np.argsort(-got, kind="stable")
        top, rest = order[:k], order[k:]
        if len(rest) and not got[rest].max() < got[top].min():
            return float("inf")
        worst = max(worst, float(np.abs(got[top] - want[top]).max()))
    return worst


def _scores(model: Ranker, feeds: dict[str, Tensor], window_hours: int, deep_top: int = 0) -> Tensor:
    """[B, C] probabilities from batched feeds, the 7-day window applied to every sequence;
    a cascade (:func:`cascade_probs`) when :func:`cascades` ``(model, deep_top)``."""
    for domain in ("video", "product", "skipped"):
        if f"{domain}_mask" in feeds:
            feeds[f"{domain}_mask"] = feeds[f"{domain}_mask"] & in_window(
                feeds[f"{domain}_age"], window_hours)
    items = tuple(feeds[k] for k in IDENTITY_INPUTS) if model.identity is not None else None
    ctx = model.encode_user(user_batch(feeds))
    if cascades(model, deep_top):
        return cascade_probs(model, ctx, feeds["candidates"], items, deep_top)
    return torch.sigmoid(model.logits(ctx, feeds["candidates"], items))


class RequestGraph(nn.Module):
    """A ranker wrapped for one request: inputs in :func:`input_names` order (sequences,
    candidates, and what the model adds) -> probabilities [C]."""

    def __init__(self, model: Ranker, window_hours: int = WINDOW_HOURS, deep_top: int = 0) -> None:
        super().__init__()
        self.model = model
        self.window_hours = window_hours
        self.deep_top = deep_top

    def forward(self, *inputs: Tensor) -> Tensor:
        names = input_names(self.model)
        if len(inputs) != len(names):
            raise ValueError(f"this model needs {names}")
        feeds = {k: x[None] for k, x in zip(names, inputs, strict=True)}
        return _scores(self.model, feeds, self.window_hours, self.deep_top)[0]


class BatchedRequestGraph(nn.Module):
    """A ranker for B users at once: inputs in :func:`input_names` order (:data:`INPUTS`, plus
    :data:`IDENTITY_INPUTS` for a model with item identity, each [B, C]) with a batch axis ->
    [B, C]. The 7-day window is applied as in :class:`RequestGraph`."""

    def __init__(self, model: Ranker, window_hours: int = WINDOW_HOURS, deep_top: int = 0) -> None:
        super().__init__()
        self.model = model
        self.window_hours = window_hours
        self.deep_top = deep_top

    def forward(self, *inputs: Tensor) -> Tensor:
        probs = _scores(self.model, dict(zip(input_names(self.model), inputs, strict=True)),
                        self.window_hours, self.deep_top)
        # every input stays in the graph (the exporter drops unread ones): + 0 * one element
        touch = sum(x.reshape(x.shape[0], -1)[:, :1].to(probs.dtype) for x in inputs)
        return probs + 0.0 * touch


def example_request(
    dim: int = 128, video: int = 50, product: int = 50, candidates: int = 500, seed: int = 0,
    video_real: int | None = None, product_real: int | None = None, identity: bool = False,
    skipped: bool = False,
) -> dict[str, np.ndarray]:
    """Random inputs in the graph's format (``*_real`` = how many entries are real, newest last);
    with ``skipped`` also :data:`SKIPPED_INPUTS` (as long as ``product``, half of them real), with
    ``identity`` also :data:`IDENTITY_INPUTS` (in this order)."""
    rng = np.random.default_rng(seed)

    def seq(n: int, real: int | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        real = n if real is None else real
        mask = np.arange(n) >= n - real
        age = np.sort(rng.integers(0, 400, n))[::-1].astype(np.int64)
        vec = rng.normal(scale=0.09, size=(n, dim)).astype(np.float32) * mask[:, None]
        return vec, age, mask

    v, p = seq(video, video_real), seq(product, product_real)
    cands = rng.normal(scale=0.09, size=(candidates, dim)).astype(np.float32)
    watches = rng.integers(0, 50, candidates).astype(np.float32)
    extra = (rng.integers(0, 1 << 18, candidates).astype(np.int64), watches,
                np.floor(watches * rng.random(candidates)).astype(np.float32))
    s = seq(product, (product if product_real is None else product_real) // 2)
    out = dict(zip(INPUTS + SKIPPED_INPUTS + IDENTITY_INPUTS, (*v, *p, cands, *s, *extra), strict=True))
    names = INPUTS + (SKIPPED_INPUTS if skipped else ()) + (IDENTITY_INPUTS if identity else ())
    return {k: out[k] for k in names}


def model_request(model: Ranker, dim: int = 128, video: int = 50, product: int = 50,
                  candidates: int = 500, seed: int = 0) -> dict[str, np.ndarray]:
    """:func:`example_request` in ``model``'s input format (incomplete watches for ``+usr``,
    identity inputs within its bucket count for ``+id``)."""
    return fit_buckets(model, example_request(dim, video, product, candidates, seed,
                                              identity=model.identity is not None,
                                              skipped=uses_skipped(model)))


def fit_buckets(model: Ranker, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Example buckets within ``model``'s bucket count (the examples draw from 2^18)."""
    if model.identity is not None and "candidate_bucket" in feeds:
        feeds["candidate_bucket"] = feeds["candidate_bucket"] % model.identity.bias.num_embeddings
    return feeds


def export_onnx(model: Ranker, path: Path, dim: int = 128, example_candidates: int = 5,
                deep_top: int = 0) -> Path:
    """Write the request graph of ``model`` (eval mode) to ``path``, traced on a request with
    ``example_candidates`` candidates (the candidate axis stays dynamic); ``deep_top`` > 0: a
    cascade (:func:`cascade_probs`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    graph = RequestGraph(model, deep_top=deep_top).eval()
    names = input_names(model)
    request = model_request(model, dim, 7, 9, example_candidates)
    example = tuple(torch.from_numpy(request[k]) for k in names)
    axes = {"video": {0: "video_len"}, "video_age": {0: "video_len"},
            "video_mask": {0: "video_len"}, "product": {0: "product_len"},
            "product_age": {0: "product_len"}, "product_mask": {0: "product_len"},
            "candidates": {0: "candidates"}, OUTPUT: {0: "candidates"},
            **{k: {0: "skipped_len"} for k in names if k in SKIPPED_INPUTS},
            **{k: {0: "candidates"} for k in names if k in IDENTITY_INPUTS}}
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the TorchScript exporter
        torch.onnx.export(graph, example, str(path), input_names=list(names),
                          output_names=[OUTPUT], dynamic_axes=axes, opset_version=OPSET,
                          dynamo=False)
    return path


def example_batch(
    users: int = 4, dim: int = 128, video: int = 50, product: int = 50, candidates: int = 500,
    seed: int = 0, identity: bool = False, skipped: bool = False,
) -> dict[str, np.ndarray]:
    """Random batched inputs: user ``i`` has a different number of real entries per domain
    (left-padded, newest last; user 0 has no products and no incomplete watches); with
    ``skipped`` also :data:`SKIPPED_INPUTS`, with ``identity`` also :data:`IDENTITY_INPUTS`."""
    rows = [example_request(dim, video, product, candidates, seed + i,
                            video_real=(i * 7) % (video + 1),
                            product_real=0 if i == 0 else (i * 11) % (product + 1),
                            identity=identity, skipped=skipped)
            for i in range(users)]
    return {k: np.stack([r[k] for r in rows]) for k in rows[0]}


def export_batched_onnx(model: Ranker, path: Path, dim: int = 128, deep_top: int = 0) -> Path:
    """Write the batched request graph of ``model`` (eval mode) to ``path`` (via ``.tmp``);
    ``deep_top`` > 0: a cascade (:func:`cascade_probs`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    graph = BatchedRequestGraph(model, deep_top=deep_top).eval()
    names = input_names(model)
    batch = fit_buckets(model, example_batch(3, dim, 7, 9, 5, identity=model.identity is not None,
                                             skipped=uses_skipped(model)))
    example = tuple(torch.from_numpy(batch[k]) for k in names)
    axes: dict[str, dict[int, str]] = {}
    for name in names:
        axes[name] = {0: "batch", 1: "candidates" if name.startswith("candidate")
                      else f"{name.split('_')[0]}_len"}
    axes[OUTPUT] = {0: "batch", 1: "candidates"}
    tmp = path.with_name(path.name + ".tmp")
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation/tracer notes
        torch.onnx.export(graph, example, str(tmp), input_names=list(names),
                          output_names=[OUTPUT], dynamic_axes=axes, opset_version=OPSET,
                          dynamo=False)
    tmp.replace(path)
    return path


def onnx_session(path: Path, threads: int = 1):  # -> onnxruntime.InferenceSession
    """A ranker graph's session, as every server loads it (semirec.core.ranker_sessions)."""
    from semirec.core.ranker_sessions import session

    return session(path, threads)


def run_onnx(session, request: dict[str, np.ndarray]) -> np.ndarray:
    names = {i.name for i in session.get_inputs()}
    return session.run([OUTPUT], {k: v for k, v in request.items() if k in names})[0]


def torch_scores(model: Ranker, request: dict[str, np.ndarray], deep_top: int = 0) -> np.ndarray:
    with torch.inference_mode():
        graph = RequestGraph(model, deep_top=deep_top).eval()
        return graph(*(torch.from_numpy(request[k]) for k in input_names(model))).numpy()


def torch_batch_scores(model: Ranker, batch: dict[str, np.ndarray], deep_top: int = 0) -> np.ndarray:
    """[B, C] probabilities of the batched graph, in process."""
    with torch.inference_mode():
        graph = BatchedRequestGraph(model, deep_top=deep_top).eval()
        return graph(*(torch.from_numpy(batch[k]) for k in input_names(model))).numpy()
