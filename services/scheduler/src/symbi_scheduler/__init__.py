"""Symbi scheduler service: the task queue, priorities, preemption and resource-aware placement on hosts."""
