"""MCP tool servers: the events of the tool registry (``evt.toolserver.<server>``) and its typed errors."""
