#!/usr/bin/env bash
# The first night on both backends, alternating, on copies of the same
# imported register: the PostgreSQL target's ratio ("the first night within
# 2x SQLite's") without the imports around it.
#
#   benches/first_night.sh [PERMITS] POSTGRES_URL
#   ROUNDS=6 benches/first_night.sh 1000000 postgres://postgres@127.0.0.1/autosign_bench
#
# Once per data set and build, the four feeds are imported into a SQLite
# file and into the PostgreSQL database named by the URL with `_tmpl`
# appended (dropped and made afresh; VACUUM ANALYZE and CHECKPOINT after).
# Each round then runs the first night on a fresh copy of each: the SQLite
# file copied, written back (`sync`) and read once, so the page cache is
# warm and the copy's write-back is not charged to the run; the PostgreSQL
# database made with `CREATE DATABASE … TEMPLATE` and a CHECKPOINT, so the
# copy's writes are not charged to it either. Prints each run's wall time,
# the client's user and system CPU, and the whole machine's busy CPU
# (/proc/stat, which on PostgreSQL includes the server's), then the sums
# and their ratio.
#
# The server's settings are whatever it runs with (printed); the figures in
# docs/benchmarks-postgres.md name theirs. BIN= and REV= time another
# build; KEEP=1 reuses the imported copies of an earlier call (same data,
# same build). Run on demand, never in CI.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-1000000}
PG=${2:?a postgres:// URL for the database to make (its name with _tmpl is made too)}
case "$PG" in postgres://*|postgresql://*) ;; *) echo "not a postgres:// URL: $PG" >&2; exit 2 ;; esac
SEED=${SEED:-1}
AS_OF=${AS_OF:-2026-11-27}
ROUNDS=${ROUNDS:-3}
DIR=${BENCH_DIR:-target/bench}
DATA="$DIR/data-$N-$SEED-shuffled"
WORK=${WORK:-"$DIR/first-night-$N"}
if [ -z "${BIN:-}" ]; then
  cargo build --release --quiet
  BIN=target/release/autosign
  REV=$(git rev-parse --short HEAD)
fi
REV=${REV:-$BIN}
if [ ! -f "$DATA/.done" ]; then
  rm -rf "$DATA"
  target/release/autosign-generate --permits "$N" --seed "$SEED" --as-of "$AS_OF" --out "$DATA" >/dev/null
  touch "$DATA/.done"
fi
db=${PG##*/}; db=${db%%\?*}
base=${PG%/*}
admin="$base/postgres"
tmpl="${db}_tmpl"
export AUTOSIGN_LOG__LEVEL=warn

import_all() {
  local feed
  for feed in permits residence social_insurance civil_status; do
    "$BIN" import "${feed//_/-}" "$DATA/$feed/$feed.csv" >/dev/null
  done
}

if [ -z "${KEEP:-}" ]; then
  rm -rf "$WORK"; mkdir -p "$WORK/sqlite-tmpl"
  echo "importing $N permits and their feeds into SQLite and PostgreSQL ($tmpl)"
  AUTOSIGN_DATA_DIR="$WORK/sqlite-tmpl" import_all
  psql -q "$admin" -c "DROP DATABASE IF EXISTS $tmpl WITH (FORCE)" -c "CREATE DATABASE $tmpl"
  AUTOSIGN_DATA_DIR="$WORK" AUTOSIGN_DATABASE_URL="$base/$tmpl" import_all
  psql -q "$base/$tmpl" -c "VACUUM ANALYZE" -c "CHECKPOINT"
fi
echo "first night, $N permits (seed $SEED, as_of $AS_OF), $(nproc) cores, commit $REV"
echo "PostgreSQL $(psql -Atc 'SHOW server_version' "$admin"):" \
  "$(psql -Atc "SELECT string_agg(name || '=' || current_setting(name), ' ' ORDER BY name)
                FROM pg_settings WHERE name IN ('shared_buffers', 'max_wal_size', 'wal_buffers',
                'synchronous_commit', 'work_mem')" "$admin")"

# The machine's busy CPU time in centiseconds (user, nice, system, irq, softirq).
busy() { awk '/^cpu /{print $2 + $3 + $4 + $7 + $8}' /proc/stat; }

# timed BACKEND COMMAND…: one run, its line, and its wall time added to
# $sum_<backend> and kept in $last_<backend>.
sum_sqlite=0; sum_pg=0; last_sqlite=0; last_pg=0
ratios=()
timed() {
  local backend=$1; shift
  local t0 t1 c0 c1 user sys secs
  c0=$(busy); t0=$(date +%s.%N)
  /usr/bin/time -f "%U %S" -o "$WORK/.time" "$@" run --as-of "$AS_OF" >"$WORK/.out" 2>"$WORK/.err" \
    || { cat "$WORK/.err"; exit 1; }
  t1=$(date +%s.%N); c1=$(busy)
  read -r user sys < <(tail -1 "$WORK/.time")
  secs=$(echo "$t1 - $t0" | bc)
  printf "  %-10s %6.2f s  (client user %5.2f s, system %5.2f s; machine busy %5.2f s)\n" \
    "$backend" "$secs" "$user" "$sys" "$(echo "($c1 - $c0) / 100" | bc -l)"
  if [ "$backend" = sqlite ]; then sum_sqlite=$(echo "$sum_sqlite + $secs" | bc); last_sqlite=$secs
  else sum_pg=$(echo "$sum_pg + $secs" | bc); last_pg=$secs; fi
}

for round in $(seq "$ROUNDS"); do
  echo "round $round"
  rm -rf "$WORK/sqlite"; mkdir "$WORK/sqlite"
  cp "$WORK/sqlite-tmpl/autosign.sqlite" "$WORK/sqlite/"
  sync
  cat "$WORK/sqlite/autosign.sqlite" >/dev/null
  AUTOSIGN_DATA_DIR="$WORK/sqlite" timed sqlite "$BIN"
  psql -q "$admin" -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" \
    -c "CREATE DATABASE $db TEMPLATE $tmpl" -c "CHECKPOINT"
  AUTOSIGN_DATA_DIR="$WORK" AUTOSIGN_DATABASE_URL="$PG" timed postgresql "$BIN"
  ratios+=("$(echo "$last_pg / $last_sqlite" | bc -l)")
done
printf "%d rounds: SQLite %.2f s, PostgreSQL %.2f s, %.2fx\n" "$ROUNDS" "$sum_sqlite" "$sum_pg" \
  "$(echo "$sum_pg / $sum_sqlite" | bc -l)"
# A round's ratio moves with the machine by more than most changes measured
# here: its spread says how far the sums above can be trusted.
printf "%s\n" "${ratios[@]}" | sort -g | awk '{r[NR] = $1}
  END {m = NR % 2 ? r[(NR + 1) / 2] : (r[NR / 2] + r[NR / 2 + 1]) / 2
       printf "a round'"'"'s ratio: least %.2fx, median %.2fx, greatest %.2fx\n", r[1], m, r[NR]}'
