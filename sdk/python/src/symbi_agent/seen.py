"""Messages this agent process was handed, by id: a message is delivered at least once (a host that died
after writing a batch to the agent, before recording it, delivers it again), and handed to the agent once.
Standard library only."""

from __future__ import annotations

import inspect
from collections import OrderedDict
from typing import Any

#: Message ids remembered per process at most (the oldest go first).
REMEMBERED = 100_000


class Seen:
    """The ids handed over so far; ``dropped`` counts the redeliveries not handed over again."""

    def __init__(self, most: int = REMEMBERED) -> None:
        self.most = most
        self.dropped = 0
        self._ids: OrderedDict[str, None] = OrderedDict()

    def fresh(self, result: Any) -> Any:
        """``result`` of ``messages.receive`` without the messages this process already has."""
        if not isinstance(result, dict) or not isinstance(result.get("messages"), list):
            return result
        keep = []
        for message in result["messages"]:
            message_id = message.get("id") if isinstance(message, dict) else None
            if isinstance(message_id, str):
                if message_id in self._ids:
                    self.dropped += 1
                    continue
                self._ids[message_id] = None
            keep.append(message)
        while len(self._ids) > self.most:
            self._ids.popitem(last=False)
        return {**result, "messages": keep}

    def filter(self, result: Any) -> Any:
        """:meth:`fresh` of a value, or of an awaitable's value (the asynchronous client)."""
        if inspect.isawaitable(result):
            return self._later(result)
        return self.fresh(result)

    async def _later(self, pending: Any) -> Any:
        return self.fresh(await pending)


#: One per process: an agent that reconnects (its host restarted) still drops what it already has.
SEEN = Seen()
