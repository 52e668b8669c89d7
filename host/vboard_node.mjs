#!/usr/bin/env node
// The Node side of the virtual board (`invtable sim board`, host/vboard.py).
//
// Runs the npm MicroPython 1.27 (WebAssembly) interpreter's REPL on this
// process's stdin/stdout, byte for byte, as a board's USB serial line. The
// Python side (host/vboard.py) bridges stdin/stdout to a pseudo-terminal.
//
// usage: node host/vboard_node.mjs --micropython PATH --mount SRC:DEST...
//            --config JSON [--heap BYTES] [--control FD] [--state-dir DIR]
//
// stdin must be a pipe opened with O_NONBLOCK (the Python side does that):
// input is read with non-blocking reads, both while the REPL idles (polled
// every few ms) and while Python code runs (the firmware's serial reads, and
// Ctrl-C, are served from inside the interpreter's calls into this file).
//
// What this adds to the plain REPL so that mpremote works:
// - raw-paste: the port's event-driven REPL lacks it; `\x05A\x01` is
//   answered `R\x00` ("understood, not supported") and mpremote falls back
//   to the plain raw REPL.
// - soft reset: Ctrl-D on an empty line prints "MPY: soft reboot", forgets
//   every module and global loaded since start-up, re-wires the simulated
//   hardware, runs /boot.py (and /main.py in the friendly REPL), as a board.
//   machine.reset() / an expired machine.WDT do the same as a hard reset,
//   which returns to the friendly REPL and so runs /main.py.
// - Ctrl-C while code runs: with the interrupt character enabled it is taken
//   out of the input and raises KeyboardInterrupt at the interpreter's next
//   sleep, serial read or simulated-hardware access.
// - stdin for the running code (sys.stdin), non-blocking.
// - physical inputs: lines ("go", "stop_down", "imu_stuck", "power_loss",
//   "status", ...) on the --control FD (a non-blocking pipe) are queued for
//   the simulated table; hal_sim/vboard_main.py takes them at every control
//   tick of the running firmware (take_inputs), and this runner hands them
//   over itself while the REPL idles.
// - --state-dir DIR: the board's flash (its filesystem) is loaded from DIR
//   before the first boot and every completed change is written back at
//   once (a file when it is closed, a rename, a removal; mpy_fs.mjs
//   FlashMirror), so DIR keeps what was written whatever ends this process
//   afterwards; at a clean exit (end of stdin, SIGTERM while the REPL idles)
//   DIR is made equal to the flash once more.
//
// On stderr: "vboard: ready" once the interpreter is up, then diagnostics;
// "vboard: note: TEXT" lines answer the physical inputs.

import fs from "node:fs";
import path from "node:path";
import { pathToFileURL } from "node:url";

import { copyTree, FlashMirror, loadFlash } from "./mpy_fs.mjs";

const CTRL_A = 0x01;
const CTRL_B = 0x02;
const CTRL_C = 0x03;
const CTRL_D = 0x04;
const CTRL_E = 0x05;
const SOFT_RESET = 5; // machine.reset_cause() values (ESP32 port)
const PWRON_RESET = 1;
const STAGE_DIR = "/tmp/_vboard";

function die(message) {
  process.stderr.write(`vboard: ${message}\n`);
  process.exit(2);
}

function parseArgs(argv) {
  const opts = {
    mounts: [],
    heap: 8 * 1024 * 1024,
    mjs: null,
    config: null,
    control: -1,
    stateDir: null,
  };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const value = () => {
      if (i + 1 >= argv.length) die(`${a} needs a value`);
      return argv[++i];
    };
    if (a === "--mount") {
      const spec = value();
      const sep = spec.lastIndexOf(":");
      if (sep <= 0) die(`--mount wants SRC:/DEST, got ${JSON.stringify(spec)}`);
      opts.mounts.push([spec.slice(0, sep), spec.slice(sep + 1)]);
    } else if (a === "--heap") {
      opts.heap = parseInt(value(), 10);
    } else if (a === "--micropython") {
      opts.mjs = value();
    } else if (a === "--config") {
      opts.config = value();
    } else if (a === "--control") {
      opts.control = parseInt(value(), 10);
    } else if (a === "--state-dir") {
      opts.stateDir = value();
    } else {
      die(`unknown argument ${a}`);
    }
  }
  if (!opts.mjs) die("--micropython is required");
  if (!opts.config) die("--config is required");
  return opts;
}

// --- input: one queue shared by the REPL and the running code -----------------

const input = {
  buf: Buffer.alloc(0),
  pos: 0,
  eof: false,
  executing: false, // Python code is running (inside a REPL char or a boot)
  kbdChar: CTRL_C,
  interrupt: false,
  resetCause: 0, // set by machine.reset() / the watchdog in the running code
};
const readChunk = Buffer.alloc(65536);

// The control channel: physical inputs, one per line.
const control = { fd: -1, partial: "", lines: [] };

function pumpControl() {
  if (control.fd < 0) return;
  for (;;) {
    let n;
    try {
      n = fs.readSync(control.fd, readChunk, 0, readChunk.length, null);
    } catch (e) {
      if (e.code === "EAGAIN" || e.code === "EWOULDBLOCK") return;
      if (e.code !== "EOF") throw e;
      n = 0;
    }
    if (n === 0) {
      control.fd = -1; // closed: no more inputs, the board runs on
      return;
    }
    const parts = (control.partial + readChunk.toString("latin1", 0, n)).split("\n");
    control.partial = parts.pop();
    for (const line of parts) if (line.trim()) control.lines.push(line.trim());
  }
}

function pump() {
  pumpControl();
  for (;;) {
    let n;
    try {
      n = fs.readSync(0, readChunk, 0, readChunk.length, null);
    } catch (e) {
      if (e.code === "EAGAIN" || e.code === "EWOULDBLOCK") return;
      if (e.code === "EOF") n = 0;
      else throw e;
    }
    if (n === 0) {
      input.eof = true;
      return;
    }
    let chunk = readChunk.subarray(0, n);
    if (input.executing && input.kbdChar >= 0 && chunk.includes(input.kbdChar)) {
      // As the UART interrupt would: the character is consumed and raises.
      chunk = Buffer.from(chunk.filter((b) => b !== input.kbdChar));
      input.interrupt = true;
    }
    const rest = input.buf.subarray(input.pos);
    input.buf = Buffer.concat([rest, chunk]);
    input.pos = 0;
  }
}

function available() {
  return input.buf.length - input.pos;
}

function takeByte() {
  return input.buf[input.pos++];
}

// --- output ------------------------------------------------------------------------

let outBytes = [];
let dropOutput = false;

// The flash's copy on the host (--state-dir), once loaded.
let flashMirror = null;

// A clean end: the output out, the flash saved.
function shutdown(code) {
  flush();
  if (flashMirror !== null) flashMirror.syncAll();
  process.exit(code);
}

function flush() {
  if (!outBytes.length) return;
  const data = Buffer.from(outBytes);
  outBytes = [];
  let off = 0;
  while (off < data.length) {
    try {
      off += fs.writeSync(1, data, off, data.length - off);
    } catch (e) {
      if (e.code === "EAGAIN") continue;
      if (e.code === "EPIPE") {
        outBytes = [];
        shutdown(0);
      }
      throw e;
    }
  }
}

function put(bytes) {
  if (dropOutput) return;
  for (const c of bytes) {
    outBytes.push(c);
    if (c === 10 || outBytes.length >= 4096) flush();
  }
}

function putText(text) {
  put(Buffer.from(text, "latin1"));
}

// --- the JS module the MicroPython side calls ------------------------------------

const sleepCell = new Int32Array(new SharedArrayBuffer(4));

function checkEof() {
  if (input.eof) shutdown(0);
}

const host = {
  sleep_ms(ms) {
    flush();
    // Sleep in slices so Ctrl-C is noticed within ~10 ms.
    let left = ms;
    while (left > 0) {
      const slice = left < 10 ? left : 10;
      Atomics.wait(sleepCell, 0, 0, slice);
      left -= slice;
      pump();
      checkEof();
      if (input.interrupt) break;
    }
    return 0;
  },
  take_interrupt() {
    pump();
    checkEof();
    if (input.interrupt) {
      input.interrupt = false;
      return true;
    }
    return false;
  },
  set_kbd_intr(c) {
    input.kbdChar = c;
    return 0;
  },
  request_reset(cause) {
    input.resetCause = cause;
    return 0;
  },
  in_waiting() {
    pump();
    return input.interrupt ? 0 : available();
  },
  // The physical inputs that arrived, newline-separated ("" = none).
  take_inputs() {
    pumpControl();
    if (!control.lines.length) return "";
    const text = control.lines.join("\n");
    control.lines = [];
    return text;
  },
  note(text) {
    flush();
    process.stderr.write(`vboard: note: ${text}\n`);
    return 0;
  },
};

// sys.stdin of the running code: a byte, or null = nothing now (read returns 0).
// Nothing either while a Ctrl-C waits to be raised: on a board the exception
// comes first, so what followed it (mpremote's Ctrl-A) is left to the REPL.
function stdinChar() {
  flush();
  pump();
  checkEof();
  if (available() > 0 && !input.interrupt) return takeByte();
  return null;
}

// --- filesystem staging ------------------------------------------------------------

function removeTree(FS, dir) {
  let names;
  try {
    names = FS.readdir(dir);
  } catch {
    return;
  }
  for (const name of names) {
    if (name === "." || name === "..") continue;
    const p = path.posix.join(dir, name);
    if (FS.isDir(FS.stat(p).mode)) removeTree(FS, p);
    else FS.unlink(p);
  }
  FS.rmdir(dir);
}

// --- the REPL ------------------------------------------------------------------------

async function main() {
  const opts = parseArgs(process.argv.slice(2));
  control.fd = opts.control;
  const { loadMicroPython } = await import(pathToFileURL(path.resolve(opts.mjs)).href);
  const mp = await loadMicroPython({
    heapsize: opts.heap,
    linebuffer: false,
    stdin: stdinChar,
    stdout: put,
    stderr: put, // one serial line, as on the board
  });
  mp.registerJsModule("vboard_host", host);
  // What Emscripten made for itself (tmp, home, dev, proc): not the flash.
  const system = new Set(mp.FS.readdir("/").filter((n) => n !== "." && n !== ".."));
  if (opts.stateDir !== null) {
    try {
      fs.mkdirSync(opts.stateDir, { recursive: true });
      loadFlash(mp.FS, opts.stateDir, system);
    } catch (e) {
      die(`cannot load the flash from ${opts.stateDir}: ${e.message}`);
    }
    flashMirror = new FlashMirror(mp.FS, opts.stateDir, system);
    flashMirror.install();
    process.on("SIGTERM", () => shutdown(0)); // runs while the REPL idles
  }
  for (const [src, dest] of opts.mounts) {
    try {
      copyTree(mp.FS, src, dest);
    } catch (e) {
      die(e.message);
    }
  }

  const py = (code) => {
    try {
      return mp.runPython(code);
    } catch (e) {
      flush();
      process.stderr.write(`vboard: internal error: ${e && e.message ? e.message : e}\n`);
      process.exit(3);
    }
  };

  py(
    "__import__('sys').path.insert(0, " + JSON.stringify(STAGE_DIR) + ")\n" +
      "__import__('hal_sim.vboard_main').vboard_main.install(" +
      JSON.stringify(opts.config) + ")\n" +
      "__import__('sys').path.pop(0)\n",
  );
  removeTree(mp.FS, STAGE_DIR); // loaded; the board's filesystem stays clean
  py("__import__('_vboard').board.snapshot(globals())");
  process.stderr.write("vboard: ready\n");

  // REPL mode, mirrored from the bytes fed in (the C side keeps its own).
  let raw = false;
  let lineEmpty = true; // raw REPL: nothing typed since the last prompt
  let pasteStage = 0; // raw-paste request seen so far: 1 = \x05, 2 = \x05A

  // Run boot.py / main.py; a script that resets the board boots it again.
  const boot = async (cause) => {
    for (let n = 0; ; n++) {
      py(`__import__('_vboard').board.reset(${cause})`);
      if (cause !== SOFT_RESET) {
        // A chip reset loses what sat in the UART's receive buffer.
        pump();
        input.buf = Buffer.alloc(0);
        input.pos = 0;
      }
      if (cause !== SOFT_RESET && raw) {
        // A hard reset starts in the friendly REPL (which runs main.py).
        dropOutput = true;
        await mp.replProcessCharWithAsyncify(CTRL_B);
        dropOutput = false;
        raw = false;
      }
      input.executing = true;
      input.kbdChar = CTRL_C;
      input.resetCause = 0;
      py(`__import__('_vboard').board.boot(${raw ? "False" : "True"})`);
      const again = input.resetCause; // a script reset the board: boot it again
      input.resetCause = 0;
      input.executing = false;
      flush();
      if (!again) break;
      cause = again;
      putText(`\r\nvboard: reset (cause ${cause})\r\n`);
      // Let signals through between boot loops.
      await new Promise((resolve) => setTimeout(resolve, n < 10 ? 0 : 100));
    }
    lineEmpty = true;
    mp.replInit(); // prints the friendly banner or the raw REPL prompt
    flush();
  };

  await boot(PWRON_RESET);

  const reset = async (cause) => {
    input.resetCause = 0;
    py("__import__('_vboard').board.take_reset_cause()");
    putText(cause === SOFT_RESET ? "MPY: soft reboot\r\n" : `\r\nvboard: hard reset (cause ${cause})\r\n`);
    await boot(cause);
  };

  const feed = async (c) => {
    input.executing = true;
    input.kbdChar = CTRL_C;
    const ret = await mp.replProcessCharWithAsyncify(c);
    input.executing = false;
    flush();
    return ret;
  };

  let lastData = Date.now();
  for (;;) {
    pump();
    if (control.lines.length) {
      // Nothing runs: apply the inputs now (a power_loss resets the board).
      input.resetCause = 0;
      py("__import__('_vboard').poll_inputs()");
      if (input.resetCause) await reset(input.resetCause);
      continue;
    }
    if (available() === 0) {
      checkEof();
      const idleMs = Date.now() - lastData;
      await new Promise((resolve) => setTimeout(resolve, idleMs < 200 ? 1 : 10));
      continue;
    }
    lastData = Date.now();
    const c = takeByte();

    if (raw && lineEmpty) {
      // raw-paste request: \x05 A \x01 on an empty raw line
      if (pasteStage === 0 && c === CTRL_E) {
        pasteStage = 1;
        continue;
      }
      if (pasteStage === 1 && c === 0x41) {
        pasteStage = 2;
        continue;
      }
      if (pasteStage === 2 && c === CTRL_A) {
        pasteStage = 0;
        putText("R\x00");
        flush();
        continue;
      }
      if (pasteStage > 0) {
        // Not a raw-paste request after all: pass the held bytes on.
        const held = pasteStage === 1 ? [CTRL_E] : [CTRL_E, 0x41];
        pasteStage = 0;
        for (const h of held) {
          lineEmpty = false;
          await feed(h);
        }
      }
    }

    if (raw) {
      if (c === CTRL_B) raw = false;
      else if (c === CTRL_A || c === CTRL_C) lineEmpty = true;
      else if (c === CTRL_D) lineEmpty = true;
      else lineEmpty = false;
    } else if (c === CTRL_A) {
      raw = true;
      lineEmpty = true;
    }

    input.resetCause = 0;
    const ret = await feed(c);
    if (ret || input.resetCause) {
      // Ctrl-D on an empty line (the REPL returns non-zero), or the code
      // called machine.reset() / let the watchdog expire (this port's REPL
      // swallows the SystemExit those raise, so the code told us).
      await reset(input.resetCause || SOFT_RESET);
    }
  }
}

main();
