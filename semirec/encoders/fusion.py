"""The fusion transformer: backbone features of one item -> one 128-d, L2-normalised vector.

Tokens (each a ``d_model`` vector plus a learned token-type embedding):
``[CLS]``, the title, a *text-guided visual* token (the title attends over the frames, so the
frames that match the text dominate), one token per image/frame (with a frame position),
the category and the mean of the tag embeddings. A pre-norm transformer encoder mixes them;
the ``[CLS]`` output is projected to ``out_dim`` and L2-normalised (cosine = dot product,
what recall and contrastive training want; the ranker scales it as it needs).

Absent parts (no category, no tags, padded frames) are masked out of attention. Attention is
written out with plain matmuls so that ONNX export and TensorRT see simple ops.
With ``keep_image``/``keep_text`` > 0 the vector has two parts (:class:`Kept`): the learned
``out_dim - keep`` dimensions above and fixed whitened principal components of the frozen
backbone features (within-category ones of the mean image feature, those of the title
feature), fitted on the catalog by pre-training; each part is L2-normalised and weighted
(``keep_weight`` of the squared norm to the kept part), so the whole stays unit-norm.

One :class:`FusionEncoder` per domain (videos: title + frames + tags; products: title +
cover + category), held together by :class:`ItemFusion`.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from semirec.encoders.config import IMAGE_FEATURES, EncoderConfig

NEG = -1e4  # additive mask; finite so fp16 engines stay finite
CLS, TEXT, GUIDED, IMAGE, CATEGORY, TAGS = range(6)


class Attention(nn.Module):
    def __init__(self, d: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads, self.dh = heads, d // heads
        self.q = nn.Linear(d, d)
        self.kv = nn.Linear(d, 2 * d)
        self.out = nn.Linear(d, d)
        self.drop = nn.Dropout(dropout)

    def forward(self, xq: torch.Tensor, xkv: torch.Tensor, key_bias: torch.Tensor) -> torch.Tensor:
        """``key_bias``: ``[B, 1, 1, Lk]``, 0 for keys to attend to and NEG for masked ones."""
        b = xq.shape[0]
        q = self.q(xq).reshape(b, -1, self.heads, self.dh).transpose(1, 2)
        kv = self.kv(xkv).reshape(b, -1, 2, self.heads, self.dh).permute(2, 0, 3, 1, 4)
        scores = q @ kv[0].transpose(-1, -2) * (1.0 / math.sqrt(self.dh)) + key_bias
        y = self.drop(scores.softmax(dim=-1)) @ kv[1]
        return self.out(y.transpose(1, 2).reshape(b, -1, self.heads * self.dh))


class Block(nn.Module):
    """Pre-norm transformer block."""

    def __init__(self, d: int, heads: int, ffn: int, dropout: float) -> None:
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.attn = Attention(d, heads, dropout)
        self.ffn = nn.Sequential(nn.Linear(d, ffn), nn.GELU(), nn.Dropout(dropout), nn.Linear(ffn, d))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, key_bias: torch.Tensor) -> torch.Tensor:
        h = self.ln1(x)
        x = x + self.drop(self.attn(h, h, key_bias))
        return x + self.drop(self.ffn(self.ln2(x)))


def _bias(valid: torch.Tensor) -> torch.Tensor:
    """``[B, L]`` validity (float 0/1) -> ``[B, 1, 1, L]`` additive attention bias."""
    return ((1.0 - valid) * NEG)[:, None, None, :]


class Kept(nn.Module):
    """Whitened principal components of the frozen features (buffers; fitted by pre-training).

    image part: ``(mean_frame - image_mean) @ image_proj - image_offset[category]`` (the offset
    removes the category's mean, so the components describe the item within its category; an
    unknown category keeps its between-category part); text part: ``(text - text_mean) @ text_proj``,
    minus ``text_offset[category]`` when ``cfg.title_within`` (within-category title components).
    A missing image or title gives zeros for its part.
    """

    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        self.register_buffer("image_mean", torch.zeros(IMAGE_FEATURES))
        self.register_buffer("image_proj", torch.zeros(IMAGE_FEATURES, cfg.keep_image))
        self.register_buffer("image_offset", torch.zeros(cfg.category_buckets, cfg.keep_image))
        self.register_buffer("text_mean", torch.zeros(cfg.text_dim))
        self.register_buffer("text_proj", torch.zeros(cfg.text_dim, cfg.keep_text))
        self.text_offset: torch.Tensor | None  # None (not in the state) unless cfg.title_within
        self.register_buffer("text_offset", torch.zeros(cfg.category_buckets, cfg.keep_text)
                             if cfg.title_within else None)
        self.scale = 1.0 / math.sqrt(max(cfg.keep_dims, 1))

    def forward(self, text: torch.Tensor, images: torch.Tensor, img_valid: torch.Tensor,
                category: torch.Tensor, txt_valid: torch.Tensor) -> torch.Tensor:
        count = img_valid.sum(1, keepdim=True)
        mean = (images * img_valid.unsqueeze(-1)).sum(1) / count.clamp_min(1.0)
        img = (mean - self.image_mean) @ self.image_proj - self.image_offset[category]
        img = img * count.clamp_max(1.0)
        txt = (text - self.text_mean) @ self.text_proj
        if self.text_offset is not None:
            txt = txt - self.text_offset[category]
        txt = txt * txt_valid[:, None]
        return torch.cat([img, txt], dim=1) * self.scale


class FusionEncoder(nn.Module):
    """``(text [B,Dt], images [B,F,1280], image_mask [B,F], category [B], tags [B,T]) -> [B,out]``."""

    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        d = cfg.d_model
        self.text_proj = nn.Sequential(nn.LayerNorm(cfg.text_dim), nn.Linear(cfg.text_dim, d))
        self.image_proj = nn.Sequential(nn.LayerNorm(IMAGE_FEATURES), nn.Linear(IMAGE_FEATURES, d))
        self.frame_pos = nn.Parameter(torch.randn(cfg.max_frames, d) * 0.02)
        self.category = nn.Embedding(cfg.category_buckets, d, padding_idx=0)
        self.tags = nn.Embedding(cfg.tag_buckets, d, padding_idx=0)
        self.token_type = nn.Parameter(torch.randn(6, d) * 0.02)
        self.cls = nn.Parameter(torch.randn(d) * 0.02)
        self.guide_norm = nn.LayerNorm(d)
        self.guide = Attention(d, cfg.heads, cfg.dropout)
        self.blocks = nn.ModuleList(
            Block(d, cfg.heads, cfg.ffn, cfg.dropout) for _ in range(cfg.layers)
        )
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, cfg.out_dim - cfg.keep_dims)
        self.kept = Kept(cfg) if cfg.keep_dims else None
        self.keep_weight = cfg.keep_weight
        self.out_dim = cfg.out_dim
        nn.init.normal_(self.category.weight, std=0.02)
        nn.init.normal_(self.tags.weight, std=0.02)
        with torch.no_grad():
            self.category.weight[0].zero_()
            self.tags.weight[0].zero_()

    def forward(
        self,
        text: torch.Tensor,
        images: torch.Tensor,
        image_mask: torch.Tensor,
        category: torch.Tensor,
        tags: torch.Tensor,
        text_present: torch.Tensor | None = None,
    ) -> torch.Tensor:
        b, frames = images.shape[0], images.shape[1]
        tt = self.token_type
        img_valid = image_mask.to(text.dtype)
        txt_valid = torch.ones_like(text[:, 0]) if text_present is None else text_present.to(text.dtype)
        t = self.text_proj(text).unsqueeze(1) + tt[TEXT]
        img = self.image_proj(images) + self.frame_pos[:frames] + tt[IMAGE]
        guided = self.guide(self.guide_norm(t), self.guide_norm(img), _bias(img_valid)) + tt[GUIDED]
        cat = self.category(category).unsqueeze(1) + tt[CATEGORY]
        tag_valid = (tags > 0).to(text.dtype)
        tag_sum = (self.tags(tags) * tag_valid.unsqueeze(-1)).sum(1)
        tag = (tag_sum / tag_valid.sum(1, keepdim=True).clamp_min(1.0)).unsqueeze(1) + tt[TAGS]
        cls = (self.cls + tt[CLS]).expand(b, 1, -1)
        x = torch.cat([cls, t, guided, img, cat, tag], dim=1)
        any_img = img_valid.amax(dim=1)
        valid = torch.cat([
            torch.ones_like(txt_valid)[:, None], txt_valid[:, None], (txt_valid * any_img)[:, None],
            img_valid, (category > 0).to(text.dtype)[:, None], tag_valid.amax(dim=1, keepdim=True),
        ], dim=1)
        bias = _bias(valid)
        for block in self.blocks:
            x = block(x, bias)
        z = self.head(self.norm(x[:, 0]))
        z = z / z.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        if self.kept is None:
            return z
        k = self.kept(text, images, img_valid, category, txt_valid)
        k = k / k.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        z = torch.cat([z * math.sqrt(1.0 - self.keep_weight), k * math.sqrt(self.keep_weight)], dim=1)
        return z / z.norm(dim=-1, keepdim=True).clamp_min(1e-12)


class ItemFusion(nn.Module):
    """One fusion encoder per domain (``video``, ``product``), initialised from ``cfg.seed``."""

    DOMAINS = ("video", "product")

    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            self.domains = nn.ModuleDict({name: FusionEncoder(cfg) for name in self.DOMAINS})

    def __getitem__(self, domain: str) -> FusionEncoder:
        return self.domains[domain]  # type: ignore[return-value]
