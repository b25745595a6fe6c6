"""The id rule agents, tasks, policy sets and decision-log sources share: one NATS subject token and KV key.

Letters, digits, ``-`` and ``_``, 1 to 128 of them, checked against the whole value (``\\Z``: a trailing
newline is refused, where ``$`` would let it through). Each kind of id keeps a name of its own
(``AGENT_ID_RE``, ``TASK_ID_RE``, ``SET_ID_RE`` …) bound to this one rule.
"""

from __future__ import annotations

import re

MAX_ID = 128
ID_PATTERN = r"^[A-Za-z0-9_-]{1,128}\Z"
ID_RE = re.compile(ID_PATTERN)
