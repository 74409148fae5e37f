// SPDX-License-Identifier: Apache-2.0
// The RSP packet layer against packets written by hand from the GDB manual ("Overview" of the
// remote protocol): checksums, escaping, run-length encoding, acks, the interrupt byte, and
// packets split at every byte.
import { describe, expect, it } from "vitest";
import {
  checksum, encodePacket, escapeBinary, expandRunLength, fromHex, fromLittleEndian, littleEndian, MAX_PACKET_BYTES, RspReader,
  toHex, unescapeBinary,
} from "./rsp-packet.js";
import type { RspItem } from "./rsp-packet.js";

const bytes = (text: string) => Uint8Array.from(Buffer.from(text, "latin1"));
const text = (data: Uint8Array) => Buffer.from(data).toString("latin1");
const packets = (items: RspItem[]) => items.map((i) => (i.kind === "packet" ? text(i.payload) : i.kind));

describe("checksums and framing", () => {
  it("sums bytes modulo 256, as in the manual's examples", () => {
    // "$g#67" and "$?#3f" are what gdb sends (seen on the wire with `set debug remote 1`).
    expect(checksum(bytes("g"))).toBe(0x67);
    expect(checksum(bytes("?"))).toBe(0x3f);
    expect(checksum(bytes("vMustReplyEmpty"))).toBe(0x3a);
    expect(checksum(new Uint8Array(0))).toBe(0);
    expect(checksum(Uint8Array.of(0xff, 0x02))).toBe(0x01);
  });

  it("encodes a packet with two lowercase hex checksum digits", () => {
    expect(text(encodePacket("OK"))).toBe("$OK#9a");
    expect(text(encodePacket(""))).toBe("$#00");
    expect(text(encodePacket("T05thread:1;"))).toBe(`$T05thread:1;#${checksum(bytes("T05thread:1;")).toString(16).padStart(2, "0")}`);
  });

  it("reads packets, acks, nacks and the interrupt byte from one stream", () => {
    const reader = new RspReader();
    expect(packets(reader.feed(bytes("+$qSupported:swbreak+#8b-\x03$g#67")))).toEqual(["ack", "qSupported:swbreak+", "nack", "interrupt", "g"]);
  });

  it("flags a bad checksum as corrupt and carries on with the next packet", () => {
    const reader = new RspReader();
    expect(packets(reader.feed(bytes("$g#68$g#67$m0,1#zz")))).toEqual(["corrupt", "g", "corrupt"]);
  });

  it("yields the same packets whatever the chunking (split at every offset)", () => {
    const stream = bytes("$qSupported:multiprocess+;swbreak+#1b+$?#3f\x03$M1000,2:cc90#d5$g#00");
    const whole = packets(new RspReader().feed(stream));
    expect(whole).toEqual(["qSupported:multiprocess+;swbreak+", "ack", "?", "interrupt", "M1000,2:cc90", "corrupt"]);
    for (let split = 0; split <= stream.length; split++) {
      const reader = new RspReader();
      expect([...packets(reader.feed(stream.subarray(0, split))), ...packets(reader.feed(stream.subarray(split)))]).toEqual(whole);
    }
  });

  it("skips line noise between packets and drops an oversized packet without buffering it", () => {
    const reader = new RspReader();
    expect(packets(reader.feed(bytes("noise$g#67")))).toEqual(["g"]);
    const big = `$${"a".repeat(MAX_PACKET_BYTES + 10)}#00`;
    expect(packets(reader.feed(bytes(big)))).toEqual(["corrupt"]);
    expect(packets(reader.feed(bytes("$?#3f")))).toEqual(["?"]);
  });
});

describe("binary escaping", () => {
  it("escapes $ # } * as } and the byte XOR 0x20", () => {
    expect(toHex(escapeBinary(Uint8Array.of(0x24, 0x23, 0x7d, 0x2a, 0x41)))).toBe("7d047d037d5d7d0a41");
    expect(escapeBinary(bytes("plain"))).toEqual(bytes("plain"));
  });

  it("round-trips every byte value", () => {
    const all = Uint8Array.from({ length: 256 }, (_, i) => i);
    expect(unescapeBinary(escapeBinary(all))).toEqual(all);
  });

  it("rejects a trailing escape byte", () => {
    expect(() => unescapeBinary(Uint8Array.of(0x41, 0x7d))).toThrow(RangeError);
  });

  it("reads an X packet whose data holds escaped bytes", () => {
    // X1000,2:  then 0x23 escaped (7d 03) and 0xcc.
    const payload = Uint8Array.of(...bytes("X1000,2:"), 0x7d, 0x03, 0xcc);
    const wire = Uint8Array.of(0x24, ...payload, 0x23, ...bytes(checksum(payload).toString(16).padStart(2, "0")));
    const [item] = new RspReader().feed(wire);
    expect(item?.kind).toBe("packet");
    const data = (item as { payload: Uint8Array }).payload.subarray(8);
    expect(unescapeBinary(data)).toEqual(Uint8Array.of(0x23, 0xcc));
  });
});

describe("run-length encoding", () => {
  it("expands c*n to n - 29 more copies of c (the manual's \"0* \" = \"0000\")", () => {
    expect(text(expandRunLength(bytes("0* ")))).toBe("0000");
    expect(text(expandRunLength(bytes("ab*\"c")))).toBe("abbbbbbc");
  });

  it("applies to whole received packets", () => {
    const payload = bytes("0* ");
    const wire = bytes(`$0* #${checksum(payload).toString(16).padStart(2, "0")}`);
    expect(packets(new RspReader().feed(wire))).toEqual(["0000"]);
  });

  it("rejects a run without a character before it or with a count the manual forbids", () => {
    expect(() => expandRunLength(bytes("*#"))).toThrow(RangeError);
    expect(() => expandRunLength(bytes("a*\x10"))).toThrow(RangeError);
  });
});

describe("hex and byte order", () => {
  it("converts hex and little-endian register values", () => {
    expect(toHex(fromHex("00ff10"))).toBe("00ff10");
    expect(() => fromHex("abc")).toThrow(RangeError);
    expect(() => fromHex("zz")).toThrow(RangeError);
    expect(toHex(littleEndian(0xffffffff80001000n, 8))).toBe("00100080ffffffff");
    expect(fromLittleEndian(fromHex("00100080ffffffff"))).toBe(0xffffffff80001000n);
  });
});
