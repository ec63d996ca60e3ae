"""Serving: candidate recall, the Triton ranking client, fallback; one entry, the Recommender.

Used by the recommendation agent (streams/recommend.py), the CLI (serving/cli.py) and the
benchmark (benchmarks/serving.py). See docs/serving.md.
"""
