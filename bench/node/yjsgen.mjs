// Yjs load generator for the benchmarks: the wire protocol of the y-socket.io
// provider (1.1.3, src/client/provider.ts) spoken by hand over socket.io-client,
// so that 100 editors fit in one process on one core. Driven like loadgen.mjs:
// one JSON request per line on stdin, exactly one JSON reply line per request on
// stdout (diagnostics on stderr). See README.md for the requests.
//
// Latency without changing what is typed: a sender notes the time it emitted the
// update whose first struct is (its clientID, clock); a receiver reads the first
// (client, clock) of each update it is sent (a Yjs v1 update starts with
// varuint clients, varuint structs, varuint client, varuint clock) and looks the
// time up. Senders and receivers live in this one process, so they share the map.
import * as decoding from "lib0/decoding";
import { io } from "socket.io-client";
import * as Y from "yjs";
import { serve } from "./driver.mjs";
import { Histogram } from "./histogram.mjs";

const ORIGIN = performance.timeOrigin;
const now = () => ORIGIN + performance.now(); // epoch ms, sub-ms resolution
const DEFAULT_TIMEOUT_MS = 120_000;
const TEXT = "content"; // the shared type the server's REST and assistant use
const REMOTE = Symbol("remote"); // transaction origin of what came from the server
const EMPTY_UPDATE = new Uint8Array([0, 0]);

// A small deterministic PRNG: every server gets the same keystrokes and document.
function mulberry32(seed) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}
let rand = mulberry32(1);

// --- connections and what they receive ---------------------------------------------
// conn: { socket, doc (Y.Doc, or null for a receiver that only counts), cursor }
const conns = [];
const sentAt = new Map(); // "client:clock" -> epoch ms of the emit
const latency = new Histogram();
let received = 0, firstMs = null, lastMs = null, unknown = 0, echoes = 0, disconnects = 0;
let serverErrors = 0, firstServerError = null;

function onUpdate(conn, update) {
  const at = now();
  if (conn.doc) Y.applyUpdate(conn.doc, update, REMOTE); // an editor applies what it is sent
  let client, clock;
  try {
    const decoder = decoding.createDecoder(update);
    if (decoding.readVarUint(decoder) === 0) return; // deletions only: nobody typed it
    decoding.readVarUint(decoder); // structs of the first client
    client = decoding.readVarUint(decoder);
    clock = decoding.readVarUint(decoder);
  } catch {
    unknown++;
    return;
  }
  if (conn.doc !== null && client === conn.doc.clientID) { echoes++; return; } // its own update back
  const sent = sentAt.get(`${client}:${clock}`);
  if (sent === undefined) { unknown++; return; }
  received++;
  if (firstMs === null) firstMs = at;
  lastMs = at;
  latency.record(at - sent);
}

function onServerError(error) {
  serverErrors++;
  if (firstServerError === null) {
    firstServerError = error;
    console.error("yjsgen: server error event", JSON.stringify(error));
  }
}

const onDisconnect = () => { disconnects++; };
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

function percentile(sorted, q) {
  return sorted.length ? sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))] : null;
}

// Opens one connection and runs the provider's sync; resolves to the connection and
// its timings. With `withDoc` the connection is an editor: it has a Y.Doc, applies
// every update and sends its own changes; otherwise it only counts what arrives.
// `deflate`: offer permessage-deflate as browsers do (engine.io-client's default too);
// false turns it off, as a measure of what compression costs.
async function openOne(url, namespace, token, withDoc, deadline, deflate = true) {
  const started = now();
  const doc = withDoc ? new Y.Doc() : null;
  const socket = io(url + namespace, {
    transports: ["websocket"],
    reconnection: false,
    forceNew: true,
    timeout: Math.max(1, deadline - started),
    ...(token ? { auth: { token } } : {}),
    ...(deflate ? {} : { perMessageDeflate: false }),
  });
  const conn = { socket, doc, cursor: null };
  // The server asks for what it lacks; the ack carries it.
  socket.on("sync-step-1", (stateVector, ack) => {
    if (typeof ack === "function") ack(doc ? Y.encodeStateAsUpdate(doc, stateVector) : EMPTY_UPDATE);
  });
  socket.on("sync-update", (update) => onUpdate(conn, update));
  socket.on("awareness-update", () => {});
  socket.on("error", onServerError);
  if (doc) {
    doc.on("update", (update, origin) => {
      if (origin !== REMOTE) socket.emit("sync-update", update);
    });
  }
  try {
    await new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error("connect timed out")), Math.max(1, deadline - now()));
      socket.once("connect", () => { clearTimeout(timer); resolve(); });
      socket.once("connect_error", (err) => { clearTimeout(timer); reject(err); });
    });
    const connectedAt = now();
    const stateVector = doc ? Y.encodeStateVector(doc) : Y.encodeStateVector(new Y.Doc());
    const update = await socket.timeout(Math.max(1, deadline - now())).emitWithAck("sync-step-1", stateVector);
    const receivedAt = now();
    let textLength = null;
    if (doc) {
      Y.applyUpdate(doc, update, REMOTE);
      textLength = doc.getText(TEXT).toString().length; // the text, available to show
    }
    const syncedAt = now();
    return {
      conn,
      connect_ms: connectedAt - started,
      answer_ms: receivedAt - started,
      synced_ms: syncedAt - started,
      ack_bytes: update.byteLength,
      text_length: textLength,
    };
  } catch (err) {
    socket.disconnect();
    throw err;
  }
}

// --- requests ------------------------------------------------------------------------

async function connect(req) {
  const started = now();
  const deadline = started + (req.timeout_ms ?? DEFAULT_TIMEOUT_MS);
  const tokens = req.tokens && req.tokens.length ? req.tokens : null;
  const editors = req.editors ?? 0; // the first `editors` connections get a Y.Doc
  const times = [];
  const opened = new Array(req.count);
  let next = 0, failed = 0, firstError = null;
  const runner = async () => {
    while (next < req.count) {
      const i = next++;
      const token = tokens ? tokens[i % tokens.length] : null;
      try {
        const result = await openOne(req.url, req.namespace, token, i < editors, deadline, req.deflate ?? true);
        opened[i] = result.conn;
        times.push(result.synced_ms);
      } catch (err) {
        failed++;
        firstError ??= String(err?.message ?? err);
      }
    }
  };
  const pool = Math.max(1, Math.min(req.concurrency ?? 50, req.count));
  await Promise.all(Array.from({ length: pool }, runner));
  for (const conn of opened) {
    if (!conn) continue;
    conn.socket.on("disconnect", onDisconnect);
    conns.push(conn); // editors first, in order
  }
  if (failed) return { ok: false, error: `${failed} of ${req.count} connections failed: ${firstError}` };
  times.sort((a, b) => a - b);
  return {
    ok: true,
    connected: times.length,
    elapsed_ms: now() - started,
    sync_ms: { p50: percentile(times, 0.5), p99: percentile(times, 0.99) },
  };
}

// One keystroke (1-3 characters) typed at the editor's cursor, kept as a relative
// position the way editor bindings keep it, so others' typing does not move it.
const LETTERS = "etaoinshrdlcumwfgypbvk    ";
function typeOne(conn) {
  const { doc } = conn;
  const text = doc.getText(TEXT);
  let index = null;
  if (conn.cursor !== null) index = Y.createAbsolutePositionFromRelativePosition(conn.cursor, doc)?.index ?? null;
  if (index === null) index = Math.floor(rand() * (text.length + 1));
  let chars = "";
  for (let k = 1 + Math.floor(rand() * 3); k > 0; k--) chars += LETTERS[Math.floor(rand() * LETTERS.length)];
  const clock = Y.getState(doc.store, doc.clientID); // the clock of the struct about to be made
  sentAt.set(`${doc.clientID}:${clock}`, now());
  doc.transact(() => text.insert(index, chars)); // the update handler emits it
  conn.cursor = Y.createRelativePositionFromTypeIndex(text, index + chars.length);
}

// The first `senders` editors type in turn, `rate` keystrokes per second in all, on a
// fixed schedule (keystroke n is due at start + n/rate; late ones go at once).
async function type(req) {
  const senders = conns.filter((conn) => conn.doc !== null).slice(0, req.senders);
  if (senders.length < req.senders) return { ok: false, error: `${req.senders} senders but ${senders.length} editors` };
  const count = Math.max(1, Math.round((req.rate * req.duration_ms) / 1000));
  const interval = 1000 / req.rate;
  const started = now();
  let n = 0, maxLate = 0;
  while (n < count) {
    const t = now();
    while (n < count && started + n * interval <= t) {
      maxLate = Math.max(maxLate, t - (started + n * interval));
      typeOne(senders[n % senders.length]);
      n++;
    }
    if (n < count) await sleep(Math.max(0, started + n * interval - now()));
  }
  return { ok: true, sent: count, first_ms: started, elapsed_ms: now() - started, max_late_ms: maxLate };
}

// A document of prose as people make it: `sessions` of editing (a new clientID each),
// each inserting sentences at random places and deleting a little, until its encoded
// state reaches `bytes`. Each session is one update (under the servers' size limits).
const WORDS = (
  "the a of to and in that is was he for it with as his on be at by had are but from or " +
  "have an they which one you were all we her she there would their will when who him been has " +
  "more if no out so said what up its about into than them can only other new some could time " +
  "these two may then do first any my now such like our over man me even most made after also " +
  "document server update editor cursor paragraph revision comment section heading table list"
).split(" ");
const built = new Map();
function buildDocument(bytes, sessions, seed) {
  const key = `${bytes}:${sessions}:${seed}`;
  if (built.has(key)) return built.get(key);
  const random = mulberry32(seed);
  const whole = new Y.Doc();
  const updates = [];
  const perSession = bytes / sessions;
  while (Y.encodeStateAsUpdate(whole).byteLength < bytes) {
    const session = new Y.Doc();
    session.clientID = 1 + Math.floor(random() * 0x7ffffffe); // the same bytes for every server
    Y.applyUpdate(session, Y.encodeStateAsUpdate(whole));
    const before = Y.encodeStateVector(session);
    const text = session.getText(TEXT);
    session.transact(() => {
      let added = 0;
      while (added < perSession * 0.8) {
        if (random() < 0.1 && text.length > 100) {
          text.delete(Math.floor(random() * (text.length - 20)), 1 + Math.floor(random() * 20));
          continue;
        }
        let sentence = "";
        for (let k = 3 + Math.floor(random() * 10); k > 0; k--) sentence += WORDS[Math.floor(random() * WORDS.length)] + " ";
        sentence = sentence[0].toUpperCase() + sentence.slice(1, -1) + (random() < 0.1 ? ".\n" : ". ");
        text.insert(Math.floor(random() * (text.length + 1)), sentence);
        added += sentence.length;
      }
    });
    const update = Y.encodeStateAsUpdate(session, before);
    updates.push(update);
    Y.applyUpdate(whole, update);
  }
  const result = {
    updates,
    state_bytes: Y.encodeStateAsUpdate(whole).byteLength,
    text_length: whole.getText(TEXT).length,
  };
  built.set(key, result);
  return result;
}

// Builds the document (see above), sends it to an empty document on the server as
// one editor would, then waits until a fresh client syncs the whole text.
async function seed(req) {
  const started = now();
  const deadline = started + (req.timeout_ms ?? DEFAULT_TIMEOUT_MS);
  const document = buildDocument(req.bytes, req.sessions ?? 16, req.seed ?? 7);
  const builtMs = now() - started;
  const { conn } = await openOne(req.url, req.namespace, req.token, false, deadline);
  for (const update of document.updates) conn.socket.emit("sync-update", update);
  let check = null;
  while (now() < deadline) {
    await sleep(250);
    check = await openOne(req.url, req.namespace, req.token, true, deadline);
    check.conn.socket.disconnect();
    if (check.text_length === document.text_length) break;
  }
  conn.socket.disconnect();
  if (check?.text_length !== document.text_length) {
    return { ok: false, error: `the server holds ${check?.text_length} of ${document.text_length} characters` };
  }
  return {
    ok: true,
    updates: document.updates.length,
    sent_bytes: document.updates.reduce((sum, update) => sum + update.byteLength, 0),
    state_bytes: document.state_bytes,
    text_length: document.text_length,
    build_ms: builtMs,
    elapsed_ms: now() - started,
  };
}

// `count` fresh clients join one after another: connect, sync-step-1, apply the
// answer, read the text; each then leaves. Times from io() to each point, in ms.
async function join(req) {
  const runs = [];
  for (let k = 0; k < req.count; k++) {
    const deadline = now() + (req.timeout_ms ?? DEFAULT_TIMEOUT_MS);
    const result = await openOne(req.url, req.namespace, req.token, true, deadline);
    result.conn.socket.disconnect();
    delete result.conn;
    runs.push(result);
    await sleep(req.pause_ms ?? 200);
  }
  return { ok: true, runs };
}

function closeAll() {
  for (const conn of conns) {
    conn.socket.off("disconnect", onDisconnect);
    conn.socket.disconnect();
    conn.doc?.destroy();
  }
  conns.length = 0;
  return { ok: true };
}

const handlers = {
  connect,
  type,
  seed,
  join,
  close: closeAll,
  reset(req) {
    latency.reset();
    sentAt.clear();
    received = 0; firstMs = null; lastMs = null; unknown = 0; echoes = 0; disconnects = 0;
    serverErrors = 0; firstServerError = null;
    if (req.seed !== undefined) rand = mulberry32(req.seed);
    return { ok: true };
  },
  stats() {
    const hist = latency.encode();
    return {
      ok: true, received, first_ms: firstMs, last_ms: lastMs, hist, min: hist.min, max: hist.max,
      unknown, echoes, disconnects, server_errors: serverErrors, first_server_error: firstServerError,
      connections: conns.length,
    };
  },
};

serve("yjsgen", handlers, closeAll);
