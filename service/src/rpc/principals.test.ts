// SPDX-License-Identifier: Apache-2.0
/**
 * Who a caller is for quotas and the controller binding (ownerOf): authenticated callers by their
 * identity wherever they connect from, anonymous ones by their host, so that one anonymous client
 * cannot use up the quota of every other (issue 15, quotas per identity).
 */
import { describe, expect, it } from "vitest";
import { ANONYMOUS_IDENTITY, LOCAL_IDENTITY } from "../auth/identity.js";
import type { Principal } from "../auth/identity.js";
import { QuotaExceededError } from "../mapping/bridge-error.js";
import { ownerOf, peerHost } from "./principals.js";
import { Quotas } from "./quotas.js";

const anonymousAt = (peer: string): Principal => ({ identity: ANONYMOUS_IDENTITY, peer });
const scanner = (peer: string): Principal => ({ identity: { name: "spiffe://example.org/scanner", source: "spiffe", groups: [] }, peer });

describe("ownerOf", () => {
  it("keys an authenticated caller by its identity alone, whichever host and connection it calls from", () => {
    expect(ownerOf(scanner("10.0.0.7:51234"))).toBe("spiffe:spiffe://example.org/scanner");
    expect(ownerOf(scanner("10.0.0.8:40000"))).toBe(ownerOf(scanner("10.0.0.7:51234")));
    expect(ownerOf({ identity: LOCAL_IDENTITY, peer: "127.0.0.1:5000" })).toBe(ownerOf({ identity: LOCAL_IDENTITY, peer: "unknown" }));
  });

  it("keys an anonymous caller by its host: its connections share one key, another host has its own", () => {
    expect(ownerOf(anonymousAt("10.0.0.7:51234"))).toBe("anonymous:anonymous@10.0.0.7");
    expect(ownerOf(anonymousAt("10.0.0.7:40000"))).toBe(ownerOf(anonymousAt("10.0.0.7:51234")));
    expect(ownerOf(anonymousAt("10.0.0.8:51234"))).not.toBe(ownerOf(anonymousAt("10.0.0.7:51234")));
    expect(ownerOf(anonymousAt("fd00::7:51234"))).toBe("anonymous:anonymous@fd00::7");
  });

  it("gives each anonymous host its own per-identity quota", () => {
    const quotas = new Quotas({
      maxSessionsPerIdentity: 2,
      maxSessions: 100,
      maxWatchersPerIdentity: 1,
      maxWatchers: 100,
      maxInflightPerIdentity: 1,
      maxInflight: 100,
      maxBulkBytesPerIdentity: 1,
      maxBulkBytes: 100,
    });
    const greedy = ownerOf(anonymousAt("10.0.0.7:51234"));
    quotas.acquire("sessions", greedy);
    quotas.acquire("sessions", ownerOf(anonymousAt("10.0.0.7:51235")));
    expect(() => quotas.acquire("sessions", ownerOf(anonymousAt("10.0.0.7:51236")))).toThrow(QuotaExceededError);
    expect(() => quotas.acquire("sessions", ownerOf(anonymousAt("10.0.0.8:51234")))).not.toThrow();
  });
});

describe("peerHost", () => {
  it("drops the port of IPv4 and IPv6 peers and keeps anything else whole", () => {
    expect(peerHost("10.0.0.7:51234")).toBe("10.0.0.7");
    expect(peerHost("::1:51234")).toBe("::1");
    expect(peerHost("unknown")).toBe("unknown");
    expect(peerHost("10.0.0.7")).toBe("10.0.0.7");
  });
});
