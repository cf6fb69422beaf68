# The two entry points of the README, plus the pieces they are made of.
.PHONY: demo up test lint setup setup-test

demo: setup          ## set up, then run the pipeline with simulated customers and report
	.venv/bin/tracker demo

up: setup            ## set up, then run the whole pipeline on the embedded defaults
	.venv/bin/tracker up

test: setup-test     ## set up, then run every test (unit and integration)
	.venv/bin/pytest

lint: setup-test
	.venv/bin/ruff check . && .venv/bin/ruff format --check . && .venv/bin/mypy

setup:
	scripts/setup

setup-test:
	scripts/setup --test
