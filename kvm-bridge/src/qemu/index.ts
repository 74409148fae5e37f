// SPDX-License-Identifier: Apache-2.0
/**
 * `@kvmi/kvm-bridge/qemu`: stock QEMU as a KVMI guest (docs/qemu-backend.md). Clients for QEMU's
 * gdbstub and QMP, and a launcher for direct-kernel-boot VMs.
 */
export { GdbClient, GdbMemoryError, GdbPoint, connectGdb } from "./gdb-client.js";
export type { GdbClientOptions, GdbRegister, StopReply } from "./gdb-client.js";
export { QmpClient, QmpCommandError, connectQmp } from "./qmp-client.js";
export type { QmpClientOptions, QmpCpu, QmpEvent } from "./qmp-client.js";
export { QemuProcess, launchQemu, qemuArguments } from "./qemu-process.js";
export type { GuestPsEntry, QemuLaunchOptions } from "./qemu-process.js";
export { formatSocketEndpoint, parseSocketEndpoint } from "./endpoint.js";
export type { SocketEndpoint } from "./endpoint.js";
export { QEMU_COMMANDS, QEMU_EVENTS, attachQemu } from "./backend.js";
export type { QemuBackend, QemuBackendOptions } from "./backend.js";
export { QemuGuest } from "./qemu-guest.js";
export { DIRECT_MAP, KERNEL_TEXT_MAP, PageWatches } from "./page-watch.js";
export type { PageHit } from "./page-watch.js";
