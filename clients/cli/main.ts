// SPDX-License-Identifier: Apache-2.0
/**
 * `kvmictl`: a thin command-line client of kvmi-bridge over the SDK. Exit codes: 0 success,
 * 1 an error from the bridge (one line with the status code and reason), 2 a usage error.
 */
import { Command, CommanderError, Option } from "commander";
import { isKvmiBridgeError } from "@kvmi/clients";
import { UsageError } from "./args.js";
import * as commands from "./commands.js";
import * as osCommands from "./os-commands.js";
import { createContext } from "./context.js";
import type { CliContext, CliIo, GlobalOptions } from "./context.js";

export type { CliIo } from "./context.js";

/** Exit code of a successful run. */
export const EXIT_OK = 0;
/** Exit code of an error reported by the bridge (or the connection to it). */
export const EXIT_BRIDGE_ERROR = 1;
/** Exit code of a command-line mistake. */
export const EXIT_USAGE = 2;

/** The default bridge address (`KVMI_BRIDGE_TARGET` overrides it). */
export const DEFAULT_TARGET = "127.0.0.1:50051";

type Action = (ctx: CliContext, ...args: never[]) => Promise<number | void>;

/** Builds the command tree; actions report their exit code through `setExit`. */
export function buildProgram(io: CliIo, setExit: (code: number) => void): Command {
  const program = new Command("kvmictl")
    .description("Remote KVM introspection through kvmi-bridge (kvmi.v1 gRPC)")
    .addOption(new Option("--target <address>", "bridge gRPC address: host:port or unix:/path").default(io.env["KVMI_BRIDGE_TARGET"] ?? DEFAULT_TARGET))
    .option("--tls-ca <file>", "PEM CA certificate of the bridge (enables TLS)")
    .option("--tls-cert <file>", "PEM client certificate (mTLS)")
    .option("--tls-key <file>", "PEM private key of --tls-cert")
    .option("--tls-server-name <name>", "host name to verify in the bridge's certificate")
    .option("--timeout <ms>", "deadline of each call in ms", "30000")
    .option("--json", "machine-readable output (u64 values as 0x… strings)")
    .showSuggestionAfterError()
    .exitOverride()
    .configureOutput({ writeOut: io.stdout, writeErr: io.stderr });

  const run =
    (action: Action) =>
    async (...args: unknown[]): Promise<void> => {
      const command = args.at(-1) as Command;
      const ctx = createContext(command.optsWithGlobals<GlobalOptions>(), io);
      try {
        const code = await action(ctx, ...(args.slice(0, -1) as never[]));
        setExit(typeof code === "number" ? code : EXIT_OK);
      } finally {
        ctx.client.close();
      }
    };

  const vms = program.command("vms").description("list, get and watch the VMs the bridge serves");
  vms.command("list").description("list the VMs").action(run(commands.vmsList));
  vms.command("get <vm>").description("show one VM (UUID, vms/UUID or display name)").action(run(commands.vmsGet));
  vms
    .command("watch [vm]")
    .description("print registry changes until Ctrl-C")
    .option("--count <n>", "exit after n changes")
    .action(run(commands.vmsWatch));

  program.command("info <vm>").description("summary of a VM: KVMI version, memory, vCPUs").action(run(commands.info));
  program
    .command("regs <vm> <vcpu>")
    .description("registers of a vCPU: general, segments, CRs, EFER, mode")
    .option("--msr <list>", "also read these MSRs, e.g. 0xc0000080,0xc0000082")
    .action(run(commands.regs));
  program
    .command("read <vm> <addr> <len>")
    .description("hex dump of guest memory (physical unless --virtual, --vcpu or --cr3)")
    .option("--virtual", "addr is a guest virtual address (translated with vCPU 0 unless --vcpu or --cr3)")
    .option("--vcpu <n>", "translate with this vCPU's paging (implies --virtual)")
    .option("--cr3 <value>", "translate by walking the page tables at this CR3 (implies --virtual)")
    .option("--pid <pid>", "addr is a virtual address of this guest process (found through --profile)")
    .option("--profile <file>", "guest profile (ISF JSON) for --pid; default $KVMI_PROFILE or the emulator's workload")
    .action(run(commands.read));
  const profileOption = (): Option => new Option("--profile <file>", "guest profile (ISF JSON); default $KVMI_PROFILE or the emulator's workload");
  program.command("ps <vm>").description("the guest's processes, from its task list (needs a profile)").addOption(profileOption()).action(run(osCommands.ps));
  program.command("modules <vm>").description("the guest kernel's loaded modules (needs a profile)").addOption(profileOption()).action(run(osCommands.modules));
  program.command("sym <name-or-address>").description("symbol → address, or address → symbol+offset, from a profile").addOption(profileOption()).action(run(osCommands.sym));
  program
    .command("dump <vm>")
    .description("write guest physical memory to a sparse file")
    .requiredOption("--out <file>", "output file (byte offset = gpa - start)")
    .option("--start <gpa>", "first guest physical address (multiple of 4096)")
    .option("--length <bytes>", "bytes to dump (multiple of 4096; default: all memory), e.g. 64M")
    .option("--chunk-size <bytes>", "bytes per streamed chunk (4k..2M)")
    .action(run(commands.dump));
  program
    .command("write <vm> <gpa> <hex>")
    .description("write bytes to guest physical memory (attaches as controller)")
    .option("--yes", "really write guest memory")
    .option("--hold", "keep the controller session until Ctrl-C, then let the bridge undo the write")
    .action(run(commands.write));
  program.command("translate <vm> <vcpu> <gva>").description("translate a guest virtual address with a vCPU's paging").action(run(commands.translate));
  const events = program.command("events").description("watch vCPU events");
  events
    .command("watch <vm>")
    .description("print events as JSON lines (as observer unless --controller) and the unhook notice")
    .option("--type <list>", "event types, e.g. cr,breakpoint,pf,msr,hypercall,singlestep")
    .option("--vcpu <n>", "only this vCPU")
    .option("--controller", "attach as controller: enable --type on the vCPUs and answer CONTINUE")
    .option("--cr <list>", "control registers for --type cr with --controller (default 3)")
    .option("--msr <list>", "MSR indexes for --type msr with --controller")
    .option("--count <n>", "exit after n lines")
    .option("--duration <ms>", "exit after this many ms")
    .action(run(commands.eventsWatch));
  program
    .command("pause <vm> <vcpu>")
    .description("pause a vCPU and keep it stopped until Ctrl-C or --duration")
    .option("--duration <ms>", "resume after this many ms (at most 55000)")
    .action(run(commands.pause));
  program
    .command("page-access <vm> <gpa> <rwx>")
    .description("restrict the EPT access of a guest page (rwx, r-x, r--, none or 0..7)")
    .option("--hold", "keep the controller session until Ctrl-C, then let the bridge undo the restriction")
    .action(run(commands.pageAccess));
  return program;
}

/** One line describing an error for stderr. */
export function describeError(err: unknown): string {
  if (isKvmiBridgeError(err)) {
    const reason = err.reason !== undefined && err.reason !== err.codeName ? `, ${err.reason}` : "";
    return `kvmictl: ${err.message} (${err.codeName}${reason})`;
  }
  return `kvmictl: ${err instanceof Error ? err.message : String(err)}`;
}

/** Runs kvmictl with `argv` (without the node and script names); resolves with the exit code. */
export async function main(argv: readonly string[], io: CliIo): Promise<number> {
  let exitCode = EXIT_OK;
  const program = buildProgram(io, (code) => (exitCode = code));
  try {
    await program.parseAsync([...argv], { from: "user" });
    return exitCode;
  } catch (err) {
    if (err instanceof CommanderError) {
      // Help and version are not errors; everything else commander reports is a usage mistake.
      return err.exitCode === 0 ? EXIT_OK : EXIT_USAGE;
    }
    if (err instanceof UsageError) {
      io.stderr(`kvmictl: ${err.message}\n`);
      return EXIT_USAGE;
    }
    io.stderr(`${describeError(err)}\n`);
    return EXIT_BRIDGE_ERROR;
  }
}
