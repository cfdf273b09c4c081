#!/usr/bin/env bash
# One night's run, alone, for two or more builds on copies of the same
# database, alternating: what changed in the run without the imports
# around it, and where its time goes (the run's own debug log: the walk,
# the evidence, the plan, the writes).
#
#   benches/run_ab.sh TEMPLATE_DIR AS_OF BIN [BIN ...]
#   ROUNDS=3 benches/run_ab.sh target/bench/before-night 2026-11-29 \
#       /tmp/old/autosign target/release/autosign
#
# TEMPLATE_DIR holds an autosign.sqlite as the night finds it (e.g. a
# benches/pipeline.sh database after its first night and a delta's
# imports). Each run works on a fresh copy, written back (`sync`) and read
# once before it is timed, so the page cache is warm and the copy's
# write-back is not charged to the run. Prints wall time, user and system
# CPU, peak memory, and the run's log lines with their offsets.
#
# Run on demand, never in CI.
set -euo pipefail
[ $# -ge 3 ] || { sed -n '2,16p' "$0" >&2; exit 2; }
TEMPLATE=$1
AS_OF=$2
shift 2
[ -f "$TEMPLATE/autosign.sqlite" ] || { echo "no $TEMPLATE/autosign.sqlite" >&2; exit 2; }
ROUNDS=${ROUNDS:-2}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/autosign-run-ab.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
for round in $(seq "$ROUNDS"); do
  for bin in "$@"; do
    rm -rf "$WORK/db"; mkdir "$WORK/db"
    cp "$TEMPLATE/autosign.sqlite" "$WORK/db/"
    sync
    cat "$WORK/db/autosign.sqlite" > /dev/null
    echo "== round $round: $bin"
    AUTOSIGN_DATA_DIR="$WORK/db" AUTOSIGN_LOG__LEVEL=info,autosign=debug \
      /usr/bin/time -f "run %e s (user %U s, system %S s) %M KB peak" -o "$WORK/time" \
      "$bin" run --as-of "$AS_OF" --allow-future 2> "$WORK/log" > /dev/null || true
    python3 - "$WORK/log" <<'EOF'
import datetime, json, sys
t0 = None
for line in open(sys.argv[1], encoding="utf-8"):
    try:
        j = json.loads(line)
    except ValueError:
        print(line.rstrip())
        continue
    t = datetime.datetime.fromisoformat(j["timestamp"].replace("Z", "+00:00"))
    t0 = t0 or t
    fields = j.get("fields", {})
    message = fields.pop("message", "")
    extra = " ".join(f"{k}={v}" for k, v in fields.items())
    print(f"  {(t - t0).total_seconds():7.3f} s  {message} {extra}".rstrip())
EOF
    cat "$WORK/time"
  done
done
