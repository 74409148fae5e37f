#!/bin/sh
# SPDX-License-Identifier: Apache-2.0
# PID 1 of the test guest (see test/guest/README.md). Starts the known workload, then serves a tiny
# line protocol on the serial console so that tests get the guest's own view as ground truth:
#   ps        -> KVMI-PS-BEGIN, `ps -o pid,ppid,comm`, KVMI-PS-END
#   poweroff  -> powers the VM off
# With `kvmi.dump=kallsyms` on the kernel command line it copies /proc/kallsyms to the second
# serial port instead and powers off (how build.ts captures the symbol table once per kernel).
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
exec </dev/ttyS0 >/dev/ttyS0 2>&1
if grep -q 'kvmi.dump=kallsyms' /proc/cmdline; then
  cat /proc/kallsyms >/dev/ttyS1
  echo KVMI-DUMP-DONE
  poweroff -f
fi
stty -echo -icanon 2>/dev/null; stty icanon 2>/dev/null
kvmi-ticker &
kvmi-marker &
kvmi-idle &
echo KVMI-READY
while read -r line; do
  case "$line" in
    ps) echo KVMI-PS-BEGIN; ps -o pid,ppid,comm; echo KVMI-PS-END ;;
    poweroff) poweroff -f ;;
  esac
done
