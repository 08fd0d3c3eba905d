// Load generator worker for the benchmarks. Driven by its parent with
// line-delimited JSON on stdin; exactly one JSON reply line per request on
// stdout (diagnostics go to stderr only). See README.md for the protocol.
import { io } from "socket.io-client";
import { serve } from "./driver.mjs";
import { Histogram } from "./histogram.mjs";
import { WireSocket, frameStamp } from "./wire.mjs";

const ORIGIN = performance.timeOrigin;
const now = () => ORIGIN + performance.now(); // epoch ms, sub-ms resolution
const DEFAULT_TIMEOUT_MS = 120_000;

// --- receiver state, shared by every connection of this worker ---
const sockets = [];
const latency = new Histogram();
let received = 0, firstMs = null, lastMs = null, malformed = 0, disconnects = 0;

// The send time in a {t,n,...} stamp sent as JSON text: read without parsing the rest
// (a chat room of 100 has this done 100 times a message).
const STAMP_HEAD = '{"t":';
function stampTime(v) {
  if (typeof v !== "string") return v.t;
  if (v.startsWith(STAMP_HEAD)) return Number.parseFloat(v.slice(STAMP_HEAD.length));
  return JSON.parse(v).t;
}

// One handler per listened event, for all sockets: no per-socket or per-message closures.
// `path` leads to the {t,n} stamp in the payload (JSON strings on the way are parsed);
// a null path only counts.
// With `client: "wire"` (wire.mjs) a handler gets the raw frame and finds the stamp in it.
function receiver(path, wire) {
  if (wire) {
    return (frame) => {
      const at = now();
      received++;
      if (firstMs === null) firstMs = at;
      lastMs = at;
      if (path === null) return;
      const t = frameStamp(frame);
      if (Number.isNaN(t)) { if (malformed++ === 0) console.error("loadgen: frame without a {t,n}"); return; }
      latency.record(at - t);
    };
  }
  return (payload) => {
    const at = now();
    received++;
    if (firstMs === null) firstMs = at;
    lastMs = at;
    if (path === null) return;
    try {
      let v = payload;
      for (const key of path) v = (typeof v === "string" ? JSON.parse(v) : v)[key];
      const t = stampTime(v);
      if (typeof t !== "number" || Number.isNaN(t)) throw new TypeError("no t");
      latency.record(at - t);
    } catch {
      if (malformed++ === 0) console.error("loadgen: payload without a {t,n} at", path);
    }
  };
}

const onDisconnect = () => { disconnects++; };
let joinMessages = 0; // messages the join acks of the current `connect` carried
let joinPresence = 0; // ...and users listed in their presence

function percentile(sorted, q) {
  return sorted.length ? sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))] : null;
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const yieldLoop = () => new Promise((resolve) => setImmediate(resolve));

// Opens one connection (socket.io-client, or wire.mjs's with `wire`) and joins;
// resolves to the connect+join time in ms. `listeners`: [[event, handler], ...].
async function openOne(url, auth, join, listeners, deadline, wire) {
  const started = now();
  const socket = wire
    ? new WireSocket(url, auth)
    : io(url, {
      transports: ["websocket"],
      reconnection: false,
      forceNew: true, // io() would otherwise multiplex every socket over one connection
      timeout: Math.max(1, deadline - started),
      ...(auth ? { auth } : {}),
    });
  for (const [event, handler] of listeners) socket.on(event, handler);
  try {
    // The manager's `timeout` covers the transport; this also bounds the CONNECT packet.
    await new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error("connect timed out")), Math.max(1, deadline - now()));
      const done = (err) => { clearTimeout(timer); if (err) reject(err); else resolve(); };
      if (wire) socket.ready.then(() => done(), done);
      else { socket.once("connect", () => done()); socket.once("connect_error", done); }
    });
    const ack = await socket.timeout(Math.max(1, deadline - now())).emitWithAck(join.event, join.payload);
    if (ack && ack.ok === false) throw new Error(`join refused: ${JSON.stringify(ack)}`);
    const caughtUp = ack?.data?.messages; // roomserver's catch-up page (join with since_seq)
    if (Array.isArray(caughtUp)) joinMessages += caughtUp.length;
    const listed = ack?.data?.presence; // roomserver's presence page
    if (Array.isArray(listed)) joinPresence += listed.length;
  } catch (err) {
    for (const [event, handler] of listeners) socket.off(event, handler);
    socket.disconnect();
    throw err;
  }
  socket.on("disconnect", onDisconnect);
  socket.benchJoin = join.payload; // chat_load and chat_rate send to the room joined
  sockets.push(socket);
  return now() - started;
}

async function connect(req) {
  const started = now();
  const deadline = started + (req.timeout_ms ?? DEFAULT_TIMEOUT_MS);
  const tokens = req.tokens && req.tokens.length ? req.tokens : null;
  // `listens` {event: path} or one `listen` event with its `extract` path.
  const listens = req.listens ?? { [req.listen]: req.extract ?? [] };
  const wire = req.client === "wire";
  const listeners = Object.entries(listens).map(([event, path]) => [event, receiver(path, wire)]);
  const times = [];
  joinMessages = 0;
  joinPresence = 0;
  let next = 0, failed = 0, firstError = null;
  // A fixed pool of `concurrency` runners, each taking the next index.
  const runner = async () => {
    while (next < req.count) {
      const i = next++;
      if (now() >= deadline) { failed++; firstError ??= "timed out"; continue; }
      const auth = tokens ? { token: tokens[i % tokens.length] } : null;
      const join = req.joins ? req.joins[i % req.joins.length] : req.join;
      try {
        times.push(await openOne(req.url, auth, join, listeners, deadline, wire));
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
    join_messages: joinMessages,
    join_presence: joinPresence,
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

// A chat message's text: the {t,n,pad} stamp as JSON, ~100 characters, so that every
// receiver can time its delivery (listen with path ["message", "text"]).
const CHAT_PAD = "x".repeat(60);
const chatText = (t, n) => JSON.stringify({ t, n, pad: CHAT_PAD });

// What a sender's chat:send carries besides client_msg_id and text: `make`, or the
// document_id of the room the connection joined.
const chatMake = (req, socket) => req.make ?? { document_id: socket.benchJoin?.document_id };

let chatRuns = 0; // keeps client_msg_id unique across runs

// Closed loop: each of the first `senders` connections sends, waits for the ack and
// sends again until `duration_ms` has passed (or it sent `count`). Each send is a chat
// message, or with `template` that payload (and the room's document_id) with the
// {t,n,pad} stamp at `path`: another event in the same loop (a relay, to compare with).
async function chatLoad(req) {
  const senders = req.senders ?? 1;
  if (senders > sockets.length) return { ok: false, error: `${senders} senders but ${sockets.length} connections` };
  const started = now();
  const stopAt = started + (req.duration_ms ?? Infinity);
  const count = req.count ?? Infinity;
  const timeoutMs = req.timeout_ms ?? DEFAULT_TIMEOUT_MS;
  const hist = new Histogram();
  const run = ++chatRuns;
  const receivedAtStart = received;
  let acked = 0, failed = 0, firstError = null;
  const loop = async (k) => {
    const socket = sockets[k];
    const make = chatMake(req, socket);
    for (let seq = 0; seq < count && now() < stopAt; seq++) {
      const sentAt = now();
      const payload = req.template
        ? makeMessage({ ...req.template, ...make }, req.path ?? [], seq, CHAT_PAD)
        : { ...make, client_msg_id: `${process.pid}-${run}-${k}-${seq}`, text: chatText(sentAt, seq) };
      try {
        const reply = await socket.timeout(timeoutMs).emitWithAck(req.event, payload);
        if (reply && reply.ok === false) { failed++; firstError ??= JSON.stringify(reply.error); }
        else { acked++; hist.record(now() - sentAt); }
      } catch (err) {
        failed++; // ack timeout or disconnect
        firstError ??= String(err?.message ?? err);
        if (!socket.connected) return;
      }
    }
  };
  await Promise.all(Array.from({ length: senders }, (_, k) => loop(k)));
  return {
    ok: true, acked, failed, first_error: firstError, elapsed_ms: now() - started, hist: hist.encode(),
    received: received - receivedAtStart, // deliveries this worker counted meanwhile
  };
}

// Open loop: `rate` messages/s in all on a fixed schedule for `duration_ms`, message n
// from sender n % senders, each sent when due whether or not earlier ones were acked
// (one socket's packets still leave, and are handled, in order). Latency runs from the
// time a message was due, so a late generator counts against the result, never for it;
// `max_late_ms` says how late it was.
async function chatRate(req) {
  const senders = req.senders ?? 1;
  if (senders > sockets.length) return { ok: false, error: `${senders} senders but ${sockets.length} connections` };
  const timeoutMs = req.timeout_ms ?? DEFAULT_TIMEOUT_MS;
  const count = Math.round((req.rate * req.duration_ms) / 1000);
  const interval = 1000 / req.rate;
  const hist = new Histogram();
  const run = ++chatRuns;
  const makes = Array.from({ length: senders }, (_, k) => chatMake(req, sockets[k]));
  let acked = 0, failed = 0, firstError = null, maxLate = 0, lastAck = null;
  const pending = [];
  const emitOne = (n, due) => {
    const k = n % senders;
    const payload = { ...makes[k], client_msg_id: `${process.pid}-${run}-${n}`, text: chatText(due, n) };
    pending.push(sockets[k].timeout(timeoutMs).emitWithAck(req.event, payload).then(
      (reply) => {
        if (reply && reply.ok === false) { failed++; firstError ??= JSON.stringify(reply.error); return; }
        acked++;
        lastAck = now();
        hist.record(lastAck - due);
      },
      (err) => { failed++; firstError ??= String(err?.message ?? err); },
    ));
  };
  const started = now();
  let n = 0;
  while (n < count) {
    const t = now();
    while (n < count && started + n * interval <= t) {
      const due = started + n * interval;
      maxLate = Math.max(maxLate, t - due);
      emitOne(n++, due);
    }
    if (n < count) await sleep(Math.max(0, started + n * interval - now()));
  }
  const sentMs = now() - started;
  await Promise.all(pending); // each bounded by socket.timeout()
  return {
    ok: true, sent: count, acked, failed, first_error: firstError, send_ms: sentMs,
    elapsed_ms: (lastAck ?? now()) - started, max_late_ms: maxLate, hist: hist.encode(),
  };
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
  chat_rate: chatRate,
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
