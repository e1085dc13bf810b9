#!/bin/sh
# Builds the client_owners plugin (client_owners.c): sh build.sh <output.so>.
# Needs a C compiler and Mosquitto 2.0's plugin headers: Debian's mosquitto-dev
# and libmosquitto-dev (localstack/install.sh), Alpine's build-base and
# mosquitto-dev (mosquitto/Dockerfile). The broker resolves the mosquitto_*
# symbols when it loads the plugin, so nothing is linked.
set -eu
[ $# -eq 1 ] || { echo "usage: sh build.sh <output.so>" >&2; exit 2; }
"${CC:-cc}" -std=c99 -D_POSIX_C_SOURCE=200809L -O2 -Wall -Wextra -fPIC -shared \
    -o "$1" "$(dirname "$0")/client_owners.c"
