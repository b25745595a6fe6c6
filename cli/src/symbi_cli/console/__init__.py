"""``symbi console``: the operator console in the browser.

A small FastAPI app serving server-rendered Jinja2 pages with htmx (vendored, no CDN) that talks only to
the services' public HTTP APIs with the operator's own bearer token — never to NATS or a database.
"""
