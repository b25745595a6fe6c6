"""``python -m symbi_policy``: run the policy service."""

from symbi_policy.main import main

main()
