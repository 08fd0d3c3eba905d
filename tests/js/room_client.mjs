// One socket.io-client 4 connection, driven by tests/js_client.py over stdin/stdout.
//
// Each stdin line is a command {"id": n, "op": "...", ...}; each gets exactly one
// stdout line {"id": n, "ok": true, ...} or {"id": n, "ok": false, "error": "..."}.
// Commands run one at a time, in order (driver.mjs serves them). Everything the
// socket receives is recorded in order (server events by name; lifecycle as
// "$connect", "$disconnect", "$connect_error", "$open", "$upgrade"), so the test
// can wait for it and read it back.
//
// Ops: connect {url, token?, transports?} · emit {event, payload, ack?, timeout_ms?}
// · wait_event {event, count?, timeout_ms?} · events · wait_connect {timeout_ms?}
// · wait_upgrade {timeout_ms?} · disconnect · close_transport · pause · resume (stop and
// restart reading the websocket, driver.mjs setReading) · exit.
// Every op but connect and exit needs a connect first. The process exits when stdin
// closes, on "exit", or after JS_CLIENT_LIFETIME_MS (status 3).
import { io } from "socket.io-client";
import { ms, serve, setReading, waiters } from "./driver.mjs";

const received = []; // [{event, args}] in arrival order
// Waits are re-checked after every recorded event.
const { notify, until } = waiters(() => `received ${JSON.stringify(received.map((r) => r.event))}`);
let socket = null;

function record(event, args) {
  received.push({ event, args });
  notify();
}

function payloads(event) {
  return received.filter((r) => r.event === event).map((r) => r.args[0] ?? null);
}

function open(cmd) {
  const options = {
    forceNew: true,
    transports: cmd.transports ?? ["websocket"],
    reconnectionDelay: 50,
    reconnectionDelayMax: 200,
    timeout: ms(cmd),
  };
  if ("token" in cmd) options.auth = { token: cmd.token };
  const s = io(cmd.url, options);
  s.on("connect", () => record("$connect", [s.id]));
  s.on("disconnect", (reason) => record("$disconnect", [reason]));
  s.on("connect_error", (err) =>
    record("$connect_error", [{ message: err.message, data: err.data ?? null }]),
  );
  s.onAny((event, ...args) => record(event, args));
  s.io.on("open", () => {
    record("$open", [s.io.engine.transport.name]); // the transport it started with
    s.io.engine.once("upgrade", (transport) => record("$upgrade", [transport.name]));
  });
  return s;
}

const ops = {
  async connect(cmd) {
    const before = received.length;
    if (socket) socket.connect();
    else socket = open(cmd);
    const ends = ["$connect", "$connect_error"];
    const outcome = await until(
      () => received.slice(before).find((r) => ends.includes(r.event)),
      ms(cmd),
      "connect or connect_error",
    );
    if (outcome.event === "$connect_error") {
      return { connected: false, connect_error: outcome.args[0] };
    }
    return { connected: true, sid: socket.id };
  },
  async emit(cmd) {
    if (cmd.ack === false) {
      socket.emit(cmd.event, cmd.payload);
      return {};
    }
    const ack = await socket.timeout(ms(cmd)).emitWithAck(cmd.event, cmd.payload);
    return { ack: ack ?? null };
  },
  async wait_event(cmd) {
    const count = cmd.count ?? 1;
    const found = await until(
      () => (payloads(cmd.event).length >= count ? payloads(cmd.event) : undefined),
      ms(cmd),
      `${count} × ${cmd.event}`,
    );
    return { events: found };
  },
  async events() {
    return { events: received.map((r) => [r.event, r.args[0] ?? null]) };
  },
  async wait_connect(cmd) {
    await until(() => socket.connected || undefined, ms(cmd), "connect");
    return { sid: socket.id };
  },
  async wait_upgrade(cmd) {
    await until(() => payloads("$upgrade").length > 0 || undefined, ms(cmd), "upgrade");
    return { transport: socket.io.engine.transport.name };
  },
  async disconnect() {
    socket.disconnect();
    return {};
  },
  async close_transport(cmd) {
    socket.io.engine.close(); // the network drops: the manager reconnects by itself
    await until(() => !socket.connected || undefined, ms(cmd), "disconnect");
    return {};
  },
  async pause() {
    return { paused: setReading(socket, false) };
  },
  async resume() {
    return { resumed: setReading(socket, true) };
  },
  async exit() {
    socket?.close();
    return {};
  },
};

serve(ops, {
  name: "room_client",
  guard(cmd) {
    if (cmd.op !== "connect" && cmd.op !== "exit" && !socket) throw new Error("connect first");
  },
});
