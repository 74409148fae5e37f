// SPDX-License-Identifier: Apache-2.0
// One runner, several projects (conventions §7): `vitest run --project unit` runs one layer.
import { defineConfig } from "vitest/config";

/** The e2e files whose behaviour depends on the KVMI dialect; the others speak only gRPC or TLS. */
const DIALECT_E2E_FILES = [
  "commands",
  "events",
  "dialect-only",
  "memory",
  "unhook-flow",
  "ledger-undo",
  "ledger-keep",
  "roles",
  "faults-deadlines",
  "faults-device-manager",
  "faults-controller",
  "event-filters",
  "faults-bulk",
  "faults-keepalive",
  "faults-slow-consumer",
  "faults-fuzz",
  "faults-bridge-process",
  "ledger-crash",
];

export default defineConfig({
  test: {
    reporters: ["default", "./test/support/summary-reporter.ts"],
    projects: [
      {
        test: {
          name: "unit",
          include: ["{kvm-bridge,service,clients}/**/src/**/*.test.ts", "clients/{sdk,cli,examples,relay}/**/*.test.ts", "proto/*.test.ts", "proto/binary/*.test.ts"],
          // Tests that do real /dev/kvm I/O are the `system` project's (conventions §7 item 8).
          exclude: ["**/node_modules/**", "**/*.system.test.ts"],
        },
      },
      {
        test: {
          name: "system",
          include: ["kvm-bridge/src/**/*.system.test.ts"],
          testTimeout: 30_000,
        },
      },
      {
        test: {
          name: "contract",
          include: ["test/contract/**/*.test.ts"],
          testTimeout: 30_000,
        },
      },
      {
        test: {
          name: "e2e",
          include: ["test/e2e/**/*.test.ts"],
          testTimeout: 30_000,
        },
      },
      // The e2e matrix (issue 12): the dialect-relevant suites again against a bridge and emulated
      // VMs speaking v12 and kvmi-v7 (test/support/bridge-harness.ts reads KVMI_E2E_DIALECT).
      ...(["v12", "kvmi-v7"] as const).map((dialect) => ({
        test: {
          name: `e2e-${dialect}`,
          include: DIALECT_E2E_FILES.map((file) => `test/e2e/${file}.test.ts`),
          env: { KVMI_E2E_DIALECT: dialect },
          testTimeout: 30_000,
        },
      })),
      {
        test: {
          name: "integration",
          include: ["test/integration/**/*.test.ts"],
          testTimeout: 180_000,
          hookTimeout: 300_000,
          fileParallelism: false,
        },
      },
      {
        // The real Linux guest under QEMU (test/guest/README.md): one boot per file, files in turn.
        test: {
          name: "linux",
          include: ["test/guest/**/*.test.ts", "test/linux/**/*.test.ts"],
          testTimeout: 120_000,
          hookTimeout: 300_000,
          fileParallelism: false,
        },
      },
    ],
  },
});
