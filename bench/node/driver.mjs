// The command loop every load generator here runs (README.md): one JSON request per
// line on stdin, one JSON reply line per request on stdout, requests one at a time and
// in order so that replies match requests line for line; diagnostics on stderr.
import { createInterface } from "node:readline";

const reply = (obj) => new Promise((resolve) => process.stdout.write(JSON.stringify(obj) + "\n", resolve));

// `handlers[op](req)` answers a request; `exit` calls `closeAll()`, replies and exits 0.
export function serve(name, handlers, closeAll) {
  let queue = Promise.resolve();
  const input = createInterface({ input: process.stdin, terminal: false });
  input.on("line", (line) => {
    if (!line.trim()) return;
    queue = queue.then(async () => {
      let req;
      try { req = JSON.parse(line); } catch { return reply({ ok: false, error: "bad JSON" }); }
      if (req.op === "exit") { closeAll(); await reply({ ok: true }); process.exit(0); }
      const handler = handlers[req.op];
      if (!handler) return reply({ ok: false, error: `unknown op ${JSON.stringify(req.op)}` });
      try {
        await reply(await handler(req));
      } catch (err) {
        await reply({ ok: false, error: String(err?.stack ?? err) });
      }
    });
  });
  input.on("close", () => process.exit(0)); // the parent is gone: nobody to reply to
  process.on("SIGTERM", () => process.exit(0));
  process.on("uncaughtException", (err) => console.error(`${name}:`, err));
}
