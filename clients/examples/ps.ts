// SPDX-License-Identifier: Apache-2.0
/**
 * ps: lists the guest's processes from outside, like LibVMI's `process-list`: find `init_task` and
 * the task_struct layout in the profile and follow `tasks.next` through guest-virtual memory.
 * Nothing runs in the guest; only memory reads cross the bridge.
 *
 *   npx tsx clients/examples/ps.ts --target 127.0.0.1:50051 --vm demo-0
 *   npx tsx clients/examples/ps.ts --vm linux-0 --profile test/guest/.cache/<hash>/linux-profile-<hash>.json.gz
 */
import { fail, setup, stdout } from "./example-args.js";
import { openGuest, PROFILE_OPTION } from "./guest-profile.js";

const USAGE = "usage: ps.ts --vm <uuid|name> [--target host:port] [--profile isf.json] [--json] [--tls-ca f --tls-cert f --tls-key f]";

async function main(): Promise<void> {
  const { client, vm, json, values } = await setup<{ profile?: string }>(USAGE, PROFILE_OPTION);
  try {
    const tasks = await (await openGuest(client.vm(vm.uuid), values.profile)).processes();
    if (json) {
      stdout.write(`${JSON.stringify(tasks.map((t) => ({ pid: t.pid, ppid: t.ppid, cr3: t.pageTable === undefined ? null : `0x${t.pageTable.toString(16)}`, comm: t.comm })))}\n`);
      return;
    }
    stdout.write(`${"PID".padStart(6)} ${"PPID".padStart(6)}  ${"CR3".padEnd(18)}  COMM\n`);
    for (const t of tasks) {
      const comm = t.kernelThread ? `[${t.comm}]` : t.comm;
      stdout.write(`${String(t.pid).padStart(6)} ${String(t.ppid).padStart(6)}  ${t.pageTable === undefined ? "-".padEnd(18) : `0x${t.pageTable.toString(16).padStart(16, "0")}`}  ${comm}\n`);
    }
  } finally {
    client.close();
  }
}

main().catch(fail);
