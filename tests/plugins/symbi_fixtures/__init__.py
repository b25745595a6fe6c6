"""The workspace's shared pytest fixtures, loaded by the root ``conftest.py`` as plugins (``pytest_plugins``).

One module per kind of thing a test needs: :mod:`.messaging` (a real nats-server per test and clients),
:mod:`.database` (PostgreSQL), :mod:`.keys` (a keyring, signers, data keys, operator tokens),
:mod:`.stores` (event stores signing as any service), :mod:`.runtimes` (whole runtimes as real processes)
and :mod:`.metrics` (``/metrics`` scrapes). Nothing is mocked.
"""
