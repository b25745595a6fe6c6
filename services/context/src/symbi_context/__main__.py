"""``python -m symbi_context``: run the context service."""

from symbi_context.main import main

main()
