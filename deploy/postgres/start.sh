#!/bin/sh
# PostgreSQL in the compose stack, from the pgserver wheel's build in the runtime image (deploy/images/build.sh).
# `start.sh ready` is the healthcheck. First start: initdb with the superuser password from /run/secrets/postgres-password, password (SCRAM)
# logins from the network, and one database per service that keeps a read model (lifecycle, audit).
set -eu
bin="$(python -c 'import pathlib, pgserver; print(pathlib.Path(pgserver.__file__).parent / "pginstall" / "bin")')"
data=/data/pg
if [ "${1:-}" = ready ]; then # the healthcheck
    exec "$bin/pg_isready" -q -h 127.0.0.1 -U postgres
fi
if [ ! -s "$data/PG_VERSION" ]; then
    "$bin/initdb" -D "$data" -U postgres --pwfile=/run/secrets/postgres-password \
        --auth-local=trust --auth-host=scram-sha-256 >/dev/null
    echo "host all all all scram-sha-256" >>"$data/pg_hba.conf"
    for db in symbi_lifecycle symbi_audit; do
        echo "CREATE DATABASE $db" | "$bin/postgres" --single -D "$data" postgres >/dev/null
    done
fi
exec "$bin/postgres" -D "$data" -c listen_addresses='*' -c unix_socket_directories=/tmp
