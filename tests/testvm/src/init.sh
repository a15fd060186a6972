#!/bin/busybox sh
# pollux-testvm stage 1 (PID 1 in the initramfs, busybox only).
# Mounts the host's root read-only over 9p with a tmpfs overlay on top, mounts the
# per-run transfer share at /run/testvm inside it, configures networking, then
# switch_root's into it and runs stage 2 (/run/testvm/guest.sh, written by the host
# for every run). Any failure here powers the guest off without a report, which
# the host treats as an infrastructure failure and shows this console.
/bin/busybox --install -s /bin
export PATH=/bin

die() {
    echo "pollux-testvm: stage 1 failed: $*"
    poweroff -f
}

mount -t proc proc /proc || die "mount /proc"
mount -t sysfs sysfs /sys || die "mount /sys"
mount -t devtmpfs devtmpfs /dev || die "mount /dev"

for m in $(cat /modules/order); do
    insmod "/modules/$m" || die "insmod $m"
done

opts=trans=virtio,version=9p2000.L,msize=524288
mount -t 9p -o "$opts,ro,cache=loose" hostroot /hostroot || die "mount 9p hostroot"
mount -t 9p -o "$opts" xfer /xfer || die "mount 9p xfer"
mount -t tmpfs -o mode=0755 rw /rw || die "mount tmpfs /rw"
mkdir -p /rw/upper /rw/work
mount -t overlay -o lowerdir=/hostroot,upperdir=/rw/upper,workdir=/rw/work overlay /newroot \
    || die "mount overlay"
mkdir -p /newroot/run /newroot/proc /newroot/sys /newroot/dev
mount -t tmpfs -o mode=0755 run /newroot/run || die "mount /run"
mkdir -p /newroot/run/testvm
mount --move /xfer /newroot/run/testvm || die "move xfer"

ip link set lo up
if [ -e /newroot/run/testvm/network ]; then
    dev=$(ls /sys/class/net | grep -v '^lo$' | head -n 1)
    [ -n "$dev" ] || die "no network device"
    ip link set "$dev" up || die "link up $dev"
    ip addr add 10.0.2.15/24 dev "$dev" || die "address on $dev"
    ip route add default via 10.0.2.2 || die "default route"
fi

mount --move /proc /newroot/proc || die "move /proc"
mount --move /sys /newroot/sys || die "move /sys"
mount --move /dev /newroot/dev || die "move /dev"
exec switch_root /newroot /bin/sh /run/testvm/guest.sh
die "switch_root"
