"""``python -m symbi_scheduler``: run the scheduler service."""

from symbi_scheduler.main import main

main()
