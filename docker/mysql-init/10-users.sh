#!/bin/sh
# Creates orderstream's least-privilege database users. The MariaDB and MySQL images run this
# once, on the first start of an empty data volume (/docker-entrypoint-initdb.d), after they
# created the database and the migrator user from their own environment.
#
# - orderstream: the pipeline and the producer. Rows only: SELECT, INSERT, UPDATE, DELETE; no
#   DDL (the one-shot migrate job owns the schema).
# - grafana: the sales dashboard's datasource. SELECT only.
#
# The test suite runs this same script against its MariaDB (tests/ops.rs), with
# MYSQL_INIT_CLIENT_ARGS pointing the client at it, and then runs the pipeline as `orderstream`.
set -eu

# A password from NAME_FILE (a compose secret) when it is set, else from NAME; never empty.
secret() {
    eval "file=\${${1}_FILE:-}"
    if [ -n "$file" ]; then
        value=$(cat "$file")
    else
        eval "value=\${${1}:-}"
    fi
    if [ -z "$value" ]; then
        echo "orderstream: $1 is empty: set it in .env" >&2
        exit 1
    fi
    printf '%s' "$value"
}
orderstream_password=$(secret ORDERSTREAM_DB_PASSWORD)
grafana_password=$(secret GRAFANA_DB_PASSWORD)

client=$(command -v mariadb || command -v mysql)
db=${ORDERSTREAM_DATABASE:-orderstream}
MYSQL_PWD=${MARIADB_ROOT_PASSWORD:-${MYSQL_ROOT_PASSWORD:-}}
export MYSQL_PWD
# shellcheck disable=SC2086 # word splitting of the extra client arguments is intended
"$client" -uroot ${MYSQL_INIT_CLIENT_ARGS:-} <<SQL
CREATE USER IF NOT EXISTS 'orderstream'@'%' IDENTIFIED BY '${orderstream_password}';
GRANT SELECT, INSERT, UPDATE, DELETE ON \`${db}\`.* TO 'orderstream'@'%';
CREATE USER IF NOT EXISTS 'grafana'@'%' IDENTIFIED BY '${grafana_password}';
GRANT SELECT ON \`${db}\`.* TO 'grafana'@'%';
FLUSH PRIVILEGES;
SQL
echo "orderstream: created the users orderstream (rows only) and grafana (read only) on ${db}"
