// A minimal Socket.IO 4 client (Engine.IO 4 over a websocket, the `/` namespace, text
// packets only) for connections that mostly receive: socket.io-client decodes every
// packet and dispatches it through an emitter, which in a room of 100 costs the one load
// core more than the server's sending costs it. This one answers pings, connects with
// `auth`, emits with acks, and hands each event's raw frame to its listener, which reads
// only what it needs. The server sees the same handshake, packets and bytes as from
// socket.io-client (`ws` is the websocket socket.io-client itself uses in Node).
import { WebSocket } from "ws";

const EVENT = "42", ACK = "43", PING = "2", PONG = "3";

export class WireSocket {
  constructor(url, auth) {
    const base = url.replace(/^http/, "ws").replace(/\/$/, "");
    this.ws = new WebSocket(`${base}/socket.io/?EIO=4&transport=websocket`, { perMessageDeflate: { threshold: 1024 } });
    this.auth = auth;
    this.connected = false;
    this.listeners = new Map(); // event name → handler(frame)
    this.acks = new Map(); // ack id → [resolve, reject, timer]
    this.nextId = 0;
    this.ready = new Promise((resolve, reject) => { this.settle = { resolve, reject }; });
    this.ws.on("message", (data) => this.onFrame(data.toString()));
    this.ws.on("error", (err) => this.settle.reject(err));
    this.ws.on("close", () => this.onClose());
  }

  onFrame(frame) {
    if (frame.startsWith(EVENT)) {
      // 42["name",...]: the name is the first JSON string; names here need no escapes.
      const end = frame.indexOf('"', 4);
      const handler = this.listeners.get(frame.slice(4, end));
      if (handler) handler(frame);
    } else if (frame.startsWith(ACK)) {
      const open = frame.indexOf("[");
      const id = Number(frame.slice(2, open));
      const pending = this.acks.get(id);
      if (!pending) return;
      this.acks.delete(id);
      clearTimeout(pending[2]);
      pending[0](JSON.parse(frame.slice(open))[0]);
    } else if (frame === PING) {
      this.ws.send(PONG);
    } else if (frame.startsWith("0")) { // Engine.IO open: connect the namespace
      this.ws.send("40" + (this.auth ? JSON.stringify(this.auth) : ""));
    } else if (frame.startsWith("40")) {
      this.connected = true;
      this.settle.resolve();
    } else if (frame.startsWith("44")) {
      const refusal = JSON.parse(frame.slice(2));
      this.settle.reject(Object.assign(new Error(refusal.message), { data: refusal.data }));
    } else if (frame.startsWith("41")) {
      this.ws.close();
    }
  }

  onClose() {
    const wasConnected = this.connected;
    this.connected = false;
    this.settle.reject(new Error("closed"));
    for (const [, [, reject, timer]] of this.acks) { clearTimeout(timer); reject(new Error("disconnected")); }
    this.acks.clear();
    if (wasConnected) this.listeners.get("disconnect")?.();
  }

  on(event, handler) { this.listeners.set(event, handler); return this; }
  off(event) { this.listeners.delete(event); return this; }

  // socket.io-client's shape: socket.timeout(ms).emitWithAck(event, payload).
  timeout(ms) {
    return {
      emitWithAck: (event, payload) => new Promise((resolve, reject) => {
        if (!this.connected) { reject(new Error("not connected")); return; }
        const id = this.nextId++;
        const timer = setTimeout(() => { this.acks.delete(id); reject(new Error("operation has timed out")); }, ms);
        this.acks.set(id, [resolve, reject, timer]);
        this.ws.send(`${EVENT}${id}${JSON.stringify([event, payload])}`);
      }),
    };
  }

  emit(event, payload) { this.ws.send(`${EVENT}${JSON.stringify([event, payload])}`); }

  disconnect() {
    if (this.ws.readyState === WebSocket.OPEN) this.ws.send("41");
    this.ws.close();
  }
}

// The send time of the first {t,...} stamp in a raw event frame: an object (`{"t":`) or
// JSON text inside a string (`{\"t\":`), as bench/node/loadgen.mjs sends them.
const STAMP = /\{\\?"t\\?":(-?[0-9.e+]+)/;
export function frameStamp(frame) {
  const match = STAMP.exec(frame);
  return match ? Number(match[1]) : NaN;
}
