#!/usr/bin/env bash
# The first hour with weir, as README.md tells it, from an empty directory: the catalog
# from `weir catalog init`, `weir up --catalog`, the curl examples, the console, the
# DuckDB query while weir runs, a write key added as the README says and the proxy
# example with it, codegen and one send from the generated Python package,
# `weir loader hours` and a replay.
#
# Every command and code block run here is read from README.md itself (`block`, `said`):
# when the README changes, this fails until it follows. `weir` in the README is
# `cargo run --release --`; here it is the binary under test, $WEIR.
#
# Run by the `newcomer` test (tests/it/newcomer.rs) with WEIR and README set. It uses
# the README's own addresses (127.0.0.1:8080, 8081, 8088, 8815, 8816), so they must be
# free.
set -euo pipefail

: "${WEIR:?set WEIR to the weir binary}"
: "${README:?set README to README.md}"
WORK=${WORK:-$(mktemp -d)}
cd "$WORK"

fail() {
    echo "newcomer: $*" >&2
    for f in up*.log; do [ -f "$f" ] && { echo "--- $f" >&2; tail -n 40 "$f" >&2; }; done
    exit 1
}
weir() { "$WEIR" "$@"; }

# said LINE: LINE is a line of the README, exactly (a command a newcomer copies).
said() { grep -qxF -- "$1" "$README" || fail "README.md no longer has the line: $1"; }
# run LINE: a line of the README, run as it is written.
run() {
    said "$1"
    echo "+ $1" >&2
    eval "$1"
}
# block FIRST: the fenced block of the README whose first line is FIRST, without fences.
block() {
    python3 - "$README" "$1" <<'EOF'
import sys
lines = open(sys.argv[1]).read().split("\n")
first = sys.argv[2]
for i, line in enumerate(lines):
    if line == first and i > 0 and lines[i - 1].startswith("```"):
        out = []
        for l in lines[i:]:
            if l.startswith("```"):
                break
            out.append(l)
        print("\n".join(out))
        sys.exit(0)
sys.exit(f"README.md has no code block starting with: {first}")
EOF
}

for port in 8080 8081 8088 8815 8816; do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
        fail "127.0.0.1:$port is taken; the README's addresses must be free for this walk-through"
    fi
done

# up LOG COMMAND: starts `weir up` as the README writes it, in the background, and waits
# until the collector and the router (the console's port) answer.
UP=
up() {
    local log=$1
    shift
    said "$*"
    echo "+ $* &" >&2
    local cmd="$*"
    local args=${cmd#weir }
    # shellcheck disable=SC2086 # the README's arguments, split as a shell splits them
    "$WEIR" $args >"$log" 2>&1 &
    UP=$!
    for _ in $(seq 1 150); do
        curl -sf http://127.0.0.1:8080/healthz >/dev/null && curl -sf http://127.0.0.1:8081/healthz >/dev/null &&
            grep -q "console" "$log" && return 0
        kill -0 "$UP" 2>/dev/null || fail "weir up exited early"
        sleep 0.2
    done
    fail "weir up did not answer on 127.0.0.1:8080 and 8081 within 30 s"
}
# stop: what Ctrl-C does. A background job of a script ignores SIGINT, so this sends
# SIGTERM, which weir handles the same way.
stop() {
    kill -TERM "$UP"
    wait "$UP" || fail "weir up did not stop cleanly on Ctrl-C (exit $?)"
    UP=
}
finish() {
    local rc=$?
    if [ -n "$UP" ]; then kill -9 "$UP" 2>/dev/null || true; fi
    exit "$rc"
}
trap finish EXIT

# buffered N: waits until the hourly buffer holds at least N events.
buffered() {
    for _ in $(seq 1 100); do
        local n
        n=$(weir loader hours --catalog catalog/ --json |
            python3 -c 'import json,sys; print(sum(h["buffered_events"] or 0 for h in json.load(sys.stdin)))')
        [ "$n" -ge "$1" ] && return 0
        sleep 0.1
    done
    fail "the buffer holds $n events, not $1, 10 s after they were accepted"
}

# --- a catalog of one's own, and weir on it
run "weir catalog init catalog/"
[ -f catalog/events.toml ] || fail "catalog init wrote no catalog/events.toml"
run "weir catalog check catalog/" >/dev/null
up up1.log weir up --catalog catalog/
grep -q "none configured: the demo key comes only with the demo catalog" up1.log ||
    fail "the banner does not say the demo key is gone with --catalog"

# --- the first curl: the answer is exactly the one the README shows
send=$(block "curl -s http://127.0.0.1:8080/v1/events -H 'content-type: application/json' -d '[")
want=$(printf '%s\n' "$send" | tail -n 1)
got=$(eval "$(printf '%s\n' "$send" | sed '$d')")
[ "$got" = "$want" ] || fail "the first curl answered
  $got
the README says
  $want"

# --- the unix sockets
sockets=$(block "curl -s --unix-socket weir-data/collector.sock http://weir/v1/events -d '{\"event\":\"search.performed\",\"env\":\"backend\",\"fields\":{\"query\":\"bike\"}}'")
got=$(eval "$sockets")
case $got in *'"accepted":1'*) ;; *) fail "the unix socket example answered $got" ;; esac

# --- the console is where the README says
# (Into a file: `grep -q` closing a pipe early makes curl fail with a broken pipe.)
curl -sf -o console.html http://127.0.0.1:8081/ && grep -q "<title>" console.html ||
    fail "no console page on http://127.0.0.1:8081/"

# --- the data without stopping weir: load now, list, query with DuckDB
buffered 4
load=$(block "weir loader run --now --catalog catalog/")
out=$(eval "$load")
echo "$out"
case $out in *"loaded"*) ;; *) fail "loader hours does not list a loaded hour: $out" ;; esac
sql=$(block "SELECT event, version, date, hour, id, item_id, source, received_at")
python3 - "$sql" <<'EOF' || fail "the README's DuckDB queries do not give what it says"
import sys, duckdb
stmts = [s for s in sys.argv[1].split(";") if "SELECT" in s]
valid = duckdb.sql(stmts[0]).fetchall()
assert len(valid) == 1 and valid[0][5] == 123 and valid[0][6] == "search", valid
flagged = duckdb.sql(stmts[1]).fetchall()
assert len(flagged) == 1 and "url: missing required field" in flagged[0][1], flagged
print("duckdb: item.viewed", valid[0][4], "and the flagged page.viewed")
EOF
stop

# --- a write key, added as the README says, and the proxy example with it
block "# weir.toml" >weir.toml
up up2.log weir up --catalog catalog/ --config weir.toml
grep -q "1 key for env web" up2.log || fail "the banner does not mention the proxy's key"
got=$(run "curl -s 'http://127.0.0.1:8088/v1/events?key=my-web-key' -d '{\"event\":\"page.viewed\",\"fields\":{\"url\":\"https://example.com/\",\"session_id\":\"s1\"}}'")
case $got in *'"accepted":1'*'"flagged":0'*) ;; *) fail "the proxy example answered $got" ;; esac

# --- a generated client, made importable as the README says, sends one event
block "import weir_events_web as w" >app.py
codegen=$(block "weir codegen --lang python --env web --catalog catalog/ --out langpack/")
said "PYTHONPATH=langpack python3 app.py"
out=$(eval "$codegen")
echo "$out"
case $out in *"sent 1 dropped 0"*) ;; *) fail "the generated Python package did not send: $out" ;; esac

# --- what is buffered, and a replay of this hour and the one before (empty: skipped)
buffered 6
hour=$(date -u +%Y-%m-%dT%H)
before=$(date -u -d '-1 hour' +%Y-%m-%dT%H)
grep -qF "weir loader replay --from " "$README" || fail "README.md no longer shows weir loader replay"
out=$(weir loader replay --from "$before" --to "$hour" --catalog catalog/)
echo "$out"
case $out in *"$hour: "*" rows"*) ;; *) fail "the replay did not rebuild $hour: $out" ;; esac
case $out in *"$before: "*) ;; *) fail "the replay said nothing of $before: $out" ;; esac
stop

# --- after Ctrl-C every hour is loaded: both item.viewed events, the README's and app.py's
python3 - <<'EOF' || fail "the warehouse after stopping is not what was sent"
import duckdb
rows = duckdb.sql("SELECT item_id FROM read_parquet('weir-data/warehouse/event=item.viewed/version=2/*/*/*.parquet', hive_partitioning = true) ORDER BY item_id").fetchall()
assert rows == [(7,), (123,)], rows
pages = duckdb.sql("SELECT count(*) FROM read_parquet('weir-data/warehouse/event=page.viewed/version=1/*/*/*.parquet', hive_partitioning = true)").fetchall()
assert pages == [(1,)], pages
print("duckdb after stop: item.viewed", rows, "page.viewed", pages)
EOF
weir loader hours --catalog catalog/
weir loader hours --catalog catalog/ --json |
    python3 -c 'import json,sys; left = [h for h in json.load(sys.stdin) if h["state"] != "loaded"]; sys.exit(f"unloaded after stop: {left}" if left else 0)' ||
    fail "an hour is left unloaded after stop"
echo "newcomer: the README works from an empty directory"
