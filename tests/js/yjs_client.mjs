// One y-socket.io SocketIOProvider (unmodified) with its Y.Doc, driven by
// tests/yjs_js.py over stdin/stdout, one JSON command per line and one JSON reply
// per line ({"id", "ok": true, ...} or {"id", "ok": false, "error"}), in order
// (driver.mjs serves them).
//
// The document's text is ydoc.getText("content"). What the provider's socket
// receives besides the Yjs payloads is recorded in order ("error", "session:ended",
// ... by name; lifecycle as "$connect", "$disconnect", "$connect_error", and the
// provider's "$synced"), so the test can wait for it and read it back.
//
// Ops: connect {url, document_id, token, timeout_ms?} (waits for "synced" or a
// connect_error) · insert {index, text} · append {text} · delete {index, length}
// · text · wait_text {text, timeout_ms?} · disconnect (provider.disconnect())
// · reconnect {timeout_ms?} (provider.connect(), waits for "synced")
// · wait_synced {timeout_ms?} · set_awareness {state} · awareness · events
// · wait_event {event, count?, timeout_ms?} · state (Y.encodeStateAsUpdate, base64)
// · pause · resume (stop and restart reading the websocket, driver.mjs setReading)
// · exit. Every op but connect, exit, text and state needs a connect first. The
// process exits when stdin closes, on "exit", or after JS_CLIENT_LIFETIME_MS
// (status 3).
import { SocketIOProvider } from "y-socket.io";
import * as Y from "yjs";
import { ms, serve, setReading, waiters } from "./driver.mjs";

const YJS_EVENTS = new Set(["sync-step-1", "sync-update", "awareness-update"]);

const doc = new Y.Doc();
const text = doc.getText("content");
const received = []; // {event, payload} in arrival order, Yjs payloads left out
// Waits are re-checked after every recorded event and doc change.
const { notify, until } = waiters(
  () => `text ${JSON.stringify(text.toString())}; ` +
    `received ${JSON.stringify(received.map((r) => r.event))}`,
);
let provider = null;

function record(event, payload = null) {
  received.push({ event, payload });
  notify();
}

const named = (event) => received.filter((r) => r.event === event).map((r) => r.payload);

// The provider sets synced when the server's sync-step-1 arrives after a connect.
async function synced(cmd, since) {
  const ends = ["$synced", "$connect_error"];
  const outcome = await until(
    () => received.slice(since).find((r) => ends.includes(r.event) && r.payload !== false),
    ms(cmd),
    "synced or connect_error",
  );
  if (outcome.event === "$connect_error") return { synced: false, connect_error: outcome.payload };
  return { synced: true, client_id: doc.clientID };
}

const ops = {
  async connect(cmd) {
    if (provider) throw new Error("already connected once: use reconnect");
    provider = new SocketIOProvider(
      cmd.url,
      cmd.document_id,
      doc,
      { auth: { token: cmd.token }, autoConnect: false, disableBc: true },
      { reconnectionDelay: 100, reconnectionDelayMax: 500, timeout: ms(cmd) },
    );
    const socket = provider.socket;
    socket.on("connect", () => record("$connect", socket.id));
    socket.on("disconnect", (reason) => record("$disconnect", reason));
    socket.on("connect_error", (err) =>
      record("$connect_error", { message: err.message, data: err.data ?? null }),
    );
    socket.onAny((event, ...args) => {
      if (!YJS_EVENTS.has(event)) record(event, args[0] ?? null);
    });
    provider.on("synced", (value) => record("$synced", value));
    const since = received.length;
    provider.connect();
    return synced(cmd, since);
  },
  async insert(cmd) {
    text.insert(cmd.index, cmd.text);
    return { text: text.toString() };
  },
  async append(cmd) {
    text.insert(text.length, cmd.text);
    return { text: text.toString() };
  },
  async delete(cmd) {
    text.delete(cmd.index, cmd.length);
    return { text: text.toString() };
  },
  async text() {
    return { text: text.toString() };
  },
  async wait_text(cmd) {
    await until(() => (text.toString() === cmd.text ? true : undefined), ms(cmd), "the text");
    return { text: text.toString() };
  },
  async disconnect() {
    provider.disconnect();
    return { connected: provider.socket.connected };
  },
  async reconnect(cmd) {
    const since = received.length;
    provider.connect();
    return synced(cmd, since);
  },
  async wait_synced(cmd) {
    await until(() => provider.synced || undefined, ms(cmd), "synced");
    return { synced: true };
  },
  async set_awareness(cmd) {
    provider.awareness.setLocalState(cmd.state);
    return {};
  },
  async awareness() {
    return { client_id: doc.clientID, states: [...provider.awareness.getStates()] };
  },
  async events() {
    return { events: received.map((r) => [r.event, r.payload]) };
  },
  async wait_event(cmd) {
    const count = cmd.count ?? 1;
    const found = await until(
      () => (named(cmd.event).length >= count ? named(cmd.event) : undefined),
      ms(cmd),
      `${count} × ${cmd.event}`,
    );
    return { events: found };
  },
  async state() {
    return { update: Buffer.from(Y.encodeStateAsUpdate(doc)).toString("base64") };
  },
  async pause() {
    return { paused: setReading(provider.socket, false) };
  },
  async resume() {
    return { resumed: setReading(provider.socket, true) };
  },
  async exit() {
    provider?.destroy();
    return {};
  },
};

doc.on("update", notify);

serve(ops, {
  name: "yjs_client",
  guard(cmd) {
    if (!provider && !["connect", "exit", "text", "state"].includes(cmd.op)) {
      throw new Error("connect first");
    }
  },
});
