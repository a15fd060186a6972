#!/bin/bash
# NVMe/TCP: the Pollux target against the kernel's own nvmet-tcp target, in
# one test guest, with the same kernel host (nvme-tcp) and fio workload, and
# RAM-backed namespaces on both sides (a malloc bdev; a memory-backed
# null_blk device). Run it in the test VM:
#
#   cargo build --release --workspace --bins
#   cargo run --release -p pollux-testvm -- run --controllers 0 --memory 2048 \
#       --timeout 900 -- bash targets/nvmf/bench/kernel-vs-pollux.sh
#
# (add --env CARGO_TARGET_DIR=... when building elsewhere).
# Environment: RUNTIME (seconds per job, default 20), POLLUX_MODES (the
# pollux-tgt start-up flags to try, ';'-separated), BIN (binary folder).
set -euo pipefail
RUNTIME=${RUNTIME:-20}
BIN=${BIN:-${CARGO_TARGET_DIR:-$(cd "$(dirname "$0")/../../.." && pwd)/target}/release}
POLLUX_MODES=${POLLUX_MODES:-"-m 0x1;-m 0x3 --interrupt-mode;-m 0x1 --interrupt-mode"}
SIZE_MB=${SIZE_MB:-512}
NQN_P=nqn.2016-06.io.pollux:bench
NQN_K=nqn.2016-06.io.kernel:bench
HOSTNQN=nqn.2014-08.org.nvmexpress:uuid:8e5a1c2b-0000-4000-8000-00000000beef

for m in nvme-tcp nvme-fabrics crc32c_generic nvmet nvmet-tcp; do modprobe $m; done
modprobe null_blk nr_devices=0
mountpoint -q /sys/kernel/config || mount -t configfs none /sys/kernel/config
N=/sys/kernel/config/nullb/nullb0
mkdir $N; echo $SIZE_MB > $N/size; echo 512 > $N/blocksize; echo 1 > $N/memory_backed; echo 2 > $N/queue_mode; echo 0 > $N/irqmode; echo 1 > $N/power

dev_of() { # serial -> block device
    for i in $(seq 100); do
        d=$(nvme list -o json | python3 -c "import json,sys; print(next((d['DevicePath'] for d in json.load(sys.stdin).get('Devices',[]) if d['SerialNumber']=='$1'), ''))")
        [ -n "$d" ] && { echo "$d"; return; }
        sleep 0.2
    done
    echo "no device with serial $1" >&2; exit 1
}

fio_iops() { # device rw -> IOPS
    fio --name=b --filename="$1" --direct=1 --ioengine=libaio --rw="$2" --bs=4k --iodepth=32 \
        --numjobs=1 --time_based --runtime="$RUNTIME" --ramp_time=3 --size=${SIZE_MB}M --group_reporting \
        --output-format=json | python3 -c "import json,sys; j=json.load(sys.stdin)['jobs'][0]; print(int(j['read']['iops'] + j['write']['iops']))"
}

precondition() { # write the whole device once so reads hit data
    fio --name=p --filename="$1" --direct=1 --ioengine=libaio --rw=write --bs=128k --iodepth=8 --size=${SIZE_MB}M >/dev/null
}

# ---- Kernel nvmet-tcp on null_blk ----
C=/sys/kernel/config/nvmet
mkdir $C/subsystems/$NQN_K
echo 1 > $C/subsystems/$NQN_K/attr_allow_any_host
echo KERNELBENCH0001 > $C/subsystems/$NQN_K/attr_serial
mkdir $C/subsystems/$NQN_K/namespaces/1
echo /dev/nullb0 > $C/subsystems/$NQN_K/namespaces/1/device_path
echo 1 > $C/subsystems/$NQN_K/namespaces/1/enable
mkdir $C/ports/1
echo tcp > $C/ports/1/addr_trtype; echo ipv4 > $C/ports/1/addr_adrfam
echo 127.0.0.1 > $C/ports/1/addr_traddr; echo 4421 > $C/ports/1/addr_trsvcid
ln -s $C/subsystems/$NQN_K $C/ports/1/subsystems/$NQN_K
nvme connect -t tcp -a 127.0.0.1 -s 4421 -n $NQN_K --hostnqn $HOSTNQN >/dev/null
D=$(dev_of KERNELBENCH0001)
precondition "$D"
K_R=$(fio_iops "$D" randread); K_W=$(fio_iops "$D" randwrite)
nvme disconnect -n $NQN_K >/dev/null
rm $C/ports/1/subsystems/$NQN_K; rmdir $C/ports/1
echo 0 > $C/subsystems/$NQN_K/namespaces/1/enable; rmdir $C/subsystems/$NQN_K/namespaces/1; rmdir $C/subsystems/$NQN_K
echo 0 > $N/power; rmdir $N   # give its memory back before Pollux runs
echo "kernel nvmet-tcp (null_blk, memory backed): randread $K_R IOPS, randwrite $K_W IOPS"

# ---- Pollux on a malloc bdev ----
CFG=/tmp/pollux-bench.json
cat > $CFG <<JSON
{"subsystems":[
 {"subsystem":"bdev","config":[{"method":"bdev_malloc_create","params":{"name":"Malloc0","num_blocks":$((SIZE_MB * 2048)),"block_size":512}}]},
 {"subsystem":"nvmf","config":[
  {"method":"nvmf_create_transport","params":{"trtype":"TCP"}},
  {"method":"nvmf_create_subsystem","params":{"nqn":"$NQN_P","allow_any_host":true,"serial_number":"POLLUXBENCH0001"}},
  {"method":"nvmf_subsystem_add_ns","params":{"nqn":"$NQN_P","namespace":{"bdev_name":"Malloc0"}}},
  {"method":"nvmf_subsystem_add_listener","params":{"nqn":"$NQN_P","listen_address":{"trtype":"TCP","adrfam":"IPv4","traddr":"127.0.0.1","trsvcid":"4420"}}}]}]}
JSON
IFS=';' read -ra MODES <<< "$POLLUX_MODES"
for mode in "${MODES[@]}"; do
    # shellcheck disable=SC2086
    "$BIN/pollux-tgt" $mode -r /tmp/pollux-bench.sock -c $CFG > /tmp/pollux-bench.log 2>&1 &
    PID=$!
    for i in $(seq 100); do [ -S /tmp/pollux-bench.sock ] && break; sleep 0.1; done
    "$BIN/pollux-rpc" -s /tmp/pollux-bench.sock -r 20 framework_wait_init >/dev/null || { cat /tmp/pollux-bench.log; exit 1; }
    nvme connect -t tcp -a 127.0.0.1 -s 4420 -n $NQN_P --hostnqn $HOSTNQN >/dev/null
    D=$(dev_of POLLUXBENCH0001)
    precondition "$D"
    P_R=$(fio_iops "$D" randread); P_W=$(fio_iops "$D" randwrite)
    nvme disconnect -n $NQN_P >/dev/null
    kill $PID; wait $PID || true
    echo "pollux ($mode, malloc): randread $P_R IOPS ($(python3 -c "print(f'{$P_R/$K_R:.2f}')")x kernel), randwrite $P_W IOPS ($(python3 -c "print(f'{$P_W/$K_W:.2f}')")x kernel)"
done
