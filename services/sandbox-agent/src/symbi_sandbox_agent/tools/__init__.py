"""MCP tools for agents: definitions pinned and scanned (``canon``, ``scan``, ``names``), the event-sourced
registry (``registry``), SchemaPin verification (``verify``), the MCP connections (``servers``) and the
service the gateway calls (``service``). docs/tools.md."""
