#!/bin/sh
# pollux-testvm stage 2: PID 1 after switch_root into the host's root (read-only
# 9p + tmpfs overlay), run by the host's /bin/sh. Written into the transfer share
# (/run/testvm) by the host for every run, next to config.sh and cmd.sh.
#
# Protocol with the host:
#   setup-error   written when the guest could not prepare the command
#   stdout stderr the command's output
#   status        the command's exit status (written last, atomically)
#   uptime        guest uptime when the command started and ended
# then a byte 0x10 to port 0xf4 (isa-debug-exit): QEMU exits with 33.
T=/run/testvm
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
. "$T/config.sh"

report() {
    sync
    printf '\020' | dd of=/dev/port bs=1 seek=244 count=1 2>/dev/null
    echo "pollux-testvm: isa-debug-exit did not stop QEMU; powering off"
    echo o > /proc/sysrq-trigger
    sleep 10
}

setup_failed() {
    echo "pollux-testvm: guest setup failed: $*"
    echo "$*" > "$T/setup-error"
    report
}

mkdir -p /dev/pts /dev/shm /tmp /lib/modules
mount -t devpts devpts /dev/pts || setup_failed "mount /dev/pts"
mount -t tmpfs tmpfs /dev/shm || setup_failed "mount /dev/shm"
mount --bind "$TESTVM_MODULES" /lib/modules || setup_failed "bind $TESTVM_MODULES"
ln -sf /proc/self/fd /dev/fd 2>/dev/null
# Transparent huge pages only where asked for (madvise): with the kernel's
# default (always), a test's O_DIRECT buffer could sit on huge pages that
# the kernel's nvme-tcp host sends without copying, and the guest kernel
# (Debian 6.1.192) then hits a hardened-usercopy BUG when the target reads
# a segment crossing from one such page into the next (seen once in the
# suite: "usercopy: Kernel memory exposure attempt detected from page
# alloc", in the target's readv). Not Pollux's code: any user-space
# target would; the kernel's own nvmet receives in the kernel.
echo madvise > /sys/kernel/mm/transparent_hugepage/enabled 2>/dev/null

nvme_functions() {
    for d in /sys/bus/pci/devices/*; do
        [ "$(cat "$d/class")" = 0x010802 ] && echo "${d##*/}"
    done
}

wait_for() { # COUNT-COMMAND EXPECTED WHAT
    i=0
    while [ "$(eval "$1")" -lt "$2" ]; do
        i=$((i + 1))
        [ $i -gt 400 ] && setup_failed "timed out waiting for $3"
        sleep 0.05
    done
}

case "$TESTVM_NVME_DRIVER" in
kernel)
    modprobe nvme || setup_failed "modprobe nvme"
    wait_for "ls /sys/block | grep -c '^nvme'" "$TESTVM_NAMESPACES" "$TESTVM_NAMESPACES NVMe namespaces"
    ;;
vfio)
    modprobe vfio-pci || setup_failed "modprobe vfio-pci"
    for bdf in $(nvme_functions); do
        d=/sys/bus/pci/devices/$bdf
        [ -e "$d/driver" ] && echo "$bdf" > "$d/driver/unbind"
        echo vfio-pci > "$d/driver_override" || setup_failed "driver_override $bdf"
        echo "$bdf" > /sys/bus/pci/drivers_probe
        group=$(basename "$(readlink "$d/iommu_group")")
        [ -n "$group" ] || setup_failed "$bdf has no IOMMU group"
        wait_for "ls /dev/vfio | grep -cx $group" 1 "/dev/vfio/$group for $bdf"
    done
    ;;
*) setup_failed "unknown NVMe driver '$TESTVM_NVME_DRIVER'" ;;
esac

read -r t0 _ < /proc/uptime
/bin/sh "$T/cmd.sh" < /dev/null > "$T/stdout" 2> "$T/stderr"
status=$?
read -r t1 _ < /proc/uptime
echo "$t0 $t1" > "$T/uptime"
echo "$status" > "$T/status.tmp" && mv "$T/status.tmp" "$T/status"
report
