// SPDX-License-Identifier: Apache-2.0
/**
 * Emulator process of the event-filter part of `npm run bench` (filter-phase.ts): the benchmark's
 * emulated VMs (lib/emulator-host.ts) plus the loops that part drives (lib/filter-guest.ts), in a
 * process of their own, so that the bridge and the raw tool are each one socket hop away from the
 * guest, as a kernel's KVMI socket is.
 */
import { emulatorHandlers, stopVms } from "./lib/emulator-host.js";
import { filterGuestHandlers } from "./lib/filter-guest.js";
import { serve } from "./lib/ipc.js";

serve({
  ...emulatorHandlers,
  ...filterGuestHandlers,
  memory: () => process.memoryUsage(),
  exit: stopVms,
});
