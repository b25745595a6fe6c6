# Thin wrappers around the real commands (see README).
.PHONY: run up test lint typecheck fmt bench

run:
	uv run symbi demo
up:
	uv run symbi up
test:
	uv run pytest -q -n 2 --dist worksteal
lint:
	uv run ruff check . && uv run ruff format --check .
typecheck:
	uv run mypy
fmt:
	uv run ruff format . && uv run ruff check --fix .
bench:
	uv run python bench/append.py && uv run python bench/rebuild.py && uv run python bench/register.py
