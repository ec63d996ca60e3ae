"""The demo and the simulated audience: the top layer that orchestrates everything else.

Nothing imports ``sim``; ``semirec demo`` reaches it through one line of the CLI's ``VERBS``.
The world's truth is read here only by the audience (``audience.py``) and the evaluation
(``quality.py``, ``loop.py``).
"""
