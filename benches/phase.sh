# Shared by the bench scripts: `phase NAME COMMAND…` runs one command as a
# timed phase, prints its wall time, user and system CPU and peak memory,
# adds the wall time to $total, and keeps its output in $OUT_DIR/.out.
total=0
phase() {
  local name=$1; shift
  local t0 t1 rss user sys
  t0=$(date +%s.%N)
  /usr/bin/time -f "%M %U %S" -o "$OUT_DIR/.rss" "$@" >"$OUT_DIR/.out" 2>"$OUT_DIR/.err" || { cat "$OUT_DIR/.err"; exit 1; }
  t1=$(date +%s.%N)
  read -r rss user sys < <(tail -1 "$OUT_DIR/.rss")
  local secs; secs=$(echo "$t1 - $t0" | bc)
  total=$(echo "$total + $secs" | bc)
  printf "%-22s %8.2f s  (user %6.2f s, system %6.2f s)  %7.0f MB peak\n" \
    "$name" "$secs" "$user" "$sys" "$(echo "$rss / 1024" | bc)"
}
