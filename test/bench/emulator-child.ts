// SPDX-License-Identifier: Apache-2.0
/**
 * Emulator process: the QEMU + KVMI v9 kernel side of the benchmark's VMs in a process of its own
 * (`--emulator process`, and always for the memory test, so that the bridge's RSS is its own).
 */
import { emulatorHandlers, stopVms } from "./lib/emulator-host.js";
import { serve } from "./lib/ipc.js";

serve({
  ...emulatorHandlers,
  memory: () => process.memoryUsage(),
  exit: stopVms,
});
