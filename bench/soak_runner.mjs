#!/usr/bin/env node
// The soak's runner (bench/soak.py starts it): two MicroPython interpreters
// (the npm WebAssembly build, 32-bit like the ESP32), one per thread, so that
// the firmware's heap holds nothing of the simulated world.
//
//   main thread  the board: bench/soak_board.py with the firmware, its heap
//                given by --heap (the board's limit plus what the simulated
//                machine module and the glue hold, measured by the launcher)
//   worker       the world: bench/soak_world.py (table, rider, host)
//
// Each control tick: the world's inputs go to the board's `_js_step(...)`,
// its return value (drive, beeper, state) to the world's `_world_step(ret)`,
// which steps the table and returns the next inputs; the threads hand over
// through a SharedArrayBuffer (Atomics.wait/notify). Each `_js_step` call
// returns to JavaScript, which is when this build runs a requested collection
// (ports/webassembly/main.c).
//
// usage: node bench/soak_runner.mjs --micropython PATH --heap BYTES --ticks N
//          --board-script F [--board-copy SRC:DEST]... --world-script F
//          [--world-copy SRC:DEST]... [--progress-ticks N]
// stdout: the board's output, then SOAK_WORLD_JSON {...}; exit 0, 1 if a
// script raised, 2 on setup errors.

import fs from "node:fs";
import path from "node:path";
import { pathToFileURL } from "node:url";
import { Worker, isMainThread, parentPort, workerData } from "node:worker_threads";

import { copyTree, lineWriter } from "../host/mpy_fs.mjs";

const F_STATE = 0; // 0 idle, 1 step requested, 2 inputs ready, 3 finish
const F_RET = 1;
const F_IN = 2; // 9 inputs
const N_IN = 9;
const SPIN = 2000; // busy-wait iterations before sleeping on the hand-over

function die(message) {
  process.stderr.write(`soak_runner: ${message}\n`);
  process.exit(2);
}

async function load(mjs, heap, copies, out) {
  const { loadMicroPython } = await import(pathToFileURL(path.resolve(mjs)).href);
  const mp = await loadMicroPython({ heapsize: heap, linebuffer: false, stdout: out, stderr: out });
  for (const [src, dest] of copies) copyTree(mp.FS, src, dest, true);
  return mp;
}

function parseArgs(argv) {
  const o = { boardCopies: [], worldCopies: [], progress: 0, heap: 0, ticks: 0 };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const v = () => {
      if (i + 1 >= argv.length) die(`${a} needs a value`);
      return argv[++i];
    };
    const copy = () => {
      const spec = v();
      const sep = spec.lastIndexOf(":");
      if (sep <= 0) die(`bad copy ${spec}`);
      return [spec.slice(0, sep), spec.slice(sep + 1)];
    };
    if (a === "--micropython") o.mjs = v();
    else if (a === "--heap") o.heap = parseInt(v(), 10);
    else if (a === "--ticks") o.ticks = parseInt(v(), 10);
    else if (a === "--progress-ticks") o.progress = parseInt(v(), 10);
    else if (a === "--board-script") o.boardScript = v();
    else if (a === "--world-script") o.worldScript = v();
    else if (a === "--board-copy") o.boardCopies.push(copy());
    else if (a === "--world-copy") o.worldCopies.push(copy());
    else die(`unknown argument ${a}`);
  }
  if (!o.mjs || !o.boardScript || !o.worldScript || !(o.heap > 0) || !(o.ticks > 0)) {
    die("--micropython, --heap, --ticks, --board-script and --world-script are required");
  }
  return o;
}

async function world() {
  const { mjs, script, copies, shared } = workerData;
  const ch = new Int32Array(shared);
  const mp = await load(mjs, 8 * 1024 * 1024, copies, lineWriter(process.stderr).put);
  mp.runPython(fs.readFileSync(script, "utf8"));
  const step = mp.globals.get("_world_step");
  let tWorld = 0;
  let nWorld = 0;
  for (;;) {
    for (let spin = 0; spin < SPIN && Atomics.load(ch, F_STATE) === 2; spin++) {
      // a short busy wait: waking a sleeping thread costs ~0.1 ms a tick
    }
    let state = Atomics.load(ch, F_STATE);
    while (state !== 1 && state !== 3) {
      // Sleeps only while the value is still `state` (read once: reading it
      // again here could see the 1 just written and sleep through it).
      Atomics.wait(ch, F_STATE, state, 1000);
      state = Atomics.load(ch, F_STATE);
    }
    if (state === 3) break;
    const w0 = performance.now();
    const text = step(ch[F_RET]);
    tWorld += performance.now() - w0;
    nWorld += 1;
    const parts = text.split(",");
    for (let i = 0; i < N_IN; i++) ch[F_IN + i] = parseInt(parts[i], 10);
    Atomics.store(ch, F_STATE, 2);
    Atomics.notify(ch, F_STATE);
  }
  process.stderr.write(`soak: world step ${(tWorld * 1000 / nWorld).toFixed(1)} us a tick\n`);
  parentPort.postMessage(mp.globals.get("_world_end")());
}

async function board() {
  const o = parseArgs(process.argv.slice(2));
  const shared = new SharedArrayBuffer(4 * (F_IN + N_IN));
  const ch = new Int32Array(shared);
  const worker = new Worker(new URL(import.meta.url), {
    workerData: { mjs: o.mjs, script: o.worldScript, copies: o.worldCopies, shared },
  });
  let worldError = null;
  const worldDone = new Promise((resolve) => {
    worker.on("message", resolve);
    worker.on("error", (e) => {
      worldError = e;
      resolve(null);
    });
  });
  const mp = await load(o.mjs, o.heap, o.boardCopies, lineWriter(process.stdout).put);
  let status = 0;
  const ask = (ret) => {
    ch[F_RET] = ret;
    Atomics.store(ch, F_STATE, 1);
    Atomics.notify(ch, F_STATE);
    for (let spin = 0; spin < SPIN && Atomics.load(ch, F_STATE) === 1; spin++) {
      // see the world's loop
    }
    const since = performance.now();
    while (Atomics.load(ch, F_STATE) === 1) {
      if (worldError) throw worldError;
      if (performance.now() - since > 60000) throw new Error("the world did not answer in 60 s");
      Atomics.wait(ch, F_STATE, 1, 1000);
    }
  };
  try {
    await mp.runPythonAsync(fs.readFileSync(o.boardScript, "utf8"));
    const step = mp.globals.get("_js_step");
    const stopNow = mp.globals.get("_js_stop");
    const started = performance.now();
    ask(-1); // the first inputs, before any step
    let tStep = 0;
    let tAsk = 0;
    let done = 0;
    for (let n = 1; n <= o.ticks; n++) {
      done = n;
      const t0 = performance.now();
      const ret = step(ch[2], ch[3], ch[4], ch[5], ch[6], ch[7], ch[8], ch[9], ch[10]);
      const t1 = performance.now();
      ask(ret);
      tStep += t1 - t0;
      tAsk += performance.now() - t1;
      if (n % 1000 === 0 && stopNow()) break; // over the limit: the result is in
      if (o.progress && n % o.progress === 0) {
        const wall = (performance.now() - started) / 1000;
        process.stderr.write(
          `soak: ${(n / 50 / 3600).toFixed(2)} h simulated in ${wall.toFixed(0)} s ` +
            `(${(n / wall).toFixed(0)} ticks/s)\n`,
        );
      }
    }
    process.stderr.write(`soak: board ${(tStep * 1000 / done).toFixed(1)} us a tick, ` +
      `world and hand-over ${(tAsk * 1000 / done).toFixed(1)} us a tick\n`);
    mp.globals.get("_js_end")();
  } catch (e) {
    process.stderr.write((e && e.message ? e.message : String(e)) + "\n");
    status = e && e.name === "PythonError" ? 1 : 2;
  }
  Atomics.store(ch, F_STATE, 3);
  Atomics.notify(ch, F_STATE);
  const stats = await worldDone;
  if (stats) process.stdout.write("SOAK_WORLD_JSON " + stats + "\n");
  else {
    process.stderr.write(`soak_runner: the world failed: ${worldError}\n`);
    status = status || 1;
  }
  process.stdout.write("", () => process.exit(status));
}

if (isMainThread) board();
else world();
