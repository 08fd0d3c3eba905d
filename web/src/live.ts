// The Socket.IO connection on "/" (docs/protocol.md §5): commands with acks, token
// renewal over the socket (auth:expiring -> REST refresh -> auth:refresh), and the
// connection banner (offline, reconnecting, back, session ended).

import { io, type Socket } from "socket.io-client";
import { ApiError, type Session } from "./api";

export type Status = "connecting" | "online" | "offline" | "reconnecting" | "back" | "ended";

const COMMAND_TIMEOUT_MS = 10_000;

interface Ack {
  ok: boolean;
  data?: unknown;
  error?: { code: string; message: string; details?: { retry_after?: number } };
}

export class Live {
  readonly socket: Socket;
  status: Status = "connecting";
  private everConnected = false;
  private backTimer: number | undefined;
  private readonly statusListeners: ((status: Status, detail: string) => void)[] = [];
  /** Called after every (re)connect of "/", once the socket may send commands. */
  readonly connectListeners: (() => void)[] = [];

  constructor(private readonly session: Session) {
    this.socket = io({
      // A function: each (re)connect sends the token current at that moment.
      auth: (cb) => cb({ token: session.accessToken }),
      transports: ["websocket", "polling"],
      reconnectionDelayMax: 3000,
    });
    this.socket.on("connect", () => {
      window.clearTimeout(this.backTimer);
      if (this.everConnected) {
        this.setStatus("back", "Connected again.");
        this.backTimer = window.setTimeout(() => this.setStatus("online", ""), 4000);
      } else {
        this.setStatus("online", "");
      }
      this.everConnected = true;
      for (const listener of this.connectListeners) listener();
    });
    this.socket.on("disconnect", (reason) => {
      if (this.status === "ended") return;
      if (reason === "io client disconnect") return;
      if (reason === "io server disconnect") {
        // Ended by the server; session:ended says why (handled there).
        return;
      }
      this.setStatus(navigator.onLine ? "reconnecting" : "offline", "");
    });
    this.socket.io.on("reconnect_attempt", (attempt) => {
      if (this.status === "ended") return;
      this.setStatus(navigator.onLine ? "reconnecting" : "offline", `attempt ${attempt}`);
    });
    this.socket.on("connect_error", (error: Error & { data?: { code?: string } }) => {
      const code = error.data?.code;
      if (code === "token_expired") {
        void this.session.freshToken().then(() => this.socket.connect(), () => undefined);
      } else if (code === "unauthorized" || code === "invalid_token" || code === "user_disabled") {
        this.session.end();
      } else if (code !== undefined) {
        // Refused for another reason (too many connections, unavailable): try again.
        this.setStatus("reconnecting", error.message);
        window.setTimeout(() => this.socket.connect(), 2000);
      } else if (this.status !== "ended") {
        this.setStatus(navigator.onLine ? "reconnecting" : "offline", "");
      }
    });
    this.socket.on("auth:expiring", () => void this.renew());
    this.socket.on("session:ended", (body: { code: string; message: string }) => {
      if (body.code === "token_expired") {
        void this.session.freshToken().then(() => this.socket.connect(), () => undefined);
      } else if (body.code === "slow_consumer") {
        this.setStatus("reconnecting", body.message);
      } else {
        this.session.end();
      }
    });
    window.addEventListener("offline", () => {
      if (this.status !== "ended") this.setStatus("offline", "");
    });
    window.addEventListener("online", () => {
      if (this.status !== "offline") return;
      if (this.socket.connected) {
        this.setStatus("online", ""); // the connection outlived the outage
      } else {
        this.setStatus("reconnecting", "");
        this.socket.connect();
      }
    });
  }

  onStatus(listener: (status: Status, detail: string) => void): void {
    this.statusListeners.push(listener);
  }

  setStatus(status: Status, detail: string): void {
    this.status = status;
    for (const listener of this.statusListeners) listener(status, detail);
  }

  private async renew(): Promise<void> {
    try {
      const token = await this.session.refresh();
      await this.command("auth:refresh", { token });
    } catch {
      // The session's end (if it ended) is told by Session; a transient failure is
      // retried by the next auth:expiring or the reconnect after expiry.
    }
  }

  /** Emit a command and wait for its ack; the ack's data, or ApiError. */
  async command<T>(name: string, payload: object, timeout = COMMAND_TIMEOUT_MS): Promise<T> {
    let ack: Ack;
    try {
      ack = (await this.socket.timeout(timeout).emitWithAck(name, payload)) as Ack;
    } catch {
      throw new ApiError(0, "timeout", `no answer to ${name}`);
    }
    if (!ack.ok) {
      const error = ack.error;
      throw new ApiError(0, error?.code ?? "internal", error?.message ?? "failed", error?.details?.retry_after);
    }
    return ack.data as T;
  }

  close(): void {
    this.status = "ended";
    this.socket.disconnect();
  }
}
