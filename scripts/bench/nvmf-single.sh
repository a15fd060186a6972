# Sourced by scripts/bench/nvmf-profile and nvmf-syscalls: one target
# (TGT: pollux, pollux-irq or spdk) serving a null bdev on 127.0.0.1 from
# CPU 1, and SPDK's spdk_nvme_perf driving it from CPU 0 for HOST_SECONDS
# (PAT SIZE QD [QUEUES]); returns 3 s into the run (past connection set-up
# and ramp) with the target's PID in PID and the host's in HOST. Files go
# to DIR (removed at exit unless KEEP_DIR is set). Hugepages are reserved
# for SPDK and given back at exit.
TGT=$1 PAT=$2 SIZE=$3 QD=$4 QUEUES=${5:-}
HERE=$(cd "$(dirname "$0")" && pwd)
PX=${POLLUX_TGT:-${CARGO_TARGET_DIR:-$HERE/../../target}/release/pollux-tgt}
SPDK=${SPDK:-/work/peer/spdk}
PERF=${SPDK_NVME_PERF:-$SPDK/build/bin/spdk_nvme_perf}
NQN=nqn.2016-06.io.spdk:bench
command -v perf > /dev/null || { echo "needs perf (linux-perf)" >&2; exit 1; }
[ -x "$PERF" ] || { echo "no $PERF: build SPDK as ../shared/notes/spdk-peer.md says" >&2; exit 1; }
mkdir -p "$DIR"
PID=
HP_BEFORE=$(cat /proc/sys/vm/nr_hugepages)
cleanup() {
    # Every step, even after one fails (a process already gone): under
    # set -e the first failing kill ended the trap and left the rest running.
    set +e
    if [ -n "$PID" ]; then kill -9 "$PID" 2>/dev/null; wait "$PID" 2>/dev/null || true; fi
    [ -n "${KEEP_DIR:-}" ] || rm -rf "$DIR"
    echo "$HP_BEFORE" > /proc/sys/vm/nr_hugepages
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP PIPE
[ "$HP_BEFORE" -ge 1536 ] || echo 1536 > /proc/sys/vm/nr_hugepages
mountpoint -q /dev/hugepages || { mkdir -p /dev/hugepages; mount -t hugetlbfs nodev /dev/hugepages; }
cat > "$DIR/cfg.json" <<CFG
{"subsystems":[{"subsystem":"bdev","config":[{"method":"bdev_null_create","params":{"name":"N0","num_blocks":2097152,"block_size":512}}]},
{"subsystem":"nvmf","config":[{"method":"nvmf_create_transport","params":{"trtype":"TCP"}},
{"method":"nvmf_create_subsystem","params":{"nqn":"$NQN","allow_any_host":true,"serial_number":"BENCH0001"}},
{"method":"nvmf_subsystem_add_ns","params":{"nqn":"$NQN","namespace":{"bdev_name":"N0"}}},
{"method":"nvmf_subsystem_add_listener","params":{"nqn":"$NQN","listen_address":{"trtype":"TCP","adrfam":"IPv4","traddr":"127.0.0.1","trsvcid":"4431"}}}]}]}
CFG
rm -f "$DIR/rpc.sock"
case $TGT in
pollux) "$PX" -m 0x2 -r "$DIR/rpc.sock" -c "$DIR/cfg.json" > "$DIR/target.log" 2>&1 & PID=$! ;;
pollux-irq) "$PX" -m 0x2 -r "$DIR/rpc.sock" -c "$DIR/cfg.json" --interrupt-mode > "$DIR/target.log" 2>&1 & PID=$! ;;
spdk) "$SPDK/build/bin/nvmf_tgt" -m 0x2 -s 1024 --no-pci -r "$DIR/rpc.sock" -c "$DIR/cfg.json" > "$DIR/target.log" 2>&1 & PID=$! ;;
*) echo "unknown target $TGT" >&2; exit 2 ;;
esac
up=
for _ in $(seq 100); do
    if ss -ltn 'sport = :4431' | grep -q 4431; then up=1; break; fi
    kill -0 "$PID" 2>/dev/null || break
    sleep 0.1
done
[ -n "$up" ] || { echo "$TGT did not come up" >&2; cat "$DIR/target.log" >&2; exit 1; }
P=; [ -n "$QUEUES" ] && P="-P $QUEUES"
# shellcheck disable=SC2086
"$PERF" -c 0x1 -s 512 -q "$QD" -o "$SIZE" -w "$PAT" -t "$HOST_SECONDS" $P \
    -r "trtype:TCP adrfam:IPv4 traddr:127.0.0.1 trsvcid:4431 subnqn:$NQN" > "$DIR/host.out" 2>&1 &
HOST=$!
# The host's first seconds are connection set-up and ramp.
sleep 3
