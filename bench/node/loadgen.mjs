// Load generator worker for the benchmarks. Driven by its parent with
// line-delimited JSON on stdin; exactly one JSON reply line per request on
// stdout (diagnostics go to stderr only). See README.md for the protocol.
import { io } from "socket.io-client";
import { serve } from "./driver.mjs";
import { Histogram } from "./histogram.mjs";

const ORIGIN = performance.timeOrigin;
const now = () => ORIGIN + performance.now(); // epoch ms, sub-ms resolution
const DEFAULT_TIMEOUT_MS = 120_000;

// --- receiver state, shared by every connection of this worker ---
const sockets = [];
const latency = new Histogram();
let received = 0, firstMs = null, lastMs = null, malformed = 0, disconnects = 0;
let extractPath = [];

// One handler for all sockets: no per-socket or per-message closures.
function onMessage(payload) {
  const at = now();
  received++;
  if (firstMs === null) firstMs = at;
  lastMs = at;
  try {
    let v = payload;
    for (const key of extractPath) v = (typeof v === "string" ? JSON.parse(v) : v)[key];
    if (typeof v === "string") v = JSON.parse(v);
    if (typeof v.t !== "number") throw new TypeError("no t");
    latency.record(at - v.t);
  } catch {
    if (malformed++ === 0) console.error("loadgen: payload without a {t,n} at", extractPath);
  }
}

const onDisconnect = () => { disconnects++; };

function percentile(sorted, q) {
  return sorted.length ? sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))] : null;
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const yieldLoop = () => new Promise((resolve) => setImmediate(resolve));

// Opens one connection and joins; resolves to the connect+join time in ms.
async function openOne(url, auth, join, listen, deadline) {
  const started = now();
  const socket = io(url, {
    transports: ["websocket"],
    reconnection: false,
    forceNew: true, // io() would otherwise multiplex every socket over one connection
    timeout: Math.max(1, deadline - started),
    ...(auth ? { auth } : {}),
  });
  socket.on(listen, onMessage);
  try {
    // The manager's `timeout` covers the transport; this also bounds the CONNECT packet.
    await new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error("connect timed out")), Math.max(1, deadline - now()));
      socket.once("connect", () => { clearTimeout(timer); resolve(); });
      socket.once("connect_error", (err) => { clearTimeout(timer); reject(err); });
    });
    const ack = await socket.timeout(Math.max(1, deadline - now())).emitWithAck(join.event, join.payload);
    if (ack && ack.ok === false) throw new Error(`join refused: ${JSON.stringify(ack)}`);
  } catch (err) {
    socket.off(listen, onMessage);
    socket.disconnect();
    throw err;
  }
  socket.on("disconnect", onDisconnect);
  sockets.push(socket);
  return now() - started;
}

async function connect(req) {
  const started = now();
  const deadline = started + (req.timeout_ms ?? DEFAULT_TIMEOUT_MS);
  const tokens = req.tokens && req.tokens.length ? req.tokens : null;
  extractPath = req.extract ?? [];
  const times = [];
  let next = 0, failed = 0, firstError = null;
  // A fixed pool of `concurrency` runners, each taking the next index.
  const runner = async () => {
    while (next < req.count) {
      const i = next++;
      if (now() >= deadline) { failed++; firstError ??= "timed out"; continue; }
      const auth = tokens ? { token: tokens[i % tokens.length] } : null;
      try {
        times.push(await openOne(req.url, auth, req.join, req.listen, deadline));
      } catch (err) {
        failed++;
        firstError ??= String(err?.message ?? err);
      }
    }
  };
  const pool = Math.max(1, Math.min(req.concurrency ?? 200, req.count));
  await Promise.all(Array.from({ length: pool }, runner));
  if (failed) return { ok: false, error: `${failed} of ${req.count} connections failed: ${firstError}`, connected: times.length, failed };
  times.sort((a, b) => a - b);
  return {
    ok: true,
    connected: times.length,
    elapsed_ms: now() - started,
    join_ms: { p50: percentile(times, 0.5), p99: percentile(times, 0.99) },
  };
}

// The payload for message n: template with {t, n, pad} placed at `path`.
function makeMessage(template, path, n, pad) {
  const stamp = { t: now(), n, pad };
  if (path.length === 0) return stamp;
  const msg = structuredClone(template);
  let obj = msg;
  for (let k = 0; k < path.length - 1; k++) {
    if (typeof obj[path[k]] !== "object" || obj[path[k]] === null) obj[path[k]] = {};
    obj = obj[path[k]];
  }
  const last = path[path.length - 1];
  obj[last] = typeof obj[last] === "string" ? JSON.stringify(stamp) : stamp; // e.g. chat text
  return msg;
}

async function send(req) {
  const socket = sockets[0];
  if (!socket) return { ok: false, error: "no connections" };
  const { event, count } = req;
  const template = req.template ?? {}, path = req.path ?? [];
  const pad = "x".repeat(req.pad ?? 0);
  const timeoutMs = req.timeout_ms ?? DEFAULT_TIMEOUT_MS;
  let acked = 0, failed = 0;
  const pending = [];
  const emitOne = (n) => {
    const msg = makeMessage(template, path, n, pad);
    if (!req.ack) { socket.emit(event, msg); return; }
    pending.push(socket.timeout(timeoutMs).emitWithAck(event, msg).then(
      (reply) => { if (reply && reply.ok === false) failed++; else acked++; },
      () => { failed++; },
    ));
  };
  const started = now();
  if (req.rate) {
    // Fixed schedule: message n is due at started + n/rate; late ones go at once.
    const interval = 1000 / req.rate;
    let n = 0;
    while (n < count) {
      const t = now();
      while (n < count && started + n * interval <= t) emitOne(n++);
      if (n < count) await sleep(Math.max(0, started + n * interval - now()));
    }
  } else {
    for (let n = 0; n < count; n++) {
      emitOne(n);
      if (n % 100 === 99) await yieldLoop(); // let engine.io flush its write buffer
    }
  }
  await Promise.all(pending); // each bounded by socket.timeout()
  return { ok: true, sent: count, elapsed_ms: now() - started, first_ms: started, acked, failed };
}

let chatRuns = 0;
async function chatLoad(req) {
  const senders = req.senders ?? 1;
  if (senders > sockets.length) return { ok: false, error: `${senders} senders but ${sockets.length} connections` };
  const started = now();
  const stopAt = started + req.duration_ms;
  const timeoutMs = req.timeout_ms ?? DEFAULT_TIMEOUT_MS;
  const hist = new Histogram();
  const text = "lorem ipsum ".repeat(9).slice(0, 100);
  const run = ++chatRuns; // keeps client_msg_id unique across repeated runs
  let acked = 0, failed = 0;
  const loop = async (k) => {
    const socket = sockets[k];
    for (let seq = 0; now() < stopAt; seq++) {
      const payload = { ...req.make, client_msg_id: `${process.pid}-${run}-${k}-${seq}`, text };
      const sentAt = now();
      try {
        const reply = await socket.timeout(timeoutMs).emitWithAck(req.event, payload);
        if (reply && reply.ok === false) failed++;
        else { acked++; hist.record(now() - sentAt); }
      } catch {
        failed++; // ack timeout or disconnect
        if (!socket.connected) return;
      }
    }
  };
  await Promise.all(Array.from({ length: senders }, (_, k) => loop(k)));
  return { ok: true, acked, failed, elapsed_ms: now() - started, hist: hist.encode() };
}

function closeAll() {
  for (const socket of sockets) { socket.off("disconnect", onDisconnect); socket.disconnect(); }
  sockets.length = 0;
  return { ok: true };
}

const handlers = {
  connect,
  send,
  chat_load: chatLoad,
  close: closeAll,
  reset() {
    latency.reset();
    received = 0; firstMs = null; lastMs = null; malformed = 0; disconnects = 0;
    return { ok: true };
  },
  stats() {
    const hist = latency.encode();
    return {
      ok: true, received, first_ms: firstMs, last_ms: lastMs, hist, min: hist.min, max: hist.max,
      malformed, disconnects, connections: sockets.length,
    };
  },
};

serve("loadgen", handlers, closeAll);
