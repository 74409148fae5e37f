// SPDX-License-Identifier: Apache-2.0
// Listen-address parsing and the loopback test behind the TLS rule.
import { describe, expect, it } from "vitest";
import { formatGrpcListen, isLoopback, parseGrpcListen, parseHostPort, parseKvmiListen } from "./address.js";
import type { ListenAddress } from "./address.js";

const tcp = (host: string, port = 1): ListenAddress => ({ kind: "tcp", host, port });

describe("parseHostPort", () => {
  it("accepts IPv4, names and bracketed IPv6", () => {
    expect(parseHostPort("127.0.0.1:50051")).toEqual({ ok: true, value: tcp("127.0.0.1", 50051) });
    expect(parseHostPort("node-1.example.org:0")).toEqual({ ok: true, value: tcp("node-1.example.org", 0) });
    expect(parseHostPort("[::1]:9464")).toEqual({ ok: true, value: tcp("::1", 9464) });
  });

  it("explains what is wrong", () => {
    expect(parseHostPort("127.0.0.1")).toMatchObject({ ok: false, error: expect.stringMatching(/has no port/) });
    expect(parseHostPort(":50051")).toMatchObject({ error: expect.stringMatching(/0\.0\.0\.0:50051/) });
    expect(parseHostPort("[::1:5")).toMatchObject({ error: expect.stringMatching(/\[IPV6\]:PORT/) });
    expect(parseHostPort("[zz]:5")).toMatchObject({ error: expect.stringMatching(/not an IPv6 address/) });
    expect(parseHostPort("bad_host:5")).toMatchObject({ error: expect.stringMatching(/neither an IPv4 address nor a host name/) });
    expect(parseHostPort("h:65536")).toMatchObject({ error: expect.stringMatching(/out of range/) });
    expect(parseHostPort("h:http")).toMatchObject({ error: expect.stringMatching(/not a number/) });
  });
});

describe("unix and kvmi addresses", () => {
  it("normalises unix paths to absolute, accepting the unix:/// form", () => {
    expect(parseGrpcListen("unix:///run/x.sock", "/cwd")).toEqual({ ok: true, value: { kind: "unix", path: "/run/x.sock" } });
    expect(parseGrpcListen("unix:rel/x.sock", "/cwd")).toEqual({ ok: true, value: { kind: "unix", path: "/cwd/rel/x.sock" } });
    expect(parseKvmiListen("tcp:[::1]:7", "/")).toEqual({ ok: true, value: tcp("::1", 7) });
    expect(formatGrpcListen(tcp("::1", 7))).toBe("[::1]:7");
  });
});

describe("isLoopback", () => {
  it.each([
    ["127.0.0.1", true],
    ["127.255.0.9", true],
    ["::1", true],
    ["::ffff:127.0.0.1", true],
    ["localhost", true],
    ["LOCALHOST", true],
    ["0.0.0.0", false],
    ["::", false],
    ["10.0.0.1", false],
    ["128.0.0.1", false],
    ["::ffff:10.0.0.1", false],
    ["my-node", false],
  ])("%s → %s", (host, expected) => {
    expect(isLoopback(tcp(host))).toBe(expected);
  });

  it("counts unix sockets as local", () => {
    expect(isLoopback({ kind: "unix", path: "/run/x.sock" })).toBe(true);
  });
});
