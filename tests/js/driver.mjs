// What room_client.mjs and yjs_client.mjs share: waiting for what a client has
// received, and being driven over stdin/stdout.
//
// serve(ops, {name, guard}) reads one JSON command per stdin line
// {"id": n, "op": "...", ...} and writes exactly one stdout line for each,
// {"id": n, "ok": true, ...ops[op](cmd)} or {"id": n, "ok": false, "error": "..."}.
// Commands run one at a time, in order; guard(cmd) runs before each and may throw
// (e.g. "connect first"). The process exits when stdin closes, on "exit" (after
// its reply), or after LIFETIME_MS (status 3, JS_CLIENT_LIFETIME_MS, default 120000).
import { createInterface } from "node:readline";

export const LIFETIME_MS = Number(process.env.JS_CLIENT_LIFETIME_MS || 120000);
export const DEFAULT_TIMEOUT_MS = 5000;

// A command's own timeout_ms, or the default.
export const ms = (cmd) => cmd.timeout_ms ?? DEFAULT_TIMEOUT_MS;

// Pending waits, re-checked on every notify() (call it after recording an event,
// or after any other change a wait may be about). describe() tells, for a timeout's
// message, what has been received so far.
export function waiters(describe) {
  const pending = new Set();
  const notify = () => {
    for (const check of [...pending]) check();
  };
  // Resolve with check()'s first non-undefined result; reject after timeoutMs.
  const until = (check, timeoutMs, what) =>
    new Promise((resolve, reject) => {
      const done = () => {
        clearTimeout(timer);
        pending.delete(attempt);
      };
      const attempt = () => {
        const result = check();
        if (result !== undefined) {
          done();
          resolve(result);
        }
      };
      const timer = setTimeout(() => {
        done();
        reject(new Error(`timed out after ${timeoutMs} ms waiting for ${what}; ${describe()}`));
      }, timeoutMs);
      pending.add(attempt);
      attempt();
    });
  return { notify, until };
}

// Stop or restart reading a socket.io-client socket's websocket at the TCP level, as a
// frozen tab does: what the server sends piles up in the network buffers. Returns
// whether the connection is on a websocket (only those can be paused).
export function setReading(socket, reading) {
  const tcp = socket.io.engine?.transport?.ws?._socket; // ws's net.Socket (Node)
  if (!tcp) return false;
  if (reading) tcp.resume();
  else tcp.pause();
  return true;
}

function reply(message) {
  process.stdout.write(JSON.stringify(message) + "\n");
}

export function serve(ops, { name, guard = () => {} }) {
  let queue = Promise.resolve();
  const lines = createInterface({ input: process.stdin });
  lines.on("line", (line) => {
    queue = queue.then(async () => {
      let cmd = {};
      try {
        cmd = JSON.parse(line);
        if (!(cmd.op in ops)) throw new Error(`unknown op ${JSON.stringify(cmd.op)}`);
        guard(cmd);
        reply({ id: cmd.id, ok: true, ...(await ops[cmd.op](cmd)) });
      } catch (err) {
        reply({ id: cmd.id ?? null, ok: false, error: String(err?.message ?? err) });
      }
      if (cmd.op === "exit") process.exit(0);
    });
  });
  lines.on("close", () => queue.then(() => process.exit(0)));
  setTimeout(() => {
    process.stderr.write(`${name}: lifetime of ${LIFETIME_MS} ms is over\n`);
    process.exit(3);
  }, LIFETIME_MS).unref();
}
