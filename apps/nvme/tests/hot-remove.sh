#!/bin/sh
# Hot removal under RPC load, run in the test guest by vfio_guest.rs:
# pollux-tgt holds two controllers; controller 1 is removed through sysfs,
# brought back with a PCI rescan, bound to vfio-pci, attached again over RPC,
# ROUNDS times, while a client polls bdev_get_bdevs without pause; then once
# more with hot insertion on (bdev_nvme_set_hotplug). Every removal must
# complete, every RPC must be answered and the daemon must stop cleanly.
#
#   hot-remove.sh BIN_DIR [ROUNDS]
set -u
BIN=$1
ROUNDS=${2:-15}
B0=0000:00:03.0
B1=0000:00:04.0
W=$(mktemp -d)
cat > "$W/c.json" <<JSON
{"subsystems":[{"subsystem":"bdev","config":[
 {"method":"bdev_nvme_attach_controller","params":{"name":"Nvme0","trtype":"PCIe","traddr":"$B0"}},
 {"method":"bdev_nvme_attach_controller","params":{"name":"Nvme1","trtype":"PCIe","traddr":"$B1"}}]}]}
JSON
"$BIN/pollux-tgt" -c "$W/c.json" -r "$W/sock" --log-level INFO > "$W/tgt.log" 2>&1 &
TGT=$!
POLL=
fail() {
    echo "FAIL: $*"
    touch "$W/stop"
    [ -n "$POLL" ] && wait "$POLL"
    kill -0 "$TGT" 2>/dev/null && echo "pollux-tgt still running" || echo "pollux-tgt is gone"
    echo "--- pollux-tgt log (last 40 lines)"
    tail -40 "$W/tgt.log"
    kill -KILL "$TGT" 2>/dev/null
    exit 1
}
up=
for _ in $(seq 1 100); do
    "$BIN/pollux-rpc" -s "$W/sock" bdev_get_bdevs > /dev/null 2>&1 && { up=1; break; }
    sleep 0.1
done
[ -n "$up" ] || fail "pollux-tgt did not come up"
(
    n=0
    until [ -e "$W/stop" ]; do
        out=$("$BIN/pollux-rpc" -s "$W/sock" bdev_get_bdevs 2>&1) || { echo "$out" > "$W/rpc-failed"; exit 1; }
        n=$((n + 1))
    done
    echo "$n" > "$W/polled"
) &
POLL=$!
for i in $(seq 1 "$ROUNDS"); do
    echo 1 > /sys/bus/pci/devices/$B1/remove || fail "round $i: removal"
    [ -e "$W/rpc-failed" ] && fail "round $i: an RPC failed during removal: $(cat "$W/rpc-failed")"
    kill -0 "$TGT" 2>/dev/null || fail "round $i: pollux-tgt died"
    echo 1 > /sys/bus/pci/rescan
    for _ in $(seq 1 100); do [ -e /sys/bus/pci/devices/$B1 ] && break; sleep 0.05; done
    [ -e /sys/bus/pci/devices/$B1 ] || fail "round $i: $B1 did not come back"
    [ -e /sys/bus/pci/devices/$B1/driver ] && echo $B1 > /sys/bus/pci/devices/$B1/driver/unbind
    echo vfio-pci > /sys/bus/pci/devices/$B1/driver_override
    echo $B1 > /sys/bus/pci/drivers_probe
    out=$("$BIN/pollux-rpc" -s "$W/sock" bdev_nvme_attach_controller -b Nvme1 -t PCIe -a $B1 2>&1) || fail "round $i: attach: $out"
    echo "round $i: removed and attached again"
done
# Hot insertion (bdev_nvme_set_hotplug): the daemon attaches the device by
# itself when it comes back, as HotInNvme0, and a controller detached on
# request is not attached again. Module options cannot change under
# attached controllers.
out=$("$BIN/pollux-rpc" -s "$W/sock" bdev_nvme_set_options --timeout-us 1000000 2>&1) && fail "bdev_nvme_set_options accepted with controllers attached"
echo "$out" | grep -q "before any NVMe controller is attached" || fail "set_options refusal: $out"
"$BIN/pollux-rpc" -s "$W/sock" bdev_nvme_set_hotplug --hotplug --period-us 50000 > /dev/null || fail "set_hotplug"
echo 1 > /sys/bus/pci/devices/$B1/remove || fail "hotplug: removal"
echo 1 > /sys/bus/pci/rescan
for _ in $(seq 1 100); do [ -e /sys/bus/pci/devices/$B1 ] && break; sleep 0.05; done
[ -e /sys/bus/pci/devices/$B1/driver ] && echo $B1 > /sys/bus/pci/devices/$B1/driver/unbind
echo vfio-pci > /sys/bus/pci/devices/$B1/driver_override
echo $B1 > /sys/bus/pci/drivers_probe
found=
for _ in $(seq 1 100); do
    "$BIN/pollux-rpc" -s "$W/sock" bdev_get_bdevs | grep -q '"HotInNvme0n2"' && { found=1; break; }
    sleep 0.1
done
[ -n "$found" ] || fail "hotplug did not attach $B1"
echo "hotplug: $B1 attached as HotInNvme0"
"$BIN/pollux-rpc" -s "$W/sock" bdev_nvme_detach_controller HotInNvme0 || fail "detach HotInNvme0"
sleep 0.5
"$BIN/pollux-rpc" -s "$W/sock" bdev_nvme_get_controllers | grep -q '"HotIn' && fail "a detached controller was attached again"
grep -q "NVMe controller HotInNvme0: shutdown complete" "$W/tgt.log" || fail "HotInNvme0 was not shut down when detached"
touch "$W/stop"
wait "$POLL"
[ -e "$W/rpc-failed" ] && fail "an RPC failed: $(cat "$W/rpc-failed")"
echo "RPCs answered during the rounds: $(cat "$W/polled")"
kill -TERM "$TGT"
wait "$TGT"
rc=$?
[ $rc -eq 0 ] || fail "pollux-tgt exited with $rc after SIGTERM"
asked=$(grep -c "the kernel asks for the device back" "$W/tgt.log")
[ "$asked" -gt "$ROUNDS" ] || fail "$asked release requests logged for $ROUNDS + 1 removals"
grep -q "NVMe controller Nvme0: shutdown complete" "$W/tgt.log" || fail "Nvme0 was not shut down at exit"
rm -rf "$W"
echo "hot removal: $ROUNDS rounds passed"
