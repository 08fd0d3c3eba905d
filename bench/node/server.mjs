// The Node baseline: a plain socket.io 4 relay with the same two events as
// bench/servers/plain_socketio.py, on socket.io's defaults (no per-message
// deflate, default maxHttpBufferSize, no auth). Usage: node server.mjs PORT
//
// A broadcast goes out in the envelope roomserver's presence:state has (room,
// user and connection ids around the sender's payload), so that every server in a
// comparison sends each client the same bytes.
import { createServer } from "node:http";
import { Server } from "socket.io";

const port = Number(process.argv[2]);
if (!Number.isInteger(port) || port <= 0) {
  console.error("usage: node server.mjs PORT");
  process.exit(2);
}

const USER_ID = "00000000-0000-4000-8000-000000000000"; // as long as roomserver's ids

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
    if (typeof ack === "function") ack({ ok: true });
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
