// Load generator for the assistant scenario (bench/scenarios/assistant.py). Driven like
// loadgen.mjs: one JSON request per line on stdin, one JSON reply line per request on
// stdout, requests in order; diagnostics on stderr. See README.md.
//
// Times are CLOCK_MONOTONIC (process.hrtime, as Python's time.monotonic_ns) in ms since
// `origin_ns`, the moment the stand-in upstream (bench/servers/anthropic_standin.py)
// also counts from: every token it streams is " " + its send time in tenths of a ms,
// base 36, so each token's latency is its receipt time minus its own send time, however
// the server batched it into `ai:chunk`s.
import { io } from "socket.io-client";
import { serve } from "./driver.mjs";
import { Histogram } from "./histogram.mjs";

const DEFAULT_TIMEOUT_MS = 120_000;
let origin = process.hrtime.bigint();
const now = () => Number(process.hrtime.bigint() - origin) / 1e6;
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

const rooms = []; // {documentId, conns: [conn]}; conns[0] asks
const probes = []; // the chat probe's rooms: {documentId, sender: socket, listener: socket}
const sockets = [];
let disconnects = 0;

// --- per-run counters --------------------------------------------------------------
const latency = new Histogram(); // upstream token → client receipt, every token at every client
const firstChunk = new Histogram(); // ai:ask emitted → first ai:chunk at the asker
let chunks = 0, tokens = 0, gaps = 0, malformed = 0, errors = 0, foreign = 0;
let firstChunkMs = null, lastChunkMs = null;
let pending = 0; // connections still waiting for their reply's end
let allDone = null; // resolves when pending reaches 0

function fresh(conn) {
  conn.run = { replyId: null, seq: 0, tokens: 0, status: null, askedAt: null, first: null, ended: null };
}

function ours(conn, data) {
  const run = conn.run;
  if (run.status !== null) { foreign++; return false; } // after its end: not this run's
  if (run.replyId === null) run.replyId = data.reply_id;
  else if (run.replyId !== data.reply_id) { foreign++; return false; }
  return true;
}

function onChunk(conn, data) {
  const at = now();
  if (!ours(conn, data)) return;
  const run = conn.run;
  chunks++;
  if (firstChunkMs === null) firstChunkMs = at;
  lastChunkMs = at;
  if (data.seq !== run.seq + 1) gaps++;
  run.seq = data.seq;
  if (run.first === null) {
    run.first = at;
    if (run.askedAt !== null) firstChunk.record(at - run.askedAt);
  }
  const text = data.text;
  let start = text.indexOf(" ");
  while (start >= 0) {
    let end = text.indexOf(" ", start + 1);
    if (end < 0) end = text.length;
    const sent = parseInt(text.slice(start + 1, end), 36) / 10;
    if (Number.isFinite(sent)) { latency.record(at - sent); tokens++; run.tokens++; }
    else malformed++;
    start = end < text.length ? end : -1;
  }
}

function onEnd(conn, data, status) {
  if (!ours(conn, data)) return;
  if (status === "failed") errors++;
  conn.run.status = status;
  conn.run.ended = now();
  settle();
}

function settle() {
  pending--;
  if (pending === 0 && allDone) allDone();
}

async function openOne(url, token, documentId, deadline) {
  const socket = io(url, {
    transports: ["websocket"],
    reconnection: false,
    forceNew: true,
    timeout: Math.max(1, deadline - now()),
    auth: { token },
  });
  await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error("connect timed out")), Math.max(1, deadline - now()));
    socket.once("connect", () => { clearTimeout(timer); resolve(); });
    socket.once("connect_error", (err) => { clearTimeout(timer); socket.disconnect(); reject(err); });
  });
  const ack = await socket.timeout(Math.max(1, deadline - now())).emitWithAck("join", { document_id: documentId });
  if (!ack?.ok) { socket.disconnect(); throw new Error(`join refused: ${JSON.stringify(ack)}`); }
  socket.on("disconnect", () => { disconnects++; });
  sockets.push(socket);
  return socket;
}

// connect {url, origin_ns, rooms: [{document_id, tokens: [...]}], probes: [{document_id, tokens: [sender, listener]}]}
async function connect(req) {
  origin = BigInt(req.origin_ns);
  const started = now();
  const deadline = started + (req.timeout_ms ?? DEFAULT_TIMEOUT_MS);
  const jobs = [];
  for (const room of req.rooms) {
    const entry = { documentId: room.document_id, conns: [] };
    rooms.push(entry);
    room.tokens.forEach((token, k) => jobs.push(async () => {
      const socket = await openOne(req.url, token, room.document_id, deadline);
      const conn = { socket, asker: k === 0 };
      fresh(conn);
      socket.on("ai:chunk", (data) => onChunk(conn, data));
      socket.on("ai:done", (data) => onEnd(conn, data, data.status));
      socket.on("ai:error", (data) => onEnd(conn, data, "failed"));
      entry.conns[k] = conn;
    }));
  }
  for (const room of req.probes ?? []) {
    const [senderToken, listenerToken] = room.tokens;
    jobs.push(async () => {
      probes.push({
        documentId: room.document_id,
        sender: await openOne(req.url, senderToken, room.document_id, deadline),
        listener: await openOne(req.url, listenerToken, room.document_id, deadline),
      });
    });
  }
  let next = 0;
  const runner = async () => { while (next < jobs.length) await jobs[next++](); };
  await Promise.all(Array.from({ length: Math.min(req.concurrency ?? 50, jobs.length) }, runner));
  return { ok: true, connected: sockets.length, elapsed_ms: now() - started };
}

// Chat sends at `rate`/s in all on a fixed schedule, the probe rooms in turn (open loop:
// a slow ack does not delay the next send), until stop() says so; the ack latency of each.
let probeRuns = 0;
async function runProbe(rate, stop, timeoutMs) {
  const hist = new Histogram();
  const run = ++probeRuns;
  const text = "how is the plan going? ".repeat(5).slice(0, 100);
  const interval = 1000 / rate;
  const started = now();
  const acks = [];
  const series = []; // [sent at, ack latency or null], for the phases of a run
  let sent = 0, acked = 0, failed = 0;
  while (!stop()) {
    const due = started + sent * interval;
    if (due > now()) { await sleep(due - now()); continue; }
    const probe = probes[sent % probes.length];
    const payload = { document_id: probe.documentId, client_msg_id: `p${process.pid}-${run}-${sent}`, text };
    const sentAt = now();
    const point = [sentAt, null];
    series.push(point);
    sent++;
    acks.push(probe.sender.timeout(timeoutMs).emitWithAck("chat:send", payload).then(
      (reply) => {
        if (!reply?.ok) { failed++; return; }
        acked++;
        point[1] = now() - sentAt;
        hist.record(point[1]);
      },
      () => { failed++; },
    ));
  }
  await Promise.all(acks);
  return { sent, acked, failed, hist: hist.encode(), series, elapsed_ms: now() - started };
}

// run {ask, question, spread_ms, probe_rate, probe_ms, timeout_ms}: with `ask`, the first
// connection of every room asks (spread evenly over spread_ms) and the run lasts until
// every connection has its reply's ai:done/ai:error (or timeout_ms); the probe runs
// meanwhile. Without: the probe alone for probe_ms.
async function runOnce(req) {
  latency.reset(); firstChunk.reset();
  chunks = 0; tokens = 0; gaps = 0; malformed = 0; errors = 0; foreign = 0;
  firstChunkMs = null; lastChunkMs = null;
  const timeoutMs = req.timeout_ms ?? DEFAULT_TIMEOUT_MS;
  const disconnectsBefore = disconnects;
  const started = now();
  let finished = false;
  const stop = req.ask ? () => finished : () => now() - started >= req.probe_ms;
  const probing = probes.length && req.probe_rate ? runProbe(req.probe_rate, stop, timeoutMs) : null;
  let asked = 0, askFailed = 0, timedOut = false;
  const askErrors = {};
  if (req.ask) {
    for (const room of rooms) for (const conn of room.conns) fresh(conn);
    pending = rooms.reduce((sum, room) => sum + room.conns.length, 0);
    const done = new Promise((resolve) => { allDone = resolve; });
    const asks = rooms.map(async (room, k) => {
      await sleep(Math.max(0, started + (k * req.spread_ms) / rooms.length - now()));
      const asker = room.conns[0];
      asker.run.askedAt = now();
      asked++;
      let reply;
      try {
        reply = await asker.socket.timeout(timeoutMs).emitWithAck("ai:ask", { document_id: room.documentId, question: req.question });
      } catch (err) {
        reply = { ok: false, error: { code: String(err?.message ?? err) } };
      }
      if (!reply?.ok) {
        askFailed++;
        const code = reply?.error?.code ?? "?";
        askErrors[code] = (askErrors[code] ?? 0) + 1;
        // No reply will come: stop waiting for this room.
        for (const conn of room.conns) if (conn.run.status === null) { conn.run.status = "refused"; settle(); }
      }
    });
    await Promise.all(asks);
    timedOut = await Promise.race([done.then(() => false), sleep(timeoutMs).then(() => true)]);
    allDone = null;
    finished = true;
  }
  const probed = probing ? await probing : null;
  let completed = 0, expectedTokens = 0, short = 0;
  // Phases: until every reply has streamed its first chunk (asks, prompts), until the
  // first reply ends (streaming only), and the rest (the replies being stored).
  let allStreamingMs = null, firstEndMs = null;
  if (req.ask) {
    for (const room of rooms) {
      const runs = room.conns.map((conn) => conn.run);
      for (const r of runs) if (r.ended !== null) firstEndMs = Math.min(firstEndMs ?? Infinity, r.ended);
      if (runs[0].status === "refused") continue;
      allStreamingMs = Math.max(allStreamingMs ?? -Infinity, runs[0].first ?? Infinity);
      expectedTokens += req.tokens_per_reply * runs.length;
      if (runs.every((r) => r.status === "completed" && r.tokens === req.tokens_per_reply)) completed++;
      short += runs.filter((r) => r.tokens < req.tokens_per_reply).length;
    }
  }
  return {
    ok: true,
    elapsed_ms: now() - started,
    asked, ask_failed: askFailed, ask_errors: askErrors, timed_out: timedOut,
    completed, errors, short_connections: short,
    tokens, expected_tokens: expectedTokens, chunks, gaps, malformed, foreign,
    first_chunk_ms: firstChunkMs, last_chunk_ms: lastChunkMs,
    started_ms: started, all_streaming_ms: Number.isFinite(allStreamingMs) ? allStreamingMs : null,
    first_end_ms: firstEndMs,
    hist: latency.encode(), first_chunk_hist: firstChunk.encode(),
    probe: probed,
    disconnects: disconnects - disconnectsBefore,
  };
}

function closeAll() {
  for (const socket of sockets) { socket.removeAllListeners("disconnect"); socket.disconnect(); }
  sockets.length = 0; rooms.length = 0; probes.length = 0;
  return { ok: true };
}

const handlers = { connect, run: runOnce, close: closeAll };

serve("aigen", handlers, closeAll);
