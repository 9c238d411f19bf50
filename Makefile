# The two commands of the README: `make run` (install everything, run the main job) and
# `make test` (install what the tests need, run the whole default suite).
.PHONY: run test test-slow bench

run:
	scripts/bootstrap.sh
	.venv/bin/rbmrec demo

test:
	scripts/bootstrap.sh test
	scripts/test-services.sh
	.venv/bin/python -m pytest

test-slow:
	scripts/bootstrap.sh test
	scripts/test-services.sh
	.venv/bin/python -m pytest -m slow
