// SPDX-License-Identifier: Apache-2.0
/**
 * ps: lists the guest's processes from outside, like LibVMI's `process-list`: read `init_task` at
 * its documented address and follow `tasks.next` through guest-virtual memory. Nothing runs in the
 * guest; only memory reads cross the bridge.
 *
 *   npx tsx clients/examples/ps.ts --target 127.0.0.1:50051 --vm demo-0
 */
import { fail, setup, stdout } from "./example-args.js";
import { listTasks } from "./guest-profile.js";

const USAGE = "usage: ps.ts --vm <uuid|name> [--target host:port] [--json] [--tls-ca f --tls-cert f --tls-key f]";

async function main(): Promise<void> {
  const { client, vm, json } = await setup(USAGE);
  try {
    const tasks = await listTasks(client.vm(vm.uuid));
    if (json) {
      stdout.write(`${JSON.stringify(tasks.map((t) => ({ pid: t.pid, ppid: t.ppid, cr3: `0x${t.cr3.toString(16)}`, comm: t.comm })))}\n`);
      return;
    }
    stdout.write(`${"PID".padStart(6)} ${"PPID".padStart(6)}  ${"CR3".padEnd(18)}  COMM\n`);
    for (const t of tasks) {
      const comm = t.kernelThread ? `[${t.comm}]` : t.comm;
      stdout.write(`${String(t.pid).padStart(6)} ${String(t.ppid).padStart(6)}  0x${t.cr3.toString(16).padStart(16, "0")}  ${comm}\n`);
    }
  } finally {
    client.close();
  }
}

main().catch(fail);
