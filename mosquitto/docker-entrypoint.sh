#!/bin/sh
# Writes Mosquitto's password file, ACL and client-id owners from the
# environment (.env), then replaces this shell with the broker, so the broker is
# PID 1 and gets SIGTERM (and saves its database) on `docker stop`. The one
# definition of who may do what on the broker: Compose runs it as the entry
# point, and the local stack (localstack/servers/mosquitto.py) runs it with
# MOSQUITTO_AUTH_DIR set and the command `true`.
#
#   MQTT_SERVER_USERNAME / MQTT_SERVER_PASSWORD  the bridge: reads sensors/#,
#                          publishes nothing
#   MQTT_SERVER_CLIENT_IDS the bridge's client ids (its MQTT_CLIENT_IDs and the
#                          healthcheck's), comma separated; '*' matches any run
#                          of characters. Default "bridge-*". Only the bridge's
#                          user may connect with them, and it may use no other.
#   MQTT_SENSOR_ACCOUNTS   sensors with a user of their own, "id:password,..."
#                          (comma separated): user <id> connects only with
#                          client id <id>, no other user can, and it writes
#                          only sensors/<id>/#
#   MQTT_SENSOR_USERNAME / MQTT_SENSOR_PASSWORD  the shared fleet account, for
#                          identical replicas (`--scale sensor=N`): connects
#                          with any client id that is not the bridge's or an
#                          own-user sensor's, and writes only
#                          sensors/<its client id>/#
#
# The owners file is read by the client_owners plugin (mosquitto/plugin/),
# which refuses a CONNECT whose client id belongs to another user before the
# broker looks for that id's session.
#
# TLS (docker-compose.tls.yml, and the local stack with STACK_TLS_DIR):
#   MOSQUITTO_TLS_CERT_FILE / MOSQUITTO_TLS_KEY_FILE  the broker's certificate
#                          and key (PEM). Set, the script also writes
#                          $MOSQUITTO_AUTH_DIR/mosquitto.conf: MOSQUITTO_CONF
#                          (default /mosquitto/config/mosquitto.conf) with the
#                          two files on every listener, so no listener speaks
#                          in the clear; run the broker with that file.
#
# MOSQUITTO_AUTH_DIR and MOSQUITTO_DATA_DIR exist so the script can run outside
# the container; Compose leaves them at their defaults. MOSQUITTO_OWNER (default
# mosquitto) gets the files when run as root; empty leaves them as they are.
set -euf  # -f: no globbing, a password may hold "*"

: "${MQTT_SERVER_USERNAME:?is not set}"
: "${MQTT_SERVER_PASSWORD:?is not set}"
: "${MQTT_SENSOR_USERNAME:?is not set}"
: "${MQTT_SENSOR_PASSWORD:?is not set}"
accounts="$(printf '%s' "${MQTT_SENSOR_ACCOUNTS:-}" | tr ',' ' ')"
server_ids="$(printf '%s' "${MQTT_SERVER_CLIENT_IDS:-bridge-*}" | tr ',' ' ')"

fail() {
    echo "$*" >&2
    exit 2
}

if [ "$MQTT_SERVER_USERNAME" = "$MQTT_SENSOR_USERNAME" ]; then
    # One user would get both rights and the second password would win.
    fail "MQTT_SERVER_USERNAME and MQTT_SENSOR_USERNAME must differ"
fi
for name in "$MQTT_SERVER_USERNAME" "$MQTT_SENSOR_USERNAME"; do
    # The ACL and owners files are split on white space.
    case "$name" in *[[:space:]:]*) fail "MQTT_SERVER_USERNAME and MQTT_SENSOR_USERNAME must not contain ':' or white space" ;; esac
done

# The bridge's client ids: letters, digits, '_', '.', '-' and the wildcard '*'.
[ -n "$(printf '%s' "$server_ids" | tr -d ' ')" ] || fail "MQTT_SERVER_CLIENT_IDS names no client id"
for pattern in $server_ids; do
    case "$pattern" in
        *[!A-Za-z0-9_.*-]*) fail "MQTT_SERVER_CLIENT_IDS: '$pattern' may hold only letters, digits, '_', '.', '-' and '*'" ;;
        *[!*]*) ;;
        *) fail "MQTT_SERVER_CLIENT_IDS: '$pattern' would give the bridge every client id" ;;
    esac
done

# Check every account before writing anything; the messages never show a password.
ids=""
n=0
for entry in $accounts; do
    n=$((n + 1))
    id="${entry%%:*}"
    password="${entry#*:}"
    case "$entry" in *:*) ;; *) fail "MQTT_SENSOR_ACCOUNTS: entry $n is not id:password" ;; esac
    case "$id" in
        "" | [!A-Za-z0-9]* | *[!A-Za-z0-9_.-]*)
            fail "MQTT_SENSOR_ACCOUNTS: entry $n: the sensor id must be letters, digits, '_', '.' or '-' (and start with a letter or digit)"
            ;;
    esac
    [ "${#id}" -le 64 ] || fail "MQTT_SENSOR_ACCOUNTS: entry $n: the sensor id is longer than 64 characters"
    [ -n "$password" ] || fail "MQTT_SENSOR_ACCOUNTS: entry $n ($id) has an empty password"
    if [ "$id" = "$MQTT_SERVER_USERNAME" ] || [ "$id" = "$MQTT_SENSOR_USERNAME" ]; then
        fail "MQTT_SENSOR_ACCOUNTS: entry $n: $id is already MQTT_SERVER_USERNAME or MQTT_SENSOR_USERNAME"
    fi
    case " $ids " in *" $id "*) fail "MQTT_SENSOR_ACCOUNTS: $id is listed twice" ;; esac
    for pattern in $server_ids; do
        # shellcheck disable=SC2254  # the pattern is meant to match
        case "$id" in $pattern) fail "MQTT_SENSOR_ACCOUNTS: entry $n: $id is one of the bridge's client ids ($pattern in MQTT_SERVER_CLIENT_IDS)" ;; esac
    done
    ids="$ids $id"
done

tls_cert="${MOSQUITTO_TLS_CERT_FILE:-}"
tls_key="${MOSQUITTO_TLS_KEY_FILE:-}"
conf="${MOSQUITTO_CONF:-/mosquitto/config/mosquitto.conf}"
if [ -n "$tls_cert" ] || [ -n "$tls_key" ]; then
    [ -n "$tls_cert" ] && [ -n "$tls_key" ] || fail "MOSQUITTO_TLS_CERT_FILE and MOSQUITTO_TLS_KEY_FILE: set both or neither"
    [ -r "$tls_cert" ] || fail "MOSQUITTO_TLS_CERT_FILE: cannot read $tls_cert"
    [ -r "$tls_key" ] || fail "MOSQUITTO_TLS_KEY_FILE: cannot read $tls_key"
    [ -r "$conf" ] || fail "MOSQUITTO_CONF: cannot read $conf"
fi

auth_dir="${MOSQUITTO_AUTH_DIR:-/mosquitto/auth}"
data_dir="${MOSQUITTO_DATA_DIR:-/mosquitto/data}"

umask 077
mkdir -p "$auth_dir" "$data_dir"
# -c starts a fresh file, so a user removed from .env loses access on restart.
mosquitto_passwd -c -b "$auth_dir/passwd" "$MQTT_SERVER_USERNAME" "$MQTT_SERVER_PASSWORD"
mosquitto_passwd -b "$auth_dir/passwd" "$MQTT_SENSOR_USERNAME" "$MQTT_SENSOR_PASSWORD"
for entry in $accounts; do
    mosquitto_passwd -b "$auth_dir/passwd" "${entry%%:*}" "${entry#*:}"
done

# Mosquitto checks a user's own "topic" lines first (every deny, then every
# grant) and only then the "pattern" lines, which apply to every user. The
# fleet's grant is the pattern (%c is the client id; a sensor's client id is
# its sensor id). The plugin already keeps other users off an own-user
# sensor's client id, but a client id may hold '/' ("own-1/x" would extend the
# pattern to sensors/own-1/x/#), so each user is still denied the ids of the
# sensors with accounts that are not its own. The pattern matches the bridge's
# user too; the plugin refuses every publish of that user first. The bridge
# reads every sensor, and $SYS for the healthcheck. (The deny lines grow with
# the square of the accounts; past a few hundred, Mosquitto's dynamic-security
# plugin is the better tool.)
{
    echo "pattern write sensors/%c/#"
    echo
    echo "user $MQTT_SERVER_USERNAME"
    echo "topic read sensors/#"
    echo "topic read \$SYS/#"
    echo
    echo "user $MQTT_SENSOR_USERNAME"
    for other in $ids; do echo "topic deny sensors/$other/#"; done
    for id in $ids; do
        echo
        echo "user $id"
        for other in $ids; do
            [ "$other" = "$id" ] || echo "topic deny sensors/$other/#"
        done
        echo "topic write sensors/$id/#"
    done
} > "$auth_dir/acl"

# Who owns which client ids (read by the client_owners plugin; see the header).
{
    echo "# Written by docker-entrypoint.sh at each start: owner <user> <client id pattern>"
    for pattern in $server_ids; do echo "owner $MQTT_SERVER_USERNAME $pattern"; done
    echo "readonly $MQTT_SERVER_USERNAME"
    for id in $ids; do echo "owner $id $id"; done
} > "$auth_dir/owners"
chmod 600 "$auth_dir/passwd" "$auth_dir/acl" "$auth_dir/owners"

# With TLS, every listener gets the certificate and key (a listener's own
# settings follow its "listener" line, so they go right after it).
if [ -n "$tls_cert" ]; then
    awk -v cert="$tls_cert" -v key="$tls_key" \
        '{ print } $1 == "listener" { print "certfile " cert; print "keyfile " key }' \
        "$conf" > "$auth_dir/mosquitto.conf"
fi

# Started as root, Mosquitto drops to the "mosquitto" user before it reads
# these files and writes its database: hand them over (as the image's own
# entry point does for /mosquitto).
owner="${MOSQUITTO_OWNER-mosquitto}"
if [ -n "$owner" ] && [ "$(id -u)" = 0 ] && id "$owner" > /dev/null 2>&1; then
    chown -R "$owner:$owner" "$auth_dir" "$data_dir"
fi

if [ "$#" -eq 0 ]; then
    set -- mosquitto -c /mosquitto/config/mosquitto.conf
fi
exec "$@"
