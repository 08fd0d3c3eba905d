// The Node baseline: a plain socket.io 4 relay with the same two events as
// bench/servers/plain_socketio.py, on socket.io's defaults (no per-message
// deflate, default maxHttpBufferSize, no auth). Usage: node server.mjs PORT [BACKLOG]
//
// BACKLOG (default 0): each join is answered with that many chat messages in
// roomserver's wire shape (app/wire.py), what a join with catch-up brings there.
// A broadcast goes out in the envelope roomserver's presence:state has (room,
// user and connection ids around the sender's payload), so that every server in a
// comparison sends each client the same bytes.
import { randomUUID } from "node:crypto";
import { createServer } from "node:http";
import { Server } from "socket.io";

const port = Number(process.argv[2]);
const backlog = Number(process.argv[3] ?? 0);
if (!Number.isInteger(port) || port <= 0 || !Number.isInteger(backlog) || backlog < 0) {
  console.error("usage: node server.mjs PORT [BACKLOG]");
  process.exit(2);
}

const USER_ID = "00000000-0000-4000-8000-000000000000"; // as long as roomserver's ids

// The backlog, made once (roomserver too reads and encodes a page once for a crowd);
// each text as long as bench/node/loadgen.mjs's chat texts.
const documentId = randomUUID();
const messages = Array.from({ length: backlog }, (_, i) => ({
  id: randomUUID(),
  document_id: documentId,
  seq: i + 1,
  author: { kind: "user", id: USER_ID, username: "join0" },
  client_msg_id: `backlog-${i}`,
  text: JSON.stringify({ t: Date.now(), n: i, pad: "x".repeat(60) }),
  metadata: {},
  created_at: new Date().toISOString(),
  edited_at: null,
  deleted: false,
}));
const joined = backlog ? { ok: true, data: { messages } } : { ok: true }; // roomserver's envelope

const httpServer = createServer();
const io = new Server(httpServer, { cors: { origin: "*" } });

io.on("connection", (socket) => {
  let room = null; // the one room this socket joined; broadcasts go there

  socket.on("join", (payload, ack) => {
    const wanted = payload && typeof payload.room === "string" ? payload.room : null;
    if (wanted === null) {
      if (typeof ack === "function") ack({ ok: false, error: "room required" });
      return;
    }
    if (room !== null && room !== wanted) socket.leave(room);
    room = wanted;
    socket.join(room);
    if (typeof ack === "function") ack(joined);
  });

  socket.on("broadcast", (payload, ack) => {
    // Everyone in the sender's room except the sender.
    if (room !== null) {
      socket.to(room).emit("broadcast", {
        document_id: room, user_id: USER_ID, connection_id: socket.id, state: payload,
      });
    }
    if (typeof ack === "function") ack({ ok: true });
  });
});

const stop = () => {
  io.close(); // also closes httpServer
  process.exit(0);
};
process.on("SIGTERM", stop);
process.on("SIGINT", stop);

httpServer.listen(port, "127.0.0.1", () => {
  process.stdout.write(`listening ${port}\n`);
});
