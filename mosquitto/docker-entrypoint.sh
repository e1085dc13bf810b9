#!/bin/sh
# Mosquitto's entry point in Compose: write the password file and the ACL from
# the environment (.env), then replace this shell with the broker, so the
# broker is PID 1 and gets SIGTERM (and saves its database) on `docker stop`.
#
#   MQTT_SERVER_USERNAME / MQTT_SERVER_PASSWORD  the bridge: reads sensors/#
#   MQTT_SENSOR_USERNAME / MQTT_SENSOR_PASSWORD  every sensor: writes only
#                                                sensors/<its client id>/#
#
# MOSQUITTO_AUTH_DIR and MOSQUITTO_DATA_DIR exist so the script can be tried
# outside the container; Compose leaves them at their defaults.
set -eu

: "${MQTT_SERVER_USERNAME:?is not set}"
: "${MQTT_SERVER_PASSWORD:?is not set}"
: "${MQTT_SENSOR_USERNAME:?is not set}"
: "${MQTT_SENSOR_PASSWORD:?is not set}"
if [ "$MQTT_SERVER_USERNAME" = "$MQTT_SENSOR_USERNAME" ]; then
    # One user would get both rights and the second password would win.
    echo "MQTT_SERVER_USERNAME and MQTT_SENSOR_USERNAME must differ" >&2
    exit 2
fi

auth_dir="${MOSQUITTO_AUTH_DIR:-/mosquitto/auth}"
data_dir="${MOSQUITTO_DATA_DIR:-/mosquitto/data}"

umask 077
mkdir -p "$auth_dir" "$data_dir"
# -c starts a fresh file, so a user removed from .env loses access on restart.
mosquitto_passwd -c -b "$auth_dir/passwd" "$MQTT_SERVER_USERNAME" "$MQTT_SERVER_PASSWORD"
mosquitto_passwd -b "$auth_dir/passwd" "$MQTT_SENSOR_USERNAME" "$MQTT_SENSOR_PASSWORD"

# "pattern" lines apply to every user; %c is the client id, and a sensor
# connects with its sensor id as client id, so it can publish only as itself.
# The bridge reads every sensor's readings, and $SYS for the healthcheck.
cat > "$auth_dir/acl" <<ACL
pattern write sensors/%c/#

user $MQTT_SERVER_USERNAME
topic read sensors/#
topic read \$SYS/#
ACL
chmod 600 "$auth_dir/passwd" "$auth_dir/acl"

# Started as root, Mosquitto drops to the "mosquitto" user before it reads
# these files and writes its database: hand them over (as the image's own
# entry point does for /mosquitto).
if [ "$(id -u)" = 0 ] && id mosquitto > /dev/null 2>&1; then
    chown -R mosquitto:mosquitto "$auth_dir" "$data_dir"
fi

if [ "$#" -eq 0 ]; then
    set -- mosquitto -c /mosquitto/config/mosquitto.conf
fi
exec "$@"
