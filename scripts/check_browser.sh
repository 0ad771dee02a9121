#!/usr/bin/env bash
# Load a study's report and its optuna-dashboard in headless Chromium and check that they render.
#
#   scripts/check_browser.sh --report studies/demo/export/report.html
#   scripts/check_browser.sh --dashboard http://127.0.0.1:8080 --study demo      # `study dashboard` running
#   scripts/check_browser.sh --report FILE --screenshot /tmp/report.png          # also save a picture
#
# Report: every plotly graph div has been drawn (plotly.js ran: `js-plotly-plot` with an
# `svg.main-svg` inside), at least --min-plots of them (default 1).
# Dashboard: the React app lists the study (`<id>. <name>` linking to /dashboard/studies/<id>),
# and the study's page draws its plotly charts.
#
# Installs nothing: it needs Chromium at $CHROMIUM (default /usr/bin/chromium; on Debian
# `apt-get install chromium`). Exit codes: 0 all checks passed, 1 a check failed,
# 2 bad usage, 3 Chromium is missing.
set -euo pipefail

CHROMIUM="${CHROMIUM:-/usr/bin/chromium}"
BUDGET_MS="${CHECK_BROWSER_BUDGET_MS:-10000}" # virtual time the page gets to run its scripts
TIMEOUT_S="${CHECK_BROWSER_TIMEOUT_S:-90}"    # wall-clock limit per Chromium run

report=""
dashboard=""
study=""
screenshot=""
min_plots=1

usage() {
    sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

while [[ $# -gt 0 ]]; do
    case "$1" in
        --report) report="${2:?--report needs a file}"; shift 2 ;;
        --dashboard) dashboard="${2:?--dashboard needs a URL}"; shift 2 ;;
        --study) study="${2:?--study needs a name}"; shift 2 ;;
        --screenshot) screenshot="${2:?--screenshot needs a .png path}"; shift 2 ;;
        --min-plots) min_plots="${2:?--min-plots needs a number}"; shift 2 ;;
        -h | --help) usage ;;
        *) echo "check_browser: unknown argument '$1'" >&2; usage ;;
    esac
done
if [[ -z "$report" && -z "$dashboard" ]]; then
    echo "check_browser: give --report FILE and/or --dashboard URL --study NAME" >&2
    usage
fi
if [[ -n "$dashboard" && -z "$study" ]]; then
    echo "check_browser: --dashboard needs --study NAME (the study to look for)" >&2
    exit 2
fi
if [[ -n "$screenshot" && -z "$report" ]]; then
    echo "check_browser: --screenshot pictures the report; give --report FILE too" >&2
    exit 2
fi
if [[ ! -x "$CHROMIUM" ]]; then
    echo "check_browser: Chromium not found at $CHROMIUM; install it (Debian: apt-get install chromium) or set CHROMIUM" >&2
    exit 3
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
failures=0

fail() {
    echo "FAIL: $*" >&2
    failures=$((failures + 1))
}

# chromium ARGS... URL: one headless run with a fresh profile, no network beyond the URL's host.
chromium() {
    local profile
    profile="$(mktemp -d "$work/profile.XXXX")"
    timeout "$TIMEOUT_S" "$CHROMIUM" --headless --no-sandbox --disable-gpu \
        --disable-background-networking --disable-component-update --disable-sync --no-first-run \
        --user-data-dir="$profile" --virtual-time-budget="$BUDGET_MS" "$@" 2>>"$work/chromium.log"
}

# dump URL OUT: the DOM after the page's scripts ran.
dump() {
    if ! chromium --dump-dom "$1" >"$2"; then
        fail "Chromium could not load $1 (see its log below)"
        tail -n 20 "$work/chromium.log" >&2 || true
        return 1
    fi
}

count() { # count REGEX FILE: matches of an extended regex (0 when none)
    { grep -oE "$1" "$2" || true; } | wc -l | tr -d ' '
}

check_report() {
    local file="$1" url dom total drawn unavailable
    if [[ ! -f "$file" ]]; then
        fail "no report at $file; write it with: study export --study NAME"
        return
    fi
    url="file://$(cd "$(dirname "$file")" && pwd)/$(basename "$file")"
    dom="$work/report.html"
    dump "$url" "$dom" || return
    grep -q '<title>signtune report: ' "$dom" || fail "$file: not a signtune report (no 'signtune report:' title)"
    total="$(count 'class="plotly-graph-div' "$dom")"
    drawn="$(count 'class="plotly-graph-div js-plotly-plot"[^>]*><div class="plot-container plotly"[^>]*><div class="[^"]*svg-container"[^>]*><svg class="main-svg"' "$dom")"
    unavailable="$(count "class='signtune-unavailable'|class=\"signtune-unavailable\"" "$dom")"
    echo "report $file: $drawn of $total plotly graphs drawn with an svg, $unavailable plots not available yet"
    ((drawn == total)) || fail "$file: $((total - drawn)) plotly graph div(s) were not drawn (plotly.js did not run?)"
    ((drawn >= min_plots)) || fail "$file: $drawn drawn plots, expected at least $min_plots"
    if [[ -n "$screenshot" ]]; then
        chromium --hide-scrollbars --window-size=1280,2000 --screenshot="$screenshot" "$url" >/dev/null ||
            fail "could not take a screenshot of $file"
        [[ -s "$screenshot" ]] && echo "screenshot: $screenshot"
    fi
}

check_dashboard() {
    local base="${1%/}" name="$2" dom ids id="" page plots svgs
    dom="$work/dashboard.html"
    dump "$base/dashboard" "$dom" || return
    if ! grep -q '<title>Optuna Dashboard</title>' "$dom"; then
        fail "$base/dashboard is not optuna-dashboard (is \`study dashboard\` running on that port?)"
        return
    fi
    # Each study is a card: <a href="/dashboard/studies/ID"> ... <h5 ...>ID. NAME</h5>
    ids="$(grep -oE 'href="/dashboard/studies/[0-9]+"><div[^>]*><h5[^>]*>[0-9]+\. [^<]*</h5>' "$dom" || true)"
    while IFS= read -r card; do
        [[ -z "$card" ]] && continue
        local title="${card##*\">}"
        title="${title%</h5>}"
        if [[ "${title#*. }" == "$name" ]]; then
            id="${title%%. *}"
        fi
    done <<<"$ids"
    if [[ -z "$id" ]]; then
        fail "$base/dashboard does not list study '$name' (the React app did not render, or another storage?)"
        return
    fi
    echo "dashboard $base: lists study '$name' as id $id"
    page="$work/study.html"
    dump "$base/dashboard/studies/$id" "$page" || return
    grep -qF "$name (id=$id)" "$page" || fail "$base/dashboard/studies/$id: no '$name (id=$id)' heading"
    plots="$(count 'class="([^"]* )?js-plotly-plot( [^"]*)?"' "$page")"
    svgs="$(count 'class="main-svg"' "$page")"
    echo "dashboard study page: $plots plotly charts, $svgs svg layers"
    ((plots >= 1 && svgs >= 1)) || fail "$base/dashboard/studies/$id drew no plotly chart"
}

[[ -n "$report" ]] && check_report "$report"
[[ -n "$dashboard" ]] && check_dashboard "$dashboard" "$study"

if ((failures > 0)); then
    echo "check_browser: $failures check(s) failed" >&2
    exit 1
fi
echo "check_browser: OK"
