#!/usr/bin/env bash
# Installs what the local stack needs to run its servers natively (no Docker):
#   - Debian packages: mosquitto, mosquitto-clients, mosquitto-dev and
#     libmosquitto-dev (headers for the broker plugin), prometheus (monitoring
#     test), prometheus-alertmanager (alerting test), chromium (browser tests), and
#     a C compiler, Java 17 + Maven, Go, Node.js + npm when they are missing;
#   - Mosquitto's client_owners plugin (mosquitto/plugin/, C) into the cache;
#   - Kafka's jars (Maven, localstack/kafka/pom.xml), FerretDB (built from the Go
#     module proxy, localstack/ferretdb/go.mod + go.sum), Telegraf with only its
#     mqtt_consumer input and kafka output (the benchmarks' peer, Go module proxy,
#     localstack/telegraf/) and mongo-express (npm ci,
#     localstack/mongo-express/package-lock.json) into the cache directory
#     ${LOCALSTACK_CACHE:-<repo>/.cache/localstack}.
#
# Idempotent: each component is rebuilt only when its manifest changed (a stamp
# file holds the manifest's hash; folders are named after the version), and
# apt-get runs only when a package is missing. Run as root on Debian 12, or as a
# user with sudo.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$HERE")
CACHE=${LOCALSTACK_CACHE:-$ROOT/.cache/localstack}
export DEBIAN_FRONTEND=noninteractive

say() { printf '%s\n' "$*"; }
die() { printf 'install.sh: %s\n' "$*" >&2; exit 1; }

SUDO=()
[ "$(id -u)" -eq 0 ] || SUDO=(sudo)

# ----------------------------------------------------------------- Debian packages

installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }

java_major() {  # major version of the first java on PATH, 0 if none
  command -v java >/dev/null 2>&1 || { echo 0; return; }
  java -version 2>&1 | sed -n '1s/.*version "\([0-9]*\).*/\1/p' | grep . || echo 0
}

# The machine's Go may live outside PATH (e.g. /usr/local/go from go.dev).
for dir in /usr/local/go/bin /usr/lib/go/bin; do
  if ! command -v go >/dev/null 2>&1 && [ -x "$dir/go" ]; then PATH=$PATH:$dir; fi
done

packages=()
for pkg in mosquitto mosquitto-clients mosquitto-dev libmosquitto-dev prometheus prometheus-alertmanager chromium; do
  installed "$pkg" || packages+=("$pkg")
done
command -v cc >/dev/null 2>&1 || packages+=(gcc libc6-dev)
command -v patch >/dev/null 2>&1 || packages+=(patch)
[ "$(java_major)" -ge 17 ] || packages+=(openjdk-17-jre-headless)
command -v mvn >/dev/null 2>&1 || packages+=(maven)
command -v go >/dev/null 2>&1 || packages+=(golang-go)
command -v node >/dev/null 2>&1 || packages+=(nodejs)
command -v npm >/dev/null 2>&1 || packages+=(npm)

if [ ${#packages[@]} -gt 0 ]; then
  say "debian packages: installing ${packages[*]}"
  if [ ${#SUDO[@]} -gt 0 ] && ! command -v sudo >/dev/null 2>&1; then
    die "missing Debian packages (${packages[*]}): run this script as root"
  fi
  # Wait for another apt/dpkg (e.g. unattended-upgrades) instead of failing on its lock.
  apt_opts=(-y -q -o DPkg::Lock::Timeout=900)
  "${SUDO[@]}" apt-get -q -o DPkg::Lock::Timeout=900 update >/dev/null
  # chromium keeps its recommends (fonts) so screenshots render text.
  plain=()
  for pkg in "${packages[@]}"; do [ "$pkg" = chromium ] || plain+=("$pkg"); done
  if [ ${#plain[@]} -gt 0 ]; then
    "${SUDO[@]}" apt-get install "${apt_opts[@]}" --no-install-recommends "${plain[@]}" >/dev/null
  fi
  if [ ${#plain[@]} -lt ${#packages[@]} ]; then
    "${SUDO[@]}" apt-get install "${apt_opts[@]}" chromium >/dev/null
  fi
  if [[ " ${packages[*]} " == *" mosquitto "* ]] && command -v systemctl >/dev/null 2>&1 \
    && systemctl is-active --quiet mosquitto 2>/dev/null; then
    # Debian starts its own broker on 1883, the stack's default MQTT_PORT.
    "${SUDO[@]}" systemctl disable --now mosquitto >/dev/null 2>&1 || true
    say "debian packages: disabled the packaged mosquitto service (it took port 1883)"
  fi
  if [[ " ${packages[*]} " == *" prometheus "* ]] && command -v systemctl >/dev/null 2>&1 \
    && systemctl is-active --quiet prometheus 2>/dev/null; then
    # The tests run their own Prometheus on a free port; the packaged one would scrape nothing.
    "${SUDO[@]}" systemctl disable --now prometheus >/dev/null 2>&1 || true
    say "debian packages: disabled the packaged prometheus service (it took port 9090)"
  fi
  if [[ " ${packages[*]} " == *" prometheus-alertmanager "* ]] && command -v systemctl >/dev/null 2>&1 \
    && systemctl is-active --quiet prometheus-alertmanager 2>/dev/null; then
    # The alerting test runs its own Alertmanager (/usr/bin/prometheus-alertmanager) on a free port.
    "${SUDO[@]}" systemctl disable --now prometheus-alertmanager >/dev/null 2>&1 || true
    say "debian packages: disabled the packaged prometheus-alertmanager service (it took port 9093)"
  fi
  hash -r
else
  say "debian packages: present"
fi

mkdir -p "$CACHE"

# Hash of the files that define a component: a changed manifest means a rebuild.
stamp_of() { cat "$@" | sha256sum | cut -c1-64; }
is_current() { [ -f "$1/.stamp" ] && [ "$(cat "$1/.stamp")" = "$2" ]; }
# Build into a temporary folder beside the target, then swap it in, so an
# interrupted build never leaves a half-filled cache that looks complete.
TMPS=()
new_tmp() { tmp=$(mktemp -d "$CACHE/.tmp-$1.XXXXXX"); TMPS+=("$tmp"); }  # sets $tmp
finish() {  # finish <tmp> <dest> <stamp>
  printf '%s\n' "$3" >"$1/.stamp"
  chmod 755 "$1"  # mktemp made it 0700
  rm -rf "$2"
  mv "$1" "$2"
}
# shellcheck disable=SC2317  # called by the EXIT trap
cleanup() { [ ${#TMPS[@]} -eq 0 ] || rm -rf "${TMPS[@]}"; }
trap cleanup EXIT

status=0

# ----------------------------------------------------------------- Mosquitto's plugin (C)

# mosquitto/plugin/client_owners.c binds client ids to users; the local stack's
# broker loads it from here (localstack/servers/mosquitto.py checks the stamp, so a changed
# source is never run stale).
plugin_src=$ROOT/mosquitto/plugin
plugin_dest=$CACHE/mosquitto-plugin
plugin_stamp=$(stamp_of "$plugin_src/client_owners.c" "$plugin_src/build.sh")
if is_current "$plugin_dest" "$plugin_stamp"; then
  say "mosquitto plugin: cached"
else
  new_tmp mosquitto-plugin
  sh "$plugin_src/build.sh" "$tmp/mosquitto_client_owners.so" || die "mosquitto plugin: the build failed"
  finish "$tmp" "$plugin_dest" "$plugin_stamp"
  say "mosquitto plugin: built"
fi

# ----------------------------------------------------------------- Kafka (Maven)

kafka_version=$(sed -n 's:.*<kafka.version>\([^<]*\)</kafka.version>.*:\1:p' "$HERE/kafka/pom.xml")
[ -n "$kafka_version" ] || die "no <kafka.version> in localstack/kafka/pom.xml"
kafka_dest=$CACHE/kafka-$kafka_version
kafka_stamp=$(stamp_of "$HERE/kafka/pom.xml")
if is_current "$kafka_dest" "$kafka_stamp"; then
  say "kafka $kafka_version: cached"
else
  new_tmp kafka
  # Run on a copy of the pom so Maven leaves no target/ in the repo.
  cp "$HERE/kafka/pom.xml" "$tmp/pom.xml"
  # Its output (only errors with -q, plus stray colour codes) is shown on failure.
  if ! mvn -q -B -f "$tmp/pom.xml" dependency:copy-dependencies \
    -DoutputDirectory="$tmp/lib" -DincludeScope=runtime >"$tmp/mvn.log" 2>&1; then
    cat "$tmp/mvn.log" >&2
    die "kafka: mvn dependency:copy-dependencies failed"
  fi
  rm -f "$tmp/mvn.log"
  rm -f "$tmp/pom.xml"; rm -rf "$tmp/target"
  [ -f "$tmp/lib/kafka_2.13-$kafka_version.jar" ] || die "kafka: Maven did not fetch kafka_2.13-$kafka_version.jar"
  finish "$tmp" "$kafka_dest" "$kafka_stamp"
  say "kafka $kafka_version: built"
fi

# ----------------------------------------------------------------- FerretDB (Go)

ferretdb_version=$(awk '$1 == "github.com/FerretDB/FerretDB" { print $2 } $2 == "github.com/FerretDB/FerretDB" { print $3 }' \
  "$HERE/ferretdb/go.mod" | head -n1)
[ -n "$ferretdb_version" ] || die "no github.com/FerretDB/FerretDB requirement in localstack/ferretdb/go.mod"
ferretdb_dest=$CACHE/ferretdb-$ferretdb_version
ferretdb_stamp=$(stamp_of "$HERE/ferretdb/go.mod" "$HERE/ferretdb/go.sum" "$HERE"/ferretdb/patches/*.patch)
go_ok() {  # FerretDB's go.mod says go 1.24
  local major minor
  read -r major minor < <(go env GOVERSION 2>/dev/null | sed -n 's/^go\([0-9]*\)\.\([0-9]*\).*/\1 \2/p')
  [ -n "${minor:-}" ] && { [ "$major" -gt 1 ] || [ "$minor" -ge 24 ]; }
}
if is_current "$ferretdb_dest" "$ferretdb_stamp"; then
  say "ferretdb $ferretdb_version: cached"
elif ! go_ok; then
  say "ferretdb $ferretdb_version: NOT BUILT: it needs Go >= 1.24, found $(go env GOVERSION 2>/dev/null || echo none)" \
    "(Debian 12 ships 1.19). Install Go 1.24+ (e.g. in /usr/local/go), or set MONGO_URI to use an external MongoDB." >&2
  [ -n "${MONGO_URI:-}" ] || status=1
else
  new_tmp ferretdb
  (
    cd "$HERE/ferretdb"
    export GOFLAGS="-mod=readonly -buildvcs=false" GOTOOLCHAIN=local CGO_ENABLED=0
    # Downloads FerretDB's module zip and checks it against our go.sum.
    go mod download github.com/FerretDB/FerretDB
    src=$(go list -m -f '{{.Dir}}' github.com/FerretDB/FerretDB)
    # Built from a copy of the module, not with `go build <pkg>` from this module:
    # the binary's main module is FerretDB either way, and then it panics at startup
    # unless build/version/version.txt (git-ignored upstream, so absent from the
    # module zip) is embedded. The copy gets that file; FerretDB's own go.sum (inside
    # the verified zip) pins its dependencies.
    cp -R "$src" "$tmp/src"
    chmod -R u+w "$tmp/src"
    printf '%s\n' "$ferretdb_version" >"$tmp/src/build/version/version.txt"
    printf 'localstack\n' >"$tmp/src/build/version/package.txt"
    cd "$tmp/src"
    # Fixes of ours, each explained at the top of its file (localstack/README.md).
    for fix in "$HERE"/ferretdb/patches/*.patch; do
      patch -p1 --forward --quiet <"$fix" || die "ferretdb: $fix does not apply to $ferretdb_version"
    done
    go build -trimpath -o "$tmp/ferretdb" ./cmd/ferretdb
  )
  rm -rf "$tmp/src"
  "$tmp/ferretdb" --version 2>&1 | grep -qx "version: $ferretdb_version" \
    || die "ferretdb: the built binary does not report version $ferretdb_version"
  finish "$tmp" "$ferretdb_dest" "$ferretdb_stamp"
  say "ferretdb $ferretdb_version: built"
fi

# ----------------------------------------------------------------- Docker Compose's CLI (Go)

# Not to run containers (there is no engine here): `docker compose config`
# resolves the project (overrides, extends, profiles, variables) exactly as a
# user's Compose does, and tests/unit/test_compose.py runs it.
compose_version=$(awk '$1 == "github.com/docker/compose/v5" { print $2 }' "$HERE/compose/go.mod" | head -n1)
[ -n "$compose_version" ] || die "no github.com/docker/compose/v5 requirement in localstack/compose/go.mod"
compose_dest=$CACHE/compose-$compose_version
compose_stamp=$(stamp_of "$HERE/compose/go.mod" "$HERE/compose/go.sum")
if is_current "$compose_dest" "$compose_stamp"; then
  say "docker compose $compose_version: cached"
elif ! go_ok; then
  say "docker compose $compose_version: NOT BUILT: it needs Go >= 1.24" >&2
  status=1
else
  new_tmp compose
  (
    cd "$HERE/compose"
    export GOFLAGS="-mod=readonly -buildvcs=false" GOTOOLCHAIN=local CGO_ENABLED=0
    go build -trimpath -o "$tmp/docker-compose" github.com/docker/compose/v5/cmd
  ) || die "docker compose: the build failed"
  "$tmp/docker-compose" version >/dev/null || die "docker compose: the built binary does not run"
  finish "$tmp" "$compose_dest" "$compose_stamp"
  say "docker compose $compose_version: built"
fi

# ----------------------------------------------------------------- Telegraf (Go)

# The peer `python -m bench.peer` measures the bridge against (MQTT -> Kafka,
# acknowledged after the output): a "custom" build with only the plugins named
# in localstack/telegraf/tags, its dependencies pinned by go.mod + go.sum.
telegraf_version=$(awk '$1 == "github.com/influxdata/telegraf" { print $2 }' "$HERE/telegraf/go.mod" | head -n1)
[ -n "$telegraf_version" ] || die "no github.com/influxdata/telegraf requirement in localstack/telegraf/go.mod"
telegraf_dest=$CACHE/telegraf-${telegraf_version#v}
telegraf_stamp=$(stamp_of "$HERE/telegraf/go.mod" "$HERE/telegraf/go.sum" "$HERE/telegraf/tags")
if is_current "$telegraf_dest" "$telegraf_stamp"; then
  say "telegraf $telegraf_version: cached"
elif ! go_ok; then
  say "telegraf $telegraf_version: NOT BUILT: it needs Go >= 1.24 (only bench.peer uses it)" >&2
  status=1
else
  new_tmp telegraf
  (
    cd "$HERE/telegraf"
    export GOFLAGS="-mod=readonly -buildvcs=false" GOTOOLCHAIN=local CGO_ENABLED=0
    go build -trimpath -tags "$(tr -d '[:space:]' <tags)" \
      -ldflags "-X github.com/influxdata/telegraf/internal.Version=${telegraf_version#v}" \
      -o "$tmp/telegraf" github.com/influxdata/telegraf/cmd/telegraf
  ) || die "telegraf: the build failed"
  "$tmp/telegraf" --version | grep -q "Telegraf ${telegraf_version#v}" \
    || die "telegraf: the built binary does not report version ${telegraf_version#v}"
  finish "$tmp" "$telegraf_dest" "$telegraf_stamp"
  say "telegraf $telegraf_version: built"
fi

# ----------------------------------------------------------------- mongo-express (npm)

me_version=$(sed -n 's/.*"mongo-express": *"\([^"]*\)".*/\1/p' "$HERE/mongo-express/package.json" | head -n1)
[ -n "$me_version" ] || die "no mongo-express dependency in localstack/mongo-express/package.json"
me_dest=$CACHE/mongo-express-$me_version
me_stamp=$(stamp_of "$HERE/mongo-express/package.json" "$HERE/mongo-express/package-lock.json")
if is_current "$me_dest" "$me_stamp"; then
  say "mongo-express $me_version: cached"
else
  new_tmp mongo-express
  cp "$HERE/mongo-express/package.json" "$HERE/mongo-express/package-lock.json" "$tmp/"
  # --ignore-scripts: no dependency needs an install script (es5-ext's only prints a message).
  (cd "$tmp" && npm ci --omit=dev --ignore-scripts --no-audit --no-fund --loglevel=error >/dev/null)
  # 1.0.0 is the newest release on npm that ships its prebuilt front end.
  [ -f "$tmp/node_modules/mongo-express/build-assets.json" ] || die "mongo-express: build-assets.json is missing"
  finish "$tmp" "$me_dest" "$me_stamp"
  say "mongo-express $me_version: built"
fi

exit $status
