#!/usr/bin/env bash
# Whole-pipeline benchmark at city scale: generate a data set with the
# project's own generator, then time each phase of a fresh nightly cycle —
# load the permit register, import the three feeds, run, export audit — and
# report wall time, user and system CPU and peak memory (max RSS) per phase.
#
#   benches/pipeline.sh [PERMITS] [DATABASE_URL]
#   benches/pipeline.sh 1000000                       # SQLite, the default
#   benches/pipeline.sh 1000000 postgres://postgres@127.0.0.1/autosign_bench
#   LAYOUT=sorted benches/pipeline.sh 1000000         # the generator's sorted layout
#
# The data is laid out as real exports arrive (LAYOUT=shuffled, the default:
# permit numbers in no order, every feed's rows shuffled); LAYOUT=sorted is
# `autosign-generate --sorted`, sequential numbers in order, for comparison only.
#
# With a postgres:// URL the database is dropped and created afresh first
# (psql, through the server's `postgres` database), the server's settings
# that matter for bulk work are printed. After the first night's total, a
# second night (the next as_of, no new files) is timed on its own.
#
# Run on demand, never in CI. Data sets are cached under $BENCH_DIR
# (default target/bench) by size and seed.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-1000000}
SEED=${SEED:-1}
AS_OF=${AS_OF:-2026-11-27}
LAYOUT=${LAYOUT:-shuffled}
case "$LAYOUT" in
  shuffled) GEN_FLAGS=() ;;
  sorted) GEN_FLAGS=(--sorted) ;;
  *) echo "LAYOUT must be shuffled or sorted, not $LAYOUT" >&2; exit 2 ;;
esac
DIR=${BENCH_DIR:-target/bench}
DATA="$DIR/data-$N-$SEED-$LAYOUT"
WORK=${WORK:-"$DIR/work-$N-$LAYOUT"}   # the database; WORK=... keeps two builds apart

# BIN=path/to/autosign times another build (e.g. an earlier commit's, to
# compare on the same data in the same hour); it is named by REV.
if [ -z "${BIN:-}" ]; then
  cargo build --release --quiet
  BIN=target/release/autosign
  REV=$(git rev-parse --short HEAD)
fi
REV=${REV:-$BIN}
GEN=target/release/autosign-generate
if [ ! -f "$DATA/.done" ]; then
  rm -rf "$DATA"
  "$GEN" --permits "$N" --seed "$SEED" --as-of "$AS_OF" --out "$DATA" "${GEN_FLAGS[@]}" >/dev/null
  touch "$DATA/.done"
fi
rm -rf "$WORK"; mkdir -p "$WORK"
export AUTOSIGN_DATA_DIR="$WORK"
export AUTOSIGN_LOG__LEVEL=warn
if [ -n "${2:-}" ]; then export AUTOSIGN_DATABASE_URL="$2"; fi
PG=""
case "${2:-}" in
  postgres://*|postgresql://*)
    PG="$2"
    db=${PG##*/}; db=${db%%\?*}
    admin="${PG%/*}/postgres"
    psql -q "$admin" -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" -c "CREATE DATABASE $db"
    echo "PostgreSQL $(psql -Atc 'SHOW server_version' "$PG"):" \
      "$(psql -Atc "SELECT string_agg(name || '=' || current_setting(name), ' ' ORDER BY name)
                    FROM pg_settings WHERE name IN ('shared_buffers', 'max_wal_size', 'synchronous_commit',
                    'work_mem', 'maintenance_work_mem', 'fsync')" "$PG")"
    ;;
esac

OUT_DIR="$WORK"
# shellcheck source=benches/phase.sh
. benches/phase.sh
echo "autosign pipeline, $N permits (seed $SEED, as_of $AS_OF, $LAYOUT layout), $(nproc) cores, commit $REV"
for f in permits residence social_insurance civil_status; do
  rows=$(($(wc -l < "$DATA/$f/$f.csv") - 1))
  echo "  $f.csv: $rows rows, $(du -m "$DATA/$f/$f.csv" | cut -f1) MB"
done
phase "import permits" "$BIN" import permits "$DATA/permits/permits.csv"
phase "import residence" "$BIN" import residence "$DATA/residence/residence.csv"
phase "import social-insur." "$BIN" import social-insurance "$DATA/social_insurance/social_insurance.csv"
phase "import civil-status" "$BIN" import civil-status "$DATA/civil_status/civil_status.csv"
phase "run" "$BIN" run --as-of "$AS_OF"
grep -E "AUTO_SIGNED|VISIT_CENTER|SUSPENDED|CANCELLED|PENDING" "$OUT_DIR/.out" | head -5 | sed 's/^/   /'
phase "export audit" "$BIN" export audit --from "$AS_OF" --to "$AS_OF" --out "$WORK/audit.csv"
printf "%-22s %8.2f s\n" "total" "$total"
# The next night: no new files, the window moves a day.
NEXT=$(date -d "$AS_OF + 1 day" +%F)
phase "run, next night" "$BIN" run --as-of "$NEXT"
grep -E "AUTO_SIGNED|VISIT_CENTER|PENDING" "$WORK/.out" | head -3 | sed 's/^/   /'
if [ -n "$PG" ]; then
  psql -Atc "SELECT 'database size: ' || pg_size_pretty(pg_database_size(current_database()))" "$PG"
fi
