#!/bin/bash
# The ivshmfs benchmark (issue 5): one command runs every part, prints a table
# of throughput and the ratios against the targets (PASS/MISS), and writes a
# PNG chart and a markdown results file.
#
#   scripts/bench/run.sh [--quick|--full] [--out DIR] BUILD_DIR
#
# --quick (for CI): small counts, sizes up to 1 MiB, a couple of minutes; it
#   only checks that everything runs. Its ratios are indicative only.
# --full (default): repeated runs, medians, all sizes up to 16 MiB.
# The mount parts need root, /dev/fuse and BUILD_DIR/fs/ivshmfs; without them
# those rows say "skipped". The library and mount throughput run on a shared-mode
# region (one file) and, in the same run, on a split region (one file per
# partition, peers' pieces read-only): the table "Split mode vs shared mode"
# gives split/shared. The exit status is non-zero only when a benchmark
# program fails, never because of a figure or a ratio.
set -u -o pipefail

mode=full
out=""
build=""
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) mode=quick ;;
    --full) mode=full ;;
    --out) out="$2"; shift ;;
    --out=*) out="${1#--out=}" ;;
    -h|--help) sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    -*) echo "run.sh: unknown option $1" >&2; exit 2 ;;
    *) build="$1" ;;
  esac
  shift
done
if [ -z "$build" ]; then
  echo "usage: scripts/bench/run.sh [--quick|--full] [--out DIR] BUILD_DIR" >&2
  exit 2
fi
build=$(cd "$build" && pwd) || exit 2
src=$(cd "$(dirname "$0")/../.." && pwd)
bench_lib="$build/bench/bench_lib"
tool="$build/bench/bench_tool"
ivshmfs="$build/fs/ivshmfs"
for p in "$bench_lib" "$tool"; do
  [ -x "$p" ] || { echo "run.sh: $p is missing: build the project with IVSHMFS_BENCHMARKS=ON" >&2; exit 2; }
done
[ -n "$out" ] || out="$build/bench/results-$mode"
mkdir -p "$out"
out=$(cd "$out" && pwd)
raw="$out/raw.csv"
: >"$raw"
failed=0

KiB=1024
MiB=$((1024 * 1024))
if [ "$mode" = quick ]; then
  sizes="64 4096 65536 1048576"
  gb_args=(--benchmark_min_time=0.01)
  stream_total=$((16 * MiB)); stream_small_total=$((512 * KiB)); stream_reps=1
  latency_count=2000
  file_max_bytes=$((16 * MiB)); file_max_secs=0.3; file_reps=1
  follow_count=200; follow_interval_us=500
  idle_secs=1
  partition_size=$((512 * MiB))
  split_piece=$((512 * MiB))
  fio_size=$((64 * MiB))
else
  sizes="64 4096 65536 1048576 16777216"
  gb_args=(--benchmark_min_time=0.2 --benchmark_repetitions=9 --benchmark_enable_random_interleaving=true
    --benchmark_report_aggregates_only=true)
  stream_total=$((64 * MiB)); stream_small_total=$((8 * MiB)); stream_reps=9
  latency_count=50000
  file_max_bytes=$((128 * MiB)); file_max_secs=1; file_reps=5
  follow_count=3000; follow_interval_us=500
  idle_secs=5
  partition_size=$((2560 * MiB))
  split_piece=$((1024 * MiB))  # a power of two (a PCI BAR); each repetition starts empty
  fio_size=$((256 * MiB))
fi
max_size=${sizes##* }

log() { printf '%s\n' "$*" >&2; }
run() {  # run a benchmark program; its CSV lines go to raw.csv
  local line
  if ! line=$("$@"); then
    log "FAILED: $*"
    failed=1
    return 1
  fi
  printf '%s\n' "$line" >>"$raw"
  printf '%s\n' "$line"
}

log "== ivshmfs benchmark ($mode) on $(nproc) cores, $(uname -r); results in $out"

# ---- 1. in-process: memcpy ceiling, library append and read -------------------
log "-- library vs memcpy (Google Benchmark)"
if "$bench_lib" --max-size="$max_size" "${gb_args[@]}" --benchmark_format=csv >"$out/bench_lib.csv" 2>"$out/bench_lib.log"; then
  # name,iterations,real_time,cpu_time,time_unit,bytes_per_second,...
  awk -F, -v reps="${#gb_args[@]}" '
    /^"/ {
      name = $1; gsub(/"/, "", name)
      if (reps > 1 && name !~ /_median$/) next
      sub(/_median$/, "", name)
      split(name, part, "/")
      if ($6 != "") printf "%s,%s,%.0f\n", part[1], part[2], $6
    }' "$out/bench_lib.csv" | tee -a "$raw"
else
  log "FAILED: bench_lib (see $out/bench_lib.log)"
  failed=1
fi

# ---- 2. two processes: library stream vs Unix socket vs TCP loopback ----------
log "-- two-process streams"
for s in $sizes; do
  total=$stream_total
  [ "$s" -lt 4096 ] && total=$stream_small_total
  [ "$s" -gt "$total" ] && total=$s
  for kind in lib unix tcp; do
    run "$tool" stream "$kind" "$s" "$total" "$stream_reps" >/dev/null
  done
done
grep '^stream_' "$raw" >&2

# ---- 3. latency ----------------------------------------------------------------
log "-- commit-to-seen latency"
run "$tool" latency lib "$latency_count" >&2
run "$tool" latency unix "$latency_count" >&2

# ---- 4. through the mount --------------------------------------------------------
mount_skip=""
if [ "$(id -u)" != 0 ]; then
  mount_skip="skipped: needs root"
elif [ ! -c /dev/fuse ]; then
  mount_skip="skipped: no /dev/fuse"
elif [ ! -x "$ivshmfs" ]; then
  mount_skip="skipped: ivshmfs not built"
elif ! command -v fusermount3 >/dev/null; then
  mount_skip="skipped: fusermount3 missing (Debian package fuse3)"
fi

# libfuse's passthrough_ll example, built at benchmark time (never committed).
passthrough="$build/bench/passthrough_ll"
pt_skip=""
if [ -z "$mount_skip" ]; then
  examples=/usr/share/doc/libfuse3-dev/examples
  if [ ! -x "$passthrough" ] || [ "$examples/passthrough_ll.c" -nt "$passthrough" ]; then
    if [ -f "$examples/passthrough_ll.c" ]; then
      # shellcheck disable=SC2046
      cc -O2 -w -I"$examples" -o "$passthrough" "$examples/passthrough_ll.c" $(pkg-config --cflags --libs fuse3) \
        2>"$out/passthrough_ll.build.log" || pt_skip="skipped: passthrough_ll does not build"
    else
      pt_skip="skipped: $examples/passthrough_ll.c missing (Debian package libfuse3-dev)"
    fi
  fi
fi

work=""
mnt=""
pids=()
mounts=()
# Regions the benchmark programs make are /dev/shm/ivshmfs-bench-WHAT-PID;
# one that fails exits without removing its own. Newer than this marker and
# with a PID that no longer runs means ours, left behind.
started=$(mktemp /tmp/ivshmfs-bench-started.XXXXXX)
remove_program_leftovers() {
  local f pid
  [ -e "$started" ] || return 0
  for f in /dev/shm/ivshmfs-bench-*-*; do
    [ -f "$f" ] && [ "$f" -nt "$started" ] || continue
    pid=${f##*-}
    case $pid in '' | *[!0-9]*) continue ;; esac
    kill -0 "$pid" 2>/dev/null || rm -f "$f"
  done
}
cleanup() {
  local m p
  for m in "${mounts[@]}"; do fusermount3 -u "$m" 2>/dev/null || umount -l "$m" 2>/dev/null; done
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null; done
  pids=(); mounts=()
  [ -n "$work" ] && rm -rf "$work"
  work=""
  # Only empty directories: rmdir never reaches into a mount still there.
  [ -n "$mnt" ] && rmdir "$mnt"/* "$mnt" 2>/dev/null
  mnt=""
  remove_program_leftovers
}
trap 'cleanup; rm -f "$started"' EXIT
trap 'exit 130' INT TERM

wait_mounted() {  # MOUNTPOINT PID: up to 60 s (an owner faults its partition in at claim)
  local i
  for i in $(seq 1 600); do
    mountpoint -q "$1" && return 0
    kill -0 "$2" 2>/dev/null || return 1
    sleep 0.1
  done
  return 1
}

median() { sort -g | awk '{v[NR] = $1} END { if (NR == 0) print ""; else if (NR % 2) print v[(NR + 1) / 2]; else printf "%.0f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

# One file-I/O measurement: prints bytes/s and ops/s ("B OPS"), records the bytes moved.
fileio() {  # write|read PATH SIZE [create|OFFSET]
  local line
  if [ "$1" = write ]; then
    line=$("$tool" write "$2" "$3" "$file_max_bytes" "$file_max_secs" ${4:+"$4"}) || return 1
  else
    line=$("$tool" read "$2" "$3" "$file_max_bytes" "$file_max_secs" "$4") || return 1
  fi
  echo "$line" | awk -F, '{print $3, $4, $5}'
}

if [ -z "$mount_skip" ]; then
  log "-- through the mount: ivshmfs (default: reads through the page cache) vs tmpfs vs passthrough_ll (direct I/O)"
  work=$(mktemp -d /dev/shm/ivshmfs-bench.XXXXXX)
  mnt=$(mktemp -d /tmp/ivshmfs-bench-mnt.XXXXXX)
  mkdir -p "$work/tmpfs" "$work/pt-src" "$mnt/a" "$mnt/b" "$mnt/sa" "$mnt/sb" "$mnt/pt"
  region="$work/region"
  truncate -s $((4096 + 2 * partition_size)) "$region"
  "$build/tools/ivshmctl" format --partitions 2 "$region" >/dev/null 2>"$out/format.log" ||
    { log "FAILED: ivshmctl format"; failed=1; mount_skip="skipped: format failed"; }
  split_prefix="$work/split"
  "$build/tools/ivshmctl" format --split --size "$split_piece" --partitions 2 "$split_prefix" >/dev/null 2>>"$out/format.log" ||
    { log "FAILED: ivshmctl format --split"; failed=1; mount_skip="skipped: format --split failed"; }
fi
if [ -z "$mount_skip" ]; then
  # Two peers over one region: peer 0 mounted at a/, peer 1 at b/.
  "$ivshmfs" -f -o id=0,log=warn "$region" "$mnt/a" 2>"$out/ivshmfs-a.log" &
  pid_a=$!; pids+=("$pid_a"); mounts+=("$mnt/a")
  "$ivshmfs" -f -o id=1,log=warn "$region" "$mnt/b" 2>"$out/ivshmfs-b.log" &
  pid_b=$!; pids+=("$pid_b"); mounts+=("$mnt/b")
  mounted=0
  if wait_mounted "$mnt/a" "$pid_a" && wait_mounted "$mnt/b" "$pid_b"; then
    # The same two peers over the split region: sa/ and sb/ (started once the
    # first two are up: claims fault whole partitions in).
    "$ivshmfs" -f -o id=0,log=warn "$split_prefix" "$mnt/sa" 2>"$out/ivshmfs-split-a.log" &
    pid_sa=$!; pids+=("$pid_sa"); mounts+=("$mnt/sa")
    "$ivshmfs" -f -o id=1,log=warn "$split_prefix" "$mnt/sb" 2>"$out/ivshmfs-split-b.log" &
    pid_sb=$!; pids+=("$pid_sb"); mounts+=("$mnt/sb")
    wait_mounted "$mnt/sa" "$pid_sa" && wait_mounted "$mnt/sb" "$pid_sb" && mounted=1
  fi
  if [ "$mounted" = 0 ]; then
    log "FAILED: ivshmfs did not mount (see $out/ivshmfs-*.log)"
    failed=1
    mount_skip="skipped: ivshmfs did not mount"
  fi
fi
if [ -z "$mount_skip" ] && [ -z "$pt_skip" ]; then
  "$passthrough" -f -o source="$work/pt-src",cache=never "$mnt/pt" 2>"$out/passthrough_ll.log" &
  pid_pt=$!; pids+=("$pid_pt"); mounts+=("$mnt/pt")
  if ! wait_mounted "$mnt/pt" "$pid_pt"; then
    pt_skip="skipped: passthrough_ll did not mount"
  fi
fi

if [ -z "$mount_skip" ]; then
  # Idle CPU of a daemon: utime+stime over idle_secs with no data flowing.
  sleep 1
  clk=$(getconf CLK_TCK)
  t0=$(awk '{print $14 + $15}' "/proc/$pid_a/stat")
  sleep "$idle_secs"
  t1=$(awk '{print $14 + $15}' "/proc/$pid_a/stat")
  idle=$(awk -v a="$t0" -v b="$t1" -v c="$clk" -v s="$idle_secs" 'BEGIN { printf "%.3f", (b - a) / c / s * 100 }')
  echo "idle_cpu,0,$idle" | tee -a "$raw" >&2

  for s in $sizes; do
    for rep in $(seq 1 "$file_reps"); do
      # ivshmfs: peer 1 appends to its own file; peer 0 reads it (another peer's file, cold).
      # Each repetition starts from an empty partition (O_TRUNC resets it), so
      # fast runs never fill it: 5 sizes x 5 repetitions x 128 MiB > its 2.5 GiB.
      : >"$mnt/b/vm1"
      offset=$(stat -c %s "$mnt/b/vm1")
      if r=$(fileio write "$mnt/b/vm1" "$s"); then echo "$r" >>"$work/mnt_write.$s"; else failed=1; log "FAILED: ivshmfs write $s"; fi
      if r=$(fileio read "$mnt/a/vm1" "$s" "$offset"); then echo "$r" >>"$work/mnt_read.$s"; else failed=1; log "FAILED: ivshmfs read $s"; fi
      # The same on the split region.
      : >"$mnt/sb/vm1"
      if r=$(fileio write "$mnt/sb/vm1" "$s"); then echo "$r" >>"$work/mnt_write_split.$s"; else failed=1; log "FAILED: ivshmfs (split) write $s"; fi
      if r=$(fileio read "$mnt/sa/vm1" "$s" 0); then echo "$r" >>"$work/mnt_read_split.$s"; else failed=1; log "FAILED: ivshmfs (split) read $s"; fi
      # tmpfs
      if r=$(fileio write "$work/tmpfs/f" "$s" create); then echo "$r" >>"$work/tmpfs_write.$s"; else failed=1; fi
      if r=$(fileio read "$work/tmpfs/f" "$s" 0); then echo "$r" >>"$work/tmpfs_read.$s"; else failed=1; fi
      rm -f "$work/tmpfs/f"
      # passthrough_ll over tmpfs, cache=never (direct I/O)
      if [ -z "$pt_skip" ]; then
        if r=$(fileio write "$mnt/pt/f" "$s" create); then echo "$r" >>"$work/pt_write.$s"; else failed=1; log "FAILED: passthrough_ll write $s"; fi
        if r=$(fileio read "$mnt/pt/f" "$s" 0); then echo "$r" >>"$work/pt_read.$s"; else failed=1; log "FAILED: passthrough_ll read $s"; fi
        rm -f "$mnt/pt/f"
      fi
    done
    for what in mnt_write mnt_read mnt_write_split mnt_read_split tmpfs_write tmpfs_read pt_write pt_read; do
      f="$work/$what.$s"
      [ -s "$f" ] || continue
      bps=$(awk '{print $1}' "$f" | median)
      ops=$(awk '{print $2}' "$f" | median)
      echo "$what,$s,$bps,$ops" | tee -a "$raw" >&2
    done
  done

  # fio: sequential reads of another peer's file (through the page cache)
  # against passthrough_ll over tmpfs in its default mode (page cache) and
  # with cache=never (direct I/O), all in this run. --iomem=mmap: fio's
  # default malloc buffers understate tmpfs at 1 MiB.
  if ! command -v fio >/dev/null; then
    log "-- fio: skipped (Debian package fio)"
  elif [ -n "$pt_skip" ]; then
    log "-- fio: skipped ($pt_skip)"
  else
    log "-- fio sequential reads: ivshmfs (peer's file) vs passthrough_ll default and direct I/O"
    fio_mb=$((fio_size / MiB))
    : >"$mnt/b/vm1"
    head -c "$fio_size" /dev/urandom >"$work/pt-src/fio" &&
      cp "$work/pt-src/fio" "$mnt/b/vm1" || { failed=1; log "FAILED: preparing the fio file"; }
    mkdir -p "$mnt/ptc"
    "$passthrough" -f -o source="$work/pt-src" "$mnt/ptc" 2>"$out/passthrough_ll-default.log" &
    pid_ptc=$!; pids+=("$pid_ptc"); mounts+=("$mnt/ptc")
    if wait_mounted "$mnt/ptc" "$pid_ptc"; then
      fio_read() {  # FILE BS: bytes/s of one sequential read of the file
        fio --name=seqread --filename="$1" --rw=read --bs="$2" --size="${fio_mb}M" --iomem=mmap \
          --ioengine=psync --invalidate=1 --output-format=terse --terse-version=3 2>>"$out/fio.log" |
          awk -F';' '{ printf "%.0f\n", $7 * 1024 }'
      }
      for bs in 4096 65536 1048576; do
        for rep in $(seq 1 "$file_reps"); do
          for what in fio_mnt:"$mnt/a/vm1" fio_pt:"$mnt/ptc/fio" fio_ptd:"$mnt/pt/fio" fio_tmpfs:"$work/pt-src/fio"; do
            name=${what%%:*}; file=${what#*:}
            if r=$(fio_read "$file" "$bs") && [ -n "$r" ]; then echo "$r" >>"$work/$name.$bs"; else failed=1; log "FAILED: fio $name $bs"; fi
          done
        done
        for name in fio_mnt fio_pt fio_ptd fio_tmpfs; do
          f="$work/$name.$bs"
          [ -s "$f" ] && echo "$name,$bs,$(median <"$f")" | tee -a "$raw" >&2
        done
      done
    else
      log "-- fio: passthrough_ll (default mode) did not mount"
    fi
    rm -f "$work/pt-src/fio"
  fi

  log "-- commit-to-seen through the mount (follow view, data flowing)"
  run "$tool" follow-latency "$mnt/a/vm0" "$mnt/b/follow/vm0" "$follow_count" "$follow_interval_us" >&2
  cleanup
else
  log "-- through the mount: $mount_skip"
fi
[ -z "$mount_skip" ] && [ -n "$pt_skip" ] && log "-- passthrough_ll: $pt_skip"

# ---- 5. report -----------------------------------------------------------------
cpu=$(awk -F: '/model name/ { sub(/^ +/, "", $2); print $2; exit }' /proc/cpuinfo)
export LC_ALL=C
awk -F, -v mode="$mode" -v sizes="$sizes" -v mount_skip="$mount_skip" -v pt_skip="$pt_skip" \
    -v machine="$(nproc) cores, $cpu, Linux $(uname -r)" -v when="$(date -u '+%Y-%m-%d %H:%M UTC')" \
    -v chart_dat="$out/chart.dat" -v ratios_out="$out/ratios.txt" '
  { v[$1 "," $2] = $3; ops[$1 "," $2] = $4 }
  function has(k) { return (k in v) && v[k] != "" }
  function gbs(k) { return has(k) ? sprintf("%.2f", v[k] / 1e9) : "-" }
  function mbs(k) { return has(k) ? sprintf("%.0f", v[k] / 1e6) : "-" }
  function ratio(a, b, s) { return (has(a "," s) && has(b "," s) && v[b "," s] > 0) ? sprintf("%.2f", v[a "," s] / v[b "," s]) : "-" }
  function human(s) { return s >= 1048576 ? s / 1048576 " MiB" : (s >= 1024 ? s / 1024 " KiB" : s " B") }
  function check(label, num, den, target, kind,    r, verdict) {
    # kind ">=": num/den must reach target; "<": num must stay under target (den unused)
    if (num == "" || (kind == ">=" && (den == "" || den == 0))) {
      rows[++nr] = sprintf("| %s | - | %s %s | %s |", label, kind, target, skipmsg != "" ? skipmsg : "not measured")
      return
    }
    if (kind == ">=") { r = num / den; verdict = (r >= target) ? "PASS" : "MISS"; rows[++nr] = sprintf("| %s | %.2f | >= %s | %s |", label, r, target, verdict) }
    else { r = num; verdict = (r < target) ? "PASS" : "MISS"; rows[++nr] = sprintf("| %s | %.3g | < %s | %s |", label, r, target, verdict) }
    if (verdict == "PASS") npass++; else nmiss++
  }
  END {
    n = split(sizes, sz, " ")
    print "# ivshmfs benchmark results (" mode " mode)\n"
    print "Run " when " on " machine ".\n"
    if (mode == "quick") print "Quick mode: small counts, indicative only; the targets apply to the full mode.\n"
    print "## Throughput (GB/s, 1e9 bytes per second; medians)\n"
    print "| size | memcpy write | lib append | memcpy read | lib read | lib stream (2 proc) | Unix socket | TCP loopback | mount append | mount read (peer) | tmpfs write | tmpfs read | passthrough_ll write | passthrough_ll read |"
    print "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
    split("memcpy_write lib_append memcpy_read lib_read stream_lib stream_unix stream_tcp mnt_write mnt_read tmpfs_write tmpfs_read pt_write pt_read", col, " ")
    for (i = 1; i <= n; i++) {
      line = "| " human(sz[i]) " |"
      dat = sz[i]
      for (c = 1; c <= 13; c++) {
        k = col[c] "," sz[i]
        line = line " " gbs(k) " |"
        dat = dat " " (has(k) ? v[k] / 1e9 : "?")
      }
      print line
      print dat > chart_dat
    }
    if (mount_skip != "") print "\nMount rows: " mount_skip "."
    else if (pt_skip != "") print "\npassthrough_ll rows: " pt_skip "."
    print "\n## Split mode vs shared mode (same run; split / shared, 1.00 = no cost)\n"
    print "| size | lib append shared | lib append split | ratio | lib read shared | lib read split | ratio | mount append shared | mount append split | ratio | mount read (peer) shared | mount read (peer) split | ratio |"
    print "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
    for (i = 1; i <= n; i++) {
      s = sz[i]
      printf "| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", human(s), gbs("lib_append," s), gbs("lib_append_split," s), ratio("lib_append_split", "lib_append", s), gbs("lib_read," s), gbs("lib_read_split," s), ratio("lib_read_split", "lib_read", s), gbs("mnt_write," s), gbs("mnt_write_split," s), ratio("mnt_write_split", "mnt_write", s), gbs("mnt_read," s), gbs("mnt_read_split," s), ratio("mnt_read_split", "mnt_read", s)
    }
    print "\n## Latency (64-byte message, nanoseconds)\n"
    print "| path | p50 | p99 |"
    print "| --- | --- | --- |"
    print "| library commit -> seen (busy poll) | " (has("latency_lib,64") ? v["latency_lib,64"] : "-") " | " (has("latency_lib,64") ? ops["latency_lib,64"] : "-") " |"
    print "| Unix socket round trip / 2 | " (has("latency_unix,64") ? v["latency_unix,64"] : "-") " | " (has("latency_unix,64") ? ops["latency_unix,64"] : "-") " |"
    print "| mount commit -> seen (follow view) | " (has("latency_mount,64") ? v["latency_mount,64"] : (mount_skip != "" ? mount_skip : "-")) " | " (has("latency_mount,64") ? ops["latency_mount,64"] : "-") " |"
    print "\n## fio sequential reads of another peer file (MB/s, medians; ratios in the same run)\n"
    print "| request | ivshmfs (another peer file) | passthrough_ll default | passthrough_ll direct I/O | tmpfs | ivshmfs / pt default | ivshmfs / pt direct |"
    print "| --- | --- | --- | --- | --- | --- | --- |"
    split("4096 65536 1048576", fsz, " ")
    for (i = 1; i <= 3; i++) {
      s = fsz[i]
      printf "| %s | %s | %s | %s | %s | %s | %s |\n", human(s), mbs("fio_mnt," s), mbs("fio_pt," s), mbs("fio_ptd," s), mbs("fio_tmpfs," s), ratio("fio_mnt", "fio_pt", s), ratio("fio_mnt", "fio_ptd", s)
    }
    print "\nDaemon idle CPU: " (has("idle_cpu,0") ? v["idle_cpu,0"] "% of a core" : (mount_skip != "" ? mount_skip : "-")) "\n"

    print "## Ratios against the targets\n"
    print "| ratio | value | target | verdict |"
    print "| --- | --- | --- | --- |"
    for (i = 1; i <= n; i++) {
      s = sz[i]; t = (s >= 4096) ? 0.85 : 0.5
      check("lib append / memcpy write, " human(s), v["lib_append," s], v["memcpy_write," s], t, ">=")
      check("lib read / memcpy read, " human(s), v["lib_read," s], v["memcpy_read," s], t, ">=")
    }
    check("lib stream / Unix socket, 64 KiB", v["stream_lib,65536"], v["stream_unix,65536"], 3, ">=")
    check("lib stream / Unix socket, 1 MiB", v["stream_lib,1048576"], v["stream_unix,1048576"], 5, ">=")
    check("Unix round trip/2 p50 / lib commit-to-seen p50, 64 B", v["latency_unix,64"], v["latency_lib,64"], 5, ">=")
    skipmsg = mount_skip
    check("mount read (peer) / passthrough_ll read, 1 MiB", v["mnt_read,1048576"], pt_skip == "" ? v["pt_read,1048576"] : "", 2, ">=")
    check("mount read (peer) / tmpfs read, 1 MiB", v["mnt_read,1048576"], v["tmpfs_read,1048576"], 0.4, ">=")
    check("mount append / passthrough_ll write, 1 MiB", v["mnt_write,1048576"], pt_skip == "" ? v["pt_write,1048576"] : "", 1.5, ">=")
    check("mount read ops/s / passthrough_ll, 4 KiB", ops["mnt_read,4096"], pt_skip == "" ? ops["pt_read,4096"] : "", 1.5, ">=")
    check("mount append ops/s / passthrough_ll, 4 KiB", ops["mnt_write,4096"], pt_skip == "" ? ops["pt_write,4096"] : "", 1.5, ">=")
    check("fio 4 KiB reads, peer file / passthrough_ll default", v["fio_mnt,4096"], v["fio_pt,4096"], 1, ">=")
    check("fio 64 KiB reads, peer file / passthrough_ll direct I/O", v["fio_mnt,65536"], v["fio_ptd,65536"], 1, ">=")
    check("mount commit-to-seen p50 (us)", has("latency_mount,64") ? v["latency_mount,64"] / 1000 : "", 1, 100, "<")
    check("daemon idle CPU (% of a core)", v["idle_cpu,0"], 1, 1, "<")
    for (i = 1; i <= nr; i++) print rows[i]
    print "\n## Bounds (informative: what limits the stream ratios)\n"
    print "The writer copies every byte once into the log, so no stream can beat one memcpy into the"
    print "mapping; the Unix socket is measured against that same ceiling.\n"
    print "| ratio | 64 KiB | 1 MiB |"
    print "| --- | --- | --- |"
    print "| lib stream / memcpy write (how close the library gets to its ceiling) | " ratio("stream_lib", "memcpy_write", 65536) " | " ratio("stream_lib", "memcpy_write", 1048576) " |"
    print "| memcpy write / Unix socket (the most any copying stream can gain) | " ratio("memcpy_write", "stream_unix", 65536) " | " ratio("memcpy_write", "stream_unix", 1048576) " |"
    printf "\n%d PASS, %d MISS%s\n", npass, nmiss, mode == "quick" ? " (quick mode: indicative only)" : ""
    for (i = 1; i <= nr; i++) print rows[i] > ratios_out
  }' "$raw" >"$out/results.md"

# The chart: throughput against message size.
if command -v gnuplot >/dev/null; then
  cat >"$out/chart.gp" <<EOF
set terminal pngcairo size 1100,700 noenhanced font ",10"
set output "$out/throughput.png"
set title "ivshmfs throughput vs message size ($mode mode, $(nproc) cores, $(uname -r))"
set logscale xy
set xlabel "message / request size (bytes)"
set ylabel "GB/s"
set grid
set key outside right
set datafile missing "?"
set xtics ("64 B" 64, "4 KiB" 4096, "64 KiB" 65536, "1 MiB" 1048576, "16 MiB" 16777216)
plot "$out/chart.dat" u 1:2 w lp t "memcpy write (ceiling)", \
  "" u 1:3 w lp t "lib append", \
  "" u 1:4 w lp t "memcpy read (ceiling)", \
  "" u 1:5 w lp t "lib read", \
  "" u 1:6 w lp t "lib stream, 2 processes", \
  "" u 1:7 w lp t "Unix socket", \
  "" u 1:8 w lp t "TCP loopback", \
  "" u 1:9 w lp t "mount append", \
  "" u 1:10 w lp t "mount read (peer)", \
  "" u 1:11 w lp t "tmpfs write", \
  "" u 1:12 w lp t "tmpfs read", \
  "" u 1:13 w lp t "passthrough_ll write", \
  "" u 1:14 w lp t "passthrough_ll read"
EOF
  if ! gnuplot "$out/chart.gp" 2>"$out/gnuplot.log"; then
    # No cairo terminal: the plain libgd one.
    sed -i 's/^set terminal pngcairo size 1100,700 noenhanced font ",10"/set terminal png size 1100,700/' "$out/chart.gp"
    gnuplot "$out/chart.gp" 2>"$out/gnuplot.log" || log "gnuplot failed (see $out/gnuplot.log)"
  fi
else
  log "gnuplot missing (Debian package gnuplot-nox): no chart"
fi

echo
cat "$out/results.md"
echo
echo "chart: $out/throughput.png"
echo "results: $out/results.md"
[ "$failed" = 0 ] || { echo "run.sh: some benchmark programs failed (see above)" >&2; exit 1; }
exit 0
