#!/usr/bin/env bash
# The steady state: one ordinary night on a register that is already loaded
# and decided. Run after benches/pipeline.sh for the same PERMITS and LAYOUT
# (it reuses that run's database and data set), e.g.
#
#   BENCH_DIR=/tmp/perf benches/pipeline.sh 10000000
#   BENCH_DIR=/tmp/perf benches/steady_night.sh 10000000
#
# The night's delta, written next to the data set (deterministic):
#   - DELTA_PERMITS rows of the register (default 30,000, in random order):
#     two thirds existing permits endorsed at a center (valid_until one
#     year later, a new phone number), one third new permits (from
#     `autosign-generate` with another seed);
#   - a day of residence visits (DELTA_VISITS, default 1/300 of the
#     register), dated the night's as_of;
#   - no social-insurance or civil-status file.
# Then it times the two imports and the run for the next date, which must
# cost in proportion to the delta and the due permits, not the register.
# It works on a copy of the pipeline's database, so it can be repeated.
# Both files are deltas by the feeds' default delivery (config/autosign.toml,
# [feeds.*] delivery), so the safety brake's row-drop check does not
# compare them with the initial full load.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-10000000}
SEED=${SEED:-1}
AS_OF=${AS_OF:-2026-11-27}
LAYOUT=${LAYOUT:-shuffled}
DIR=${BENCH_DIR:-target/bench}
DATA="$DIR/data-$N-$SEED-$LAYOUT"
WORK=${WORK:-"$DIR/work-$N-$LAYOUT"}   # the database; WORK=... keeps two builds apart
NIGHT=$(date -d "$AS_OF + 2 days" +%F)
DELTA_PERMITS=${DELTA_PERMITS:-30000}
DELTA_VISITS=${DELTA_VISITS:-$((N / 300))}
# BIN=path/to/autosign times another build, named by REV (as pipeline.sh).
[ -n "${BIN:-}" ] || REV=$(git rev-parse --short HEAD)
BIN=${BIN:-target/release/autosign}
REV=${REV:-$BIN}
GEN=target/release/autosign-generate
[ -f "$WORK/autosign.sqlite" ] || { echo "run benches/pipeline.sh $N first (LAYOUT=$LAYOUT)" >&2; exit 2; }
DELTA="$DIR/delta-$N-$SEED-$LAYOUT"
if [ ! -f "$DELTA/.done" ]; then
  rm -rf "$DELTA"; mkdir -p "$DELTA"
  "$GEN" --permits $((DELTA_PERMITS / 3)) --seed 99 --as-of "$NIGHT" --out "$DELTA/new" >/dev/null
  python3 - "$DATA" "$DELTA" "$DELTA_PERMITS" "$DELTA_VISITS" "$NIGHT" <<'EOF'
import csv, datetime, random, sys
data, delta, n_permits, n_visits, night = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
rng = random.Random(7)

def sample(path, k):
    """k rows of a CSV file, chosen uniformly in one pass (reservoir)."""
    with open(path, newline="", encoding="utf-8") as f:
        r = csv.reader(f)
        header = next(r)
        chosen = []
        for i, row in enumerate(r):
            if i < k:
                chosen.append(row)
            else:
                j = rng.randrange(i + 1)
                if j < k:
                    chosen[j] = row
    return header, chosen

def date(s):
    for fmt in ("%Y-%m-%d", "%Y/%m/%d", "%Y%m%d"):
        try:
            return datetime.datetime.strptime(s, fmt).date()
        except ValueError:
            pass
    raise ValueError(s)

header, endorsed = sample(f"{data}/permits/permits.csv", n_permits - n_permits // 3)
vu, phone = header.index("valid_until"), header.index("phone")
for row in endorsed:
    d = date(row[vu])
    row[vu] = (d.replace(year=d.year + 1) if not (d.month == 2 and d.day == 29)
               else d.replace(year=d.year + 1, day=28)).isoformat()
    row[phone] = "139" + "".join(rng.choice("0123456789") for _ in range(8))
with open(f"{delta}/new/permits/permits.csv", newline="", encoding="utf-8") as f:
    r = csv.reader(f)
    next(r)
    rows = endorsed + list(r)
rng.shuffle(rows)
with open(f"{delta}/permits.csv", "w", newline="", encoding="utf-8") as f:
    w = csv.writer(f, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
header, visits = sample(f"{data}/residence/residence.csv", n_visits)
on = header.index("visited_on")
for row in visits:
    row[on] = night
with open(f"{delta}/residence.csv", "w", newline="", encoding="utf-8") as f:
    w = csv.writer(f, lineterminator="\n")
    w.writerow(header)
    w.writerows(visits)
EOF
  touch "$DELTA/.done"
fi
STEADY="$WORK-steady"
rm -rf "$STEADY"; mkdir -p "$STEADY"
cp "$WORK/autosign.sqlite" "$STEADY/"
# The copy's gigabytes are written back before the night is timed, not
# during it (they showed as the night's system time, and varied).
sync
export AUTOSIGN_DATA_DIR="$STEADY"
export AUTOSIGN_LOG__LEVEL=warn
# The pipeline's first night was AS_OF and it timed AS_OF + 1; this night
# is the one after (a completed date would be a no-op).
"$BIN" run --as-of "$(date -d "$AS_OF + 1 day" +%F)" --allow-future >/dev/null
OUT_DIR="$STEADY"
# shellcheck source=benches/phase.sh
. benches/phase.sh
echo "autosign steady night $NIGHT on $N permits ($LAYOUT), commit $REV:" \
  "$(($(wc -l < "$DELTA/permits.csv") - 1)) permit rows, $(($(wc -l < "$DELTA/residence.csv") - 1)) visits"
phase "import permits" "$BIN" import permits "$DELTA/permits.csv"
phase "import residence" "$BIN" import residence "$DELTA/residence.csv"
phase "run" "$BIN" run --as-of "$NIGHT" --allow-future
grep -E "AUTO_SIGNED|VISIT_CENTER|SUSPENDED|CANCELLED|PENDING" "$OUT_DIR/.out" | head -5 | sed 's/^/   /'
printf "%-22s %8.2f s\n" "night total" "$total"
