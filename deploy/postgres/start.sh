#!/bin/sh
# PostgreSQL in the compose stack, from the pgserver wheel's build in the runtime image (deploy/images/build.sh).
# `start.sh ready` is the healthcheck. Secrets in /run/secrets/postgres/: `password` (the superuser's) and one
# `<role>.password` per service that keeps a read model (symbi_lifecycle, symbi_audit).
# First start: initdb with the superuser's password. Every start: pg_hba.conf rewritten (over the network each
# role logs in with its password, SCRAM; the superuser only through this container's own socket), then, on a
# server reachable only through that socket, each service's role and database made or brought up to date
# (`symbi deploy postgres-roles`: a login role with no other privilege, owning its database, which no other
# role may connect to), and only then the server that listens on the network.
set -eu
bin="$(python -c 'import pathlib, pgserver; print(pathlib.Path(pgserver.__file__).parent / "pginstall" / "bin")')"
data=/data/pg
secrets=/run/secrets/postgres
if [ "${1:-}" = ready ]; then # the healthcheck: answering on the network (it logs in as no one)
    exec "$bin/pg_isready" -q -h 127.0.0.1 -U healthcheck
fi
if [ ! -s "$data/PG_VERSION" ]; then
    "$bin/initdb" -D "$data" -U postgres --pwfile="$secrets/password" \
        --auth-local=trust --auth-host=scram-sha-256 >/dev/null
fi
cat >"$data/pg_hba.conf" <<'HBA'
# Written by deploy/postgres/start.sh on every start.
local all all trust
host all postgres all reject
host all all all scram-sha-256
HBA
"$bin/pg_ctl" -D "$data" -w -s -o "-c listen_addresses='' -c unix_socket_directories=/tmp" start
symbi deploy postgres-roles --admin-url "postgresql://postgres@/postgres?host=/tmp" --passwords "$secrets"
"$bin/pg_ctl" -D "$data" -w -s -m fast stop
exec "$bin/postgres" -D "$data" -c listen_addresses='*' -c unix_socket_directories=/tmp
