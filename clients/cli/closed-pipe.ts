// SPDX-License-Identifier: Apache-2.0
/**
 * A closed stdout is the reader saying "enough" (`kvmictl events watch … | head -2`), not an
 * error. Node ignores SIGPIPE, so a write to a pipe whose reader has exited fails with EPIPE on the
 * stream; unhandled, that is a stack trace and a session left for the bridge to time out. Guarded,
 * further output is dropped, `onClosed` fires once (callers abort, so long-running commands end
 * their loops and release their sessions) and the process ends with status 0, as `cat` does.
 */

/** The part of a stream the guard needs (process.stdout / process.stderr). */
export interface GuardedStream {
  write(text: string): unknown;
  on(event: "error", listener: (err: NodeJS.ErrnoException) => void): unknown;
}

/** A stream whose reader may go away. */
export interface PipeGuard {
  /** Writes `text` unless the reader is gone. */
  write(text: string): void;
  /** True once the reader has closed the pipe. */
  readonly closed: boolean;
}

/** Codes of a write to a reader that has gone: EPIPE for pipes, ECONNRESET/ERR_STREAM_DESTROYED for sockets and destroyed streams. */
const READER_GONE = new Set(["EPIPE", "ECONNRESET", "ERR_STREAM_DESTROYED"]);

/**
 * Guards `stream`: EPIPE (and the like) mark it closed and call `onClosed` once; any other error
 * is rethrown, as it would have been without the guard.
 */
export function guardPipe(stream: GuardedStream, onClosed: () => void): PipeGuard {
  let closed = false;
  stream.on("error", (err) => {
    if (!READER_GONE.has(err.code ?? "")) throw err;
    if (closed) return;
    closed = true;
    onClosed();
  });
  return {
    write(text) {
      if (!closed) stream.write(text);
    },
    get closed() {
      return closed;
    },
  };
}
