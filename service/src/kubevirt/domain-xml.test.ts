// SPDX-License-Identifier: Apache-2.0
// The domain XML rewrite on real-shaped documents (virt-launcher's Go-marshalled XML with and
// without a qemu:commandline, virsh dumpxml output, another prefix bound to the QEMU namespace):
// what is added, that every other byte stays, idempotence, updates, and malformed input.
import { readFileSync } from "node:fs";
import { describe, expect, it } from "vitest";
import { DomainXmlError, QEMU_NAMESPACE_URI, escapeQemuOptValue, injectQemuArgs, qemuOptId } from "./domain-xml.js";
import type { QemuArgPair } from "./domain-xml.js";
import { INTROSPECTION_OWNED_ARGS, introspectionQemuArgs } from "./introspection-args.js";

const fixture = (name: string): string => readFileSync(new URL(`./testdata/${name}`, import.meta.url), "utf8");

const DIR = "/var/run/kubevirt-hooks/hook-sidecar-0/kvmi";
const ARGS = introspectionQemuArgs({
  socketPath: `${DIR}/kvmi.sock`,
  secretFile: `${DIR}/cookie`,
  reconnectSeconds: 1,
  commands: [1, 6, 11],
  events: [0, 2],
  handshakeTimeoutSeconds: 10,
  unhookTimeoutSeconds: 60,
  asyncUnhook: true,
});
const VALUES = ARGS.flatMap((p) => [p.option, p.value]);
const OPTIONS = { singletonObjectTypes: ["introspection"], owned: INTROSPECTION_OWNED_ARGS };
const rewrite = (xml: string, args: readonly QemuArgPair[] = ARGS): string => injectQemuArgs(xml, args, OPTIONS);

/** The `value` attributes of `<P:arg>` elements, in document order, read with a regex (not our scanner). */
function argValues(xml: string, prefix = "qemu"): string[] {
  const decode = (s: string): string =>
    s.replaceAll("&quot;", '"').replaceAll("&apos;", "'").replaceAll("&lt;", "<").replaceAll("&gt;", ">").replaceAll("&amp;", "&");
  return [...xml.matchAll(new RegExp(`<${prefix}:arg value=(["'])(.*?)\\1`, "g"))].map((m) => decode(m[2]!));
}

/** Asserts that `output` is `input` with exactly `snippets` inserted (in this order), nothing else changed. */
function expectOnlyInsertions(input: string, output: string, snippets: readonly string[]): void {
  let rest = output;
  let cursor = 0;
  for (const snippet of snippets) {
    const at = rest.indexOf(snippet, cursor);
    expect(at, `snippet not found in order:\n${snippet}`).toBeGreaterThanOrEqual(0);
    rest = rest.slice(0, at) + rest.slice(at + snippet.length);
    cursor = at;
  }
  expect(rest).toBe(input);
}

describe("virt-launcher domain XML (Go encoding/xml, tabs, xmlns:qemu declared)", () => {
  const input = fixture("kubevirt-domain.xml");

  it("appends one qemu:commandline as the last child of <domain>, in the document's style", () => {
    const output = rewrite(input);
    const block = [
      "\n\t<qemu:commandline>",
      ...VALUES.map((v) => `\n\t\t<qemu:arg value="${v}"></qemu:arg>`),
      "\n\t</qemu:commandline>",
    ].join("");
    expectOnlyInsertions(input, output, [block]);
    expect(output.endsWith(`<iothreads>1</iothreads>${block}\n</domain>\n`)).toBe(true);
    expect(argValues(output)).toEqual(VALUES);
  });

  it("is idempotent: a second run returns the same bytes", () => {
    const once = rewrite(input);
    expect(rewrite(once)).toBe(once);
  });

  it("replaces its own arguments when the configuration changed, and only those", () => {
    const other = introspectionQemuArgs({ socketPath: "/var/run/kubevirt-hooks/hook-sidecar-3/kvmi/kvmi.sock", reconnectSeconds: 5 });
    const updated = rewrite(rewrite(input), other);
    expect(updated).toBe(rewrite(input, other));
    expect(argValues(updated)).toEqual(other.flatMap((p) => [p.option, p.value]));
  });
});

describe("virt-launcher domain XML with an existing qemu:commandline", () => {
  const input = fixture("kubevirt-domain-commandline.xml");

  it("appends after the existing qemu:arg and qemu:env children and keeps them", () => {
    const output = rewrite(input);
    const added = VALUES.map((v) => `\n\t\t<qemu:arg value="${v}"></qemu:arg>`).join("");
    expectOnlyInsertions(input, output, [added]);
    expect(output).toContain(`<qemu:env name="KVMI_EXAMPLE_ENV" value="a&amp;b"></qemu:env>${added}\n\t</qemu:commandline>`);
    expect(argValues(output)).toEqual(["-set", "device.ua-default.host_mtu=1480", ...VALUES]);
    expect(output.match(/<qemu:commandline>/g)).toHaveLength(1);
    expect(output.match(/xmlns:qemu=/g)).toHaveLength(1);
  });

  it("is idempotent and updates in place", () => {
    const once = rewrite(input);
    expect(rewrite(once)).toBe(once);
    const fewer = introspectionQemuArgs({ socketPath: `${DIR}/kvmi.sock`, reconnectSeconds: 2 });
    expect(rewrite(once, fewer)).toBe(rewrite(input, fewer));
  });
});

describe("virsh dumpxml output (declaration, comment, single quotes, no qemu namespace)", () => {
  const input = fixture("libvirt-dumpxml.xml");

  it("declares xmlns:qemu on <domain> with its quote style and adds the commandline before </domain>", () => {
    const output = rewrite(input);
    const declaration = ` xmlns:qemu='${QEMU_NAMESPACE_URI}'`;
    const block = ["\n  <qemu:commandline>", ...VALUES.map((v) => `\n    <qemu:arg value='${v}'/>`), "\n  </qemu:commandline>"].join("");
    expectOnlyInsertions(input, output, [declaration, block]);
    expect(output).toContain(`<domain type='kvm' id='3'${declaration}>`);
    expect(output.endsWith(`</seclabel>${block}\n</domain>\n`)).toBe(true);
  });

  it("leaves markup inside comments and CDATA alone", () => {
    const output = rewrite(input);
    expect(output).toContain("A test note: </domain> and <qemu:commandline> inside a comment are not markup.");
    expect(output).toContain("<![CDATA[</domain><qemu:commandline>]]>");
    expect(output.match(/<qemu:commandline>/g)).toHaveLength(3); // the comment, the CDATA, ours
  });

  it("is idempotent", () => {
    const once = rewrite(input);
    expect(rewrite(once)).toBe(once);
  });
});

describe("the QEMU namespace under another prefix", () => {
  const input = fixture("prefixed-namespace.xml");

  it("uses the bound prefix and the existing q:commandline, declaring nothing", () => {
    const output = rewrite(input);
    const added = VALUES.map((v) => `\n        <q:arg value="${v}"/>`).join("");
    expectOnlyInsertions(input, output, [added]);
    expect(argValues(output, "q")).toEqual(["-trace", "events=/etc/qemu-trace-events", ...VALUES]);
    expect(output).not.toContain("xmlns:qemu");
    expect(rewrite(output)).toBe(output);
  });

  it("picks a free prefix when qemu: is bound to something else", () => {
    const input2 = '<domain type="kvm" xmlns:qemu="urn:other"><name>x</name></domain>';
    const output = rewrite(input2);
    expect(output).toContain(`xmlns:qemu1="${QEMU_NAMESPACE_URI}"`);
    expect(argValues(output, "qemu1")).toEqual(VALUES);
    expect(rewrite(output)).toBe(output);
  });
});

describe("shapes", () => {
  it("expands a self-closing <qemu:commandline/>", () => {
    const input = `<domain type="kvm" xmlns:qemu="${QEMU_NAMESPACE_URI}">\n  <name>x</name>\n  <qemu:commandline />\n</domain>\n`;
    const output = rewrite(input);
    expect(output).toBe(
      `<domain type="kvm" xmlns:qemu="${QEMU_NAMESPACE_URI}">\n  <name>x</name>\n  <qemu:commandline>` +
        VALUES.map((v) => `\n    <qemu:arg value="${v}"/>`).join("") +
        "\n  </qemu:commandline>\n</domain>\n",
    );
    expect(rewrite(output)).toBe(output);
  });

  it("keeps CRLF line endings", () => {
    const input = '<domain type="kvm">\r\n  <name>x</name>\r\n</domain>\r\n';
    const output = rewrite(input);
    expect(output.replaceAll("\r\n", "")).not.toContain("\n");
    expect(output.split("\r\n")).toContain("  <qemu:commandline>");
  });

  it("adds no whitespace to a document on one line", () => {
    const input = "<domain type='kvm'><name>x</name><devices/></domain>";
    const output = rewrite(input);
    expect(output).toBe(
      `<domain type='kvm' xmlns:qemu='${QEMU_NAMESPACE_URI}'><name>x</name><devices/><qemu:commandline>` +
        VALUES.map((v) => `<qemu:arg value='${v}'/>`).join("") +
        "</qemu:commandline></domain>",
    );
  });

  it("handles a <domain> without children", () => {
    const output = rewrite('<domain type="kvm"></domain>');
    expect(argValues(output)).toEqual(VALUES);
    expect(output.startsWith(`<domain type="kvm" xmlns:qemu="${QEMU_NAMESPACE_URI}"><qemu:commandline>`)).toBe(true);
  });

  it("escapes values for XML and for QEMU's option syntax", () => {
    const args = introspectionQemuArgs({ socketPath: `/run/a,b&"c'/<x>.sock`, reconnectSeconds: 1 });
    expect(args[0]!.value).toBe(`socket,id=kvmi-bridge-chardev,path=/run/a,,b&"c'/<x>.sock,reconnect=1`);
    const double = rewrite('<domain type="kvm"><name>x</name></domain>', args);
    expect(double).toContain('path=/run/a,,b&amp;&quot;c\'/&lt;x&gt;.sock');
    expect(argValues(double)).toEqual(args.flatMap((p) => [p.option, p.value]));
    const single = rewrite("<domain type='kvm'><name>x</name></domain>", args);
    expect(single).toContain("path=/run/a,,b&amp;\"c&apos;/&lt;x&gt;.sock");
    expect(rewrite(double, args)).toBe(double);
  });
});

describe("conflicts and malformed documents", () => {
  it("refuses a second introspection object under another id", () => {
    for (const value of ["introspection,id=vmi,chardev=c0", "qom-type=introspection,id=vmi,chardev=c0"]) {
      const input = `<domain type="kvm" xmlns:qemu="${QEMU_NAMESPACE_URI}"><qemu:commandline><qemu:arg value="-object"/><qemu:arg value="${value}"/></qemu:commandline></domain>`;
      const error = (() => {
        try {
          rewrite(input);
        } catch (e) {
          return e;
        }
        return undefined;
      })();
      expect(error).toBeInstanceOf(DomainXmlError);
      expect(error).toMatchObject({ code: "KVMI_DOMAIN_XML_CONFLICT", message: expect.stringContaining("id=vmi") });
    }
  });

  it("lets other objects and chardevs be", () => {
    const input = `<domain type="kvm" xmlns:qemu="${QEMU_NAMESPACE_URI}"><qemu:commandline><qemu:arg value="-object"/><qemu:arg value="secret,id=other,file=/x"/><qemu:arg value="-chardev"/><qemu:arg value="socket,id=c0,path=/y"/></qemu:commandline></domain>`;
    expect(argValues(rewrite(input))).toEqual(["-object", "secret,id=other,file=/x", "-chardev", "socket,id=c0,path=/y", ...VALUES]);
  });

  it.each([
    ["an empty string", ""],
    ["text only", "hello"],
    ["an unclosed root", '<domain type="kvm"><name>x</name>'],
    ["a mismatched end tag", '<domain type="kvm"><name>x</nam></domain>'],
    ["another root element", "<network><name>x</name></network>"],
    ["a prefixed root", "<x:domain xmlns:x='urn:x'/>"],
    ["two roots", '<domain type="kvm"></domain><domain type="kvm"></domain>'],
    ["an unquoted attribute", "<domain type=kvm></domain>"],
    ["a bare ampersand", '<domain type="a&b"></domain>'],
    ["an unknown entity", '<domain type="&nbsp;"></domain>'],
    ["a repeated attribute", '<domain type="kvm" type="qemu"></domain>'],
    ["an unterminated comment", '<domain type="kvm"><!-- </domain>'],
    ["an empty <domain/>", '<domain type="kvm"/>'],
  ])("rejects %s as malformed", (_what, input) => {
    expect(() => rewrite(input)).toThrow(DomainXmlError);
    try {
      rewrite(input);
    } catch (error) {
      expect((error as DomainXmlError).code).toBe("KVMI_DOMAIN_XML_MALFORMED");
      expect((error as DomainXmlError).message).toMatch(/^the domain XML is malformed: /);
    }
  });
});

describe("QEMU option helpers", () => {
  it("reads id= and escapes commas", () => {
    expect(qemuOptId("socket,id=c0,path=/x,reconnect=1")).toBe("c0");
    expect(qemuOptId("socket,path=/a,,id=no,id=yes")).toBe("yes");
    expect(qemuOptId("socket,path=/x")).toBeUndefined();
    expect(escapeQemuOptValue("/a,b,,c")).toBe("/a,,b,,,,c");
  });
});
