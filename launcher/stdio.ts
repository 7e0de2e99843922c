/**
 * The CLI's standard output and error, without Node's streams where they are not needed. process.stdout
 * and process.stderr are made on first use, and making the first one loads Node's stream code (~4 ms of
 * every command). Once launcher/main.ts has called watchStdio, the CLI's writers (stdioWriter) write with
 * fs.writeSync while a stream was never made; once it is (by anyone: console.log, a prompt), or when a
 * write does not complete at once (a full non-blocking pipe: EAGAIN; an error: EPIPE, EBADF), that write's
 * rest and every later one go through the stream as before: in order, with its error handling.
 */
import { fstatSync, readlinkSync, writeSync } from 'node:fs';

type Name = 'stdout' | 'stderr';

const made = new Map<Name, NodeJS.WriteStream>();
let watching = false;

/**
 * Calls `onMade` with each of process.stdout / process.stderr when it is made (at once for one made
 * already), and lets stdioWriter write directly until then. Call once, before anything writes.
 */
export function watchStdio(onMade: (stream: NodeJS.WriteStream, name: Name) => void): void {
  for (const name of ['stdout', 'stderr'] as const) {
    const d = Object.getOwnPropertyDescriptor(process, name);
    const get = d?.get;
    if (!get || !d.configurable) {
      // not the lazy getter Node defines: take the stream as it is
      made.set(name, process[name]);
      onMade(process[name], name);
      continue;
    }
    Object.defineProperty(process, name, {
      configurable: true,
      enumerable: d.enumerable ?? true,
      get(): NodeJS.WriteStream {
        const stream = get.call(process) as NodeJS.WriteStream;
        if (!made.has(name)) {
          made.set(name, stream);
          onMade(stream, name);
        }
        return stream;
      },
    });
  }
  watching = true;
}

/** The streams made so far (launcher/main.ts waits for what they still hold before it exits). */
export function madeStreams(): NodeJS.WriteStream[] {
  return [...made.values()];
}

/** A writer for process.stdout or process.stderr (see the module's doc). */
export function stdioWriter(name: Name): (text: string) => void {
  const fd = name === 'stdout' ? 1 : 2;
  let direct = true;
  return (text) => {
    if (direct && watching && !made.has(name)) {
      const buf = Buffer.from(text);
      let off = 0;
      try {
        while (off < buf.length) {
          const n = writeSync(fd, buf, off);
          if (n <= 0) throw new Error('no progress');
          off += n;
        }
        return;
      } catch {
        // the stream takes it from here: its write reports EPIPE and the like as it always did
        direct = false;
        process[name].write(buf.subarray(off));
        return;
      }
    }
    direct = false;
    process[name].write(text);
  };
}

/**
 * True when fd 1 or 2 is certainly no terminal, told without making its stream (which loads Node's stream
 * code; node:tty's isatty loads node:net): a file, pipe or socket, or /dev/null. False when it may be one:
 * then ask the stream (`process.stdout.isTTY`).
 */
export function notATerminal(fd: 1 | 2): boolean {
  try {
    if (!fstatSync(fd).isCharacterDevice()) return true;
    return readlinkSync(`/proc/self/fd/${fd}`) === '/dev/null';
  } catch {
    return false;
  }
}

/**
 * commander's output settings that read the stream only when it may be a terminal; otherwise what
 * commander's own give for a stream that is not one (80 columns, colours only when the environment asks).
 */
export function helpOutput(): { getOutHelpWidth(): number; getErrHelpWidth(): number; getOutHasColors(): boolean; getErrHasColors(): boolean } {
  // commander formats to 80 columns when it gets no width (`helpWidth ?? 80`)
  const width = (name: Name, fd: 1 | 2): number => (notATerminal(fd) ? 80 : process[name].isTTY ? process[name].columns : 80);
  const colors = (name: Name, fd: 1 | 2): boolean => {
    const env = colorFromEnv();
    if (env !== undefined) return env;
    return notATerminal(fd) ? false : Boolean(process[name].isTTY && process[name].hasColors?.());
  };
  return {
    getOutHelpWidth: () => width('stdout', 1),
    getErrHelpWidth: () => width('stderr', 2),
    getOutHasColors: () => colors('stdout', 1),
    getErrHasColors: () => colors('stderr', 2),
  };
}

/** commander's useColor (lib/command.js, not exported): NO_COLOR, FORCE_COLOR, CLICOLOR_FORCE. */
export function colorFromEnv(): boolean | undefined {
  const env = process.env;
  if (env['NO_COLOR'] || env['FORCE_COLOR'] === '0' || env['FORCE_COLOR'] === 'false') return false;
  if (env['FORCE_COLOR'] || env['CLICOLOR_FORCE'] !== undefined) return true;
  return undefined;
}
