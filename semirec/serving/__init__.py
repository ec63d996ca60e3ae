"""Serving: candidate recall, the Triton ranking client, fallback; one entry, the Recommender.

Used by the recommendation agent (semirec/streams/recommend.py), the CLI (semirec/cli/recommend.py) and the
benchmark (benchmarks/serving.py). See docs/serving.md.
"""
