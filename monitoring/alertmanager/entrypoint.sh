#!/bin/sh
# Starts Alertmanager with monitoring/alertmanager.yml rendered for this
# environment. Alertmanager never expands environment variables in its
# configuration (upstream points to rendering the file, or to *_file
# settings, which Debian 12's Alertmanager 0.25 lacks for webhooks), so this
# puts ALERT_WEBHOOK_URL in place of ${ALERT_WEBHOOK_URL}, or, when it is
# empty, drops the lines marked "# @webhook". The rendered copy, which holds
# the URL (often a secret: a Slack webhook is), is readable by its owner only.
#
# Compose runs it in the official image (busybox sh); the tests run it with
# Debian's binary (localstack/alerting.py). Arguments go to Alertmanager.
#   ALERT_WEBHOOK_URL       http(s) URL that receives every notification (optional)
#   ALERTMANAGER_TEMPLATE   default /etc/alertmanager/alertmanager.yml
#   ALERTMANAGER_CONFIG     the rendered copy, default /run/alertmanager/alertmanager.yml
#   ALERTMANAGER_BIN        default /bin/alertmanager
set -eu

template=${ALERTMANAGER_TEMPLATE:-/etc/alertmanager/alertmanager.yml}
config=${ALERTMANAGER_CONFIG:-/run/alertmanager/alertmanager.yml}
binary=${ALERTMANAGER_BIN:-/bin/alertmanager}
url=${ALERT_WEBHOOK_URL:-}

fail() {
  echo "alertmanager entrypoint: $*" >&2
  exit 2
}

case $url in
  '')
    echo "alertmanager entrypoint: ALERT_WEBHOOK_URL is not set: alerts show on Alertmanager's page and are delivered nowhere (docs/alerts.md)" >&2
    ;;
  http://?* | https://?*) ;;
  *) fail "ALERT_WEBHOOK_URL must start with http:// or https://" ;;
esac
# The URL goes inside a single-quoted YAML string, on one line.
case $url in
  *"'"* | *" "* | *"	"* | *"
"*) fail "ALERT_WEBHOOK_URL must not hold a quote (') or white space; percent-encode them" ;;
esac
[ -r "$template" ] || fail "cannot read the template $template"

umask 077
mkdir -p "$(dirname "$config")"
# awk, not sed: the URL is data (& and \ in it stay as they are), read from the environment.
ALERT_WEBHOOK_URL=$url awk '
  BEGIN { url = ENVIRON["ALERT_WEBHOOK_URL"]; name = "${ALERT_WEBHOOK_URL}" }
  url == "" && /# @webhook$/ { next }
  {
    line = $0; out = ""
    while ((i = index(line, name)) > 0) {
      out = out substr(line, 1, i - 1) url
      line = substr(line, i + length(name))
    }
    print out line
  }
' "$template" >"$config"

exec "$binary" --config.file="$config" "$@"
