#!/bin/sh
# Pollux's NVMe driver against the kernel's, on the same emulated controller
# in one test guest: 4 KiB random reads at QD1 (latency) and QD32 (IOPS),
# with the guest CPU each used (all CPUs, from /proc/stat).
#
#   cargo build --release --workspace --bins
#   target/release/pollux-testvm run --vfio --hugepages 256 --memory 2048 \
#       --timeout 600 [--env POLLUX_BIN_DIR=DIR] -- drivers/nvme/bench/vm-bench.sh [SECONDS]
#
# Pollux runs first (the controller starts on vfio-pci), then the controller
# is rebound to the kernel's nvme driver and fio (io_uring, O_DIRECT) runs.
set -eu
T=${1:-10}
BIN=${POLLUX_BIN_DIR:-$(pwd)/target/release}
BDF=0000:00:03.0
W=$(mktemp -d)

busy() { awk '/^cpu /{print $2+$3+$4+$6+$7+$8, $2+$3+$4+$5+$6+$7+$8}' /proc/stat; }
measure() { # name, command...
    name=$1; shift
    set -- $(busy) "$@"; b0=$1; t0=$2; shift 2
    "$@" > "$W/$name.out" 2>"$W/$name.err" || { cat "$W/$name.err"; exit 1; }
    set -- $(busy); b1=$1; t1=$2
    echo "$name cpu_busy_jiffies=$((b1-b0)) total_jiffies=$((t1-t0))"
}

cat > "$W/nvme.json" <<JSON
{"subsystems":[{"subsystem":"bdev","config":[{"method":"bdev_nvme_attach_controller","params":{"name":"Nvme0","trtype":"PCIe","traddr":"$BDF"}}]}]}
JSON
for qd in 1 32; do
    measure pollux_qd$qd "$BIN/pollux-perf" -c "$W/nvme.json" -q $qd -o 4096 -w randread -t "$T" --json
    grep -E '"(iops|avg_latency_us|p99_latency_us)"' "$W/pollux_qd$qd.out" | tail -3
    # Interrupt mode: MSI-X completions, the reactor sleeps in between.
    measure pollux_irq_qd$qd "$BIN/pollux-perf" -c "$W/nvme.json" -q $qd -o 4096 -w randread -t "$T" --json --interrupt-mode
    grep -E '"(iops|avg_latency_us|p99_latency_us)"' "$W/pollux_irq_qd$qd.out" | tail -3
done

# Rebind the same controller to the kernel driver.
echo > /sys/bus/pci/devices/$BDF/driver_override
echo $BDF > /sys/bus/pci/drivers/vfio-pci/unbind
modprobe nvme
echo $BDF > /sys/bus/pci/drivers_probe
for i in $(seq 1 100); do [ -b /dev/nvme0n1 ] && break; sleep 0.1; done
for qd in 1 32; do
    measure kernel_qd$qd fio --name=k --filename=/dev/nvme0n1 --ioengine=io_uring --direct=1 --rw=randread --bs=4k \
        --iodepth=$qd --runtime="$T" --time_based --output-format=json
    python3 -c "import json,sys; j=json.load(open('$W/kernel_qd$qd.out'))['jobs'][0]; r=j['read']; print('iops', round(r['iops']), 'avg_latency_us', round(r['clat_ns']['mean']/1000,1), 'p99_latency_us', round(r['clat_ns']['percentile']['99.000000']/1000,1), 'usr', j['usr_cpu'], 'sys', j['sys_cpu'])"
done
