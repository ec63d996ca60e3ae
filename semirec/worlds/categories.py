"""The ten product categories of the generated world: Fashion-MNIST's classes.

Each category says where its content comes from: its Fashion-MNIST label (images) and which
Women's Clothing reviews describe it, either by the review's ``Class Name`` (clothing) or,
for the four classes the review set has no class for (shoes and bags), by a keyword that
must occur in a review sentence.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cached_property


@dataclass(frozen=True)
class Category:
    slug: str  # the item contract's ``category``
    label: str  # Fashion-MNIST's class name
    fmnist_label: int
    review_classes: frozenset[str] = frozenset()
    keywords: tuple[str, ...] = ()  # lower-case words, for classes without a review class

    @cached_property
    def _pattern(self) -> re.Pattern[str]:
        return re.compile(r"\b(" + "|".join(map(re.escape, self.keywords)) + r")\b")

    def mentioned_in(self, lower_text: str) -> bool:
        """Whether a lower-cased text names this category by one of its keywords."""
        return any(k in lower_text for k in self.keywords) and bool(self._pattern.search(lower_text))


CATEGORIES: tuple[Category, ...] = (
    Category("tshirt_top", "T-shirt/top", 0, frozenset({"Knits"})),
    Category("trouser", "Trouser", 1, frozenset({"Pants", "Jeans", "Legwear", "Casual bottoms"})),
    Category("pullover", "Pullover", 2, frozenset({"Sweaters", "Fine gauge"})),
    Category("dress", "Dress", 3, frozenset({"Dresses"})),
    Category("coat", "Coat", 4, frozenset({"Jackets", "Outerwear"})),
    Category("sandal", "Sandal", 5, keywords=("sandal", "sandals", "flip flops", "flip-flops", "wedges")),
    Category("shirt", "Shirt", 6, frozenset({"Blouses"})),
    Category("sneaker", "Sneaker", 7, keywords=("sneaker", "sneakers", "tennis shoes", "shoes")),
    Category("bag", "Bag", 8, keywords=("bag", "bags", "purse", "purses", "tote", "handbag", "clutch")),
    Category("ankle_boot", "Ankle boot", 9, keywords=("ankle boot", "ankle boots", "booties", "boots")),
)

VIDEO_FORMATS: tuple[str, ...] = ("try-on", "unboxing", "styling", "review", "haul")
