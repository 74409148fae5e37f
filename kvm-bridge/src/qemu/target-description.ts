// SPDX-License-Identifier: Apache-2.0
/**
 * The register file a gdbstub describes in `target.xml` (GDB's target description format): `<reg>`
 * elements in order, each `bitsize` wide, numbered from 0 or from an explicit `regnum`. The `g`
 * packet carries them in that order; QEMU's x86-64 description lists the general registers, rip,
 * eflags, the selectors, fs_base/gs_base/k_gs_base, cr0/cr2/cr3/cr4/cr8/efer, x87 and SSE state.
 * Reading the description instead of hard-coding QEMU 7.2's order keeps other versions working.
 */
import { KvmiProtocolError } from "../errors.js";

export interface GdbRegister {
  readonly name: string;
  readonly bitsize: number;
  readonly regnum: number;
}

const MAX_INCLUDES = 16;

/** Parses a description, fetching `<xi:include href>` parts through `include`. */
export async function parseTargetDescription(xml: string, include: (href: string) => Promise<string>): Promise<GdbRegister[]> {
  const registers: GdbRegister[] = [];
  let next = 0;
  let includes = 0;
  const walk = async (text: string): Promise<void> => {
    for (const match of text.replace(/<!--[\s\S]*?-->/g, "").matchAll(/<xi:include\s+href="([^"]+)"\s*\/>|<reg\s([^>]*?)\/?>/g)) {
      if (match[1] !== undefined) {
        if (++includes > MAX_INCLUDES) throw new KvmiProtocolError("target description includes nest too deep");
        await walk(await include(match[1]));
        continue;
      }
      const attributes = new Map<string, string>();
      for (const attribute of match[2]!.matchAll(/(\w+)="([^"]*)"/g)) attributes.set(attribute[1]!, attribute[2]!);
      const name = attributes.get("name");
      const bitsize = Number(attributes.get("bitsize"));
      if (!name || !Number.isInteger(bitsize) || bitsize <= 0) continue;
      const regnum = attributes.has("regnum") ? Number(attributes.get("regnum")) : next;
      next = regnum + 1;
      registers.push({ name, bitsize, regnum });
    }
  };
  await walk(xml);
  return registers;
}
