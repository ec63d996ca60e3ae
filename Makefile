# The two entry points for a fresh machine (see README.md). Both bootstrap first.
.PHONY: bootstrap demo test lint

bootstrap:
	@scripts/bootstrap.sh

demo: bootstrap
	.venv/bin/semirec demo

lint: bootstrap
	.venv/bin/ruff check .

test: bootstrap
	.venv/bin/ruff check .
	PATH="$(CURDIR)/.venv/bin:$$PATH" .venv/bin/python -m pytest -q
