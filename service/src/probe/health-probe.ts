// SPDX-License-Identifier: Apache-2.0
/**
 * `kvmi-bridge health`: asks a bridge's standard gRPC health service (`grpc.health.v1.Health/Check`)
 * and exits 0 only for SERVING, so that Docker's HEALTHCHECK and Kubernetes exec probes can use the
 * image's own binary (Kubernetes' native `grpc:` probes cannot speak TLS). It loads only grpc-js and
 * encodes the two tiny health messages itself, to stay cheap when run every few seconds.
 *
 * @see https://github.com/grpc/grpc/blob/master/doc/health-checking.md
 * @see https://github.com/grpc/grpc/blob/master/src/proto/grpc/health/v1/health.proto
 */
import { readFileSync } from "node:fs";
import { parseArgs } from "node:util";
import { BinaryReader, BinaryWriter, WireType } from "@bufbuild/protobuf/wire";
import { Client, Metadata, credentials } from "@grpc/grpc-js";
import type { ChannelCredentials, ServiceError } from "@grpc/grpc-js";

/** `grpc.health.v1.HealthCheckResponse.ServingStatus`, by number. */
export const SERVING_STATUS = ["UNKNOWN", "SERVING", "NOT_SERVING", "SERVICE_UNKNOWN"] as const;

/** What to probe. */
export interface HealthProbeOptions {
  /** `HOST:PORT`, `[v6]:PORT` or `unix:PATH`. */
  readonly target: string;
  /** The service to ask about; `""` is the whole server. */
  readonly service: string;
  readonly timeoutMs: number;
  /** TLS when set: the CA that signed the server certificate, and a client pair for mTLS. */
  readonly tls?: {
    readonly caFile: string;
    readonly certFile?: string;
    readonly keyFile?: string;
    /** Name to check the server certificate against (default: the target's host). */
    readonly serverName?: string;
  };
}

/** The answer of {@link checkHealth}. */
export type HealthAnswer =
  | { readonly ok: true; readonly status: (typeof SERVING_STATUS)[number] | `UNRECOGNIZED(${number})` }
  | { readonly ok: false; readonly error: string };

export const HEALTH_HELP = `Usage: kvmi-bridge health [options]

Asks a bridge's gRPC health service and exits 0 when it reports SERVING, 1 otherwise (for Docker
HEALTHCHECK and Kubernetes exec probes).

Options:
  --target ADDRESS        HOST:PORT or unix:PATH (default: $KVMI_BRIDGE_GRPC_LISTEN with a wildcard
                          host replaced by loopback, else 127.0.0.1:50051)
  --service NAME          service to ask about (default "": the whole server)
  --timeout-ms N          deadline of the check (default 3000)
  --tls-ca FILE           use TLS, trusting this CA for the server certificate
  --tls-cert FILE         client certificate for mTLS (with --tls-key)
  --tls-key FILE          client private key for mTLS
  --tls-server-name NAME  name the server certificate must carry (default: the target host)
  -h, --help              print this help
`;

/**
 * Parses `kvmi-bridge health` arguments. The default target follows `KVMI_BRIDGE_GRPC_LISTEN` so
 * that a probe in the bridge's own container needs no flags.
 */
export function parseHealthArgs(
  argv: readonly string[],
  env: Readonly<Record<string, string | undefined>>,
): { readonly action: "run"; readonly options: HealthProbeOptions } | { readonly action: "help" } | { readonly action: "fail"; readonly error: string } {
  let values;
  try {
    values = parseArgs({
      args: [...argv],
      strict: true,
      allowPositionals: false,
      options: {
        target: { type: "string" },
        service: { type: "string" },
        "timeout-ms": { type: "string" },
        "tls-ca": { type: "string" },
        "tls-cert": { type: "string" },
        "tls-key": { type: "string" },
        "tls-server-name": { type: "string" },
        help: { type: "boolean", short: "h" },
      },
    }).values;
  } catch (error) {
    return { action: "fail", error: (error as Error).message };
  }
  if (values.help) return { action: "help" };
  const timeoutMs = values["timeout-ms"] === undefined ? 3_000 : Number(values["timeout-ms"]);
  if (!Number.isSafeInteger(timeoutMs) || timeoutMs < 1) return { action: "fail", error: `--timeout-ms must be a positive whole number, got "${values["timeout-ms"]}"` };
  if ((values["tls-cert"] === undefined) !== (values["tls-key"] === undefined)) return { action: "fail", error: "--tls-cert and --tls-key go together" };
  if (values["tls-ca"] === undefined && (values["tls-cert"] !== undefined || values["tls-server-name"] !== undefined)) {
    return { action: "fail", error: "--tls-cert, --tls-key and --tls-server-name need --tls-ca" };
  }
  const target = values.target ?? loopbackTarget(env.KVMI_BRIDGE_GRPC_LISTEN) ?? "127.0.0.1:50051";
  return {
    action: "run",
    options: {
      target,
      service: values.service ?? "",
      timeoutMs,
      ...(values["tls-ca"] !== undefined && {
        tls: {
          caFile: values["tls-ca"],
          ...(values["tls-cert"] !== undefined && { certFile: values["tls-cert"], keyFile: values["tls-key"] }),
          ...(values["tls-server-name"] !== undefined && { serverName: values["tls-server-name"] }),
        },
      }),
    },
  };
}

/** `0.0.0.0:50051` → `127.0.0.1:50051`, `[::]:50051` → `[::1]:50051`; other addresses as they are. */
function loopbackTarget(listen: string | undefined): string | undefined {
  const text = listen?.trim();
  if (!text) return undefined;
  if (text.startsWith("unix:")) return text;
  const v4 = /^(?:0\.0\.0\.0)?:(\d+)$/.exec(text);
  if (v4) return `127.0.0.1:${v4[1]}`;
  const v6 = /^\[(?:::|0:0:0:0:0:0:0:0)\]:(\d+)$/.exec(text);
  if (v6) return `[::1]:${v6[1]}`;
  return text;
}

function encodeRequest(service: string): Buffer {
  // HealthCheckRequest { string service = 1; }
  return Buffer.from(new BinaryWriter().tag(1, WireType.LengthDelimited).string(service).finish());
}

function decodeResponse(bytes: Buffer): number {
  // HealthCheckResponse { ServingStatus status = 1; }
  const reader = new BinaryReader(bytes);
  let status = 0;
  while (reader.pos < reader.len) {
    const [field, wireType] = reader.tag();
    if (field === 1 && wireType === WireType.Varint) status = reader.int32();
    else reader.skip(wireType);
  }
  return status;
}

function channelCredentials(options: HealthProbeOptions): ChannelCredentials {
  if (options.tls === undefined) return credentials.createInsecure();
  const { caFile, certFile, keyFile } = options.tls;
  return credentials.createSsl(
    readFileSync(caFile),
    keyFile === undefined ? null : readFileSync(keyFile),
    certFile === undefined ? null : readFileSync(certFile),
  );
}

/** One health check; never throws. */
export async function checkHealth(options: HealthProbeOptions): Promise<HealthAnswer> {
  let client: Client;
  try {
    const serverName = options.tls?.serverName;
    client = new Client(options.target, channelCredentials(options), serverName === undefined ? {} : { "grpc.ssl_target_name_override": serverName });
  } catch (error) {
    return { ok: false, error: (error as Error).message };
  }
  try {
    const status = await new Promise<number>((resolve, reject) => {
      client.makeUnaryRequest(
        "/grpc.health.v1.Health/Check",
        encodeRequest,
        decodeResponse,
        options.service,
        new Metadata(),
        { deadline: Date.now() + options.timeoutMs },
        (error: ServiceError | null, value?: number) => (error ? reject(error) : resolve(value ?? 0)),
      );
    });
    return { ok: true, status: SERVING_STATUS[status] ?? `UNRECOGNIZED(${status})` };
  } catch (error) {
    const e = error as ServiceError;
    return { ok: false, error: e.details ? `${e.details} (gRPC code ${e.code})` : e.message };
  } finally {
    client.close();
  }
}

/** `kvmi-bridge health`: prints the status; resolves with 0 for SERVING, 1 otherwise, 2 for bad arguments. */
export async function healthMain(
  argv: readonly string[],
  env: Readonly<Record<string, string | undefined>>,
  io: { stdout: (text: string) => void; stderr: (text: string) => void } = {
    stdout: (text) => void process.stdout.write(text),
    stderr: (text) => void process.stderr.write(text),
  },
): Promise<number> {
  const parsed = parseHealthArgs(argv, env);
  if (parsed.action === "help") {
    io.stdout(HEALTH_HELP);
    return 0;
  }
  if (parsed.action === "fail") {
    io.stderr(`kvmi-bridge health: ${parsed.error}\n`);
    return 2;
  }
  const answer = await checkHealth(parsed.options);
  if (answer.ok && answer.status === "SERVING") {
    io.stdout(`${parsed.options.target}: SERVING\n`);
    return 0;
  }
  io.stderr(`${parsed.options.target}: ${answer.ok ? answer.status : `unreachable: ${answer.error}`}\n`);
  return 1;
}
