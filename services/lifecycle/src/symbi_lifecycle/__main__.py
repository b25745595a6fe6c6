"""``python -m symbi_lifecycle``: run the lifecycle service."""

from symbi_lifecycle.main import main

main()
