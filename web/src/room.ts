// One document's room on "/" (docs/protocol.md §5.5-5.9): join and catch up by seq,
// presence per user, who is typing, chat (history pages, sends retried with their
// client_msg_id, edits, deletions); the assistant's panel is assistant.ts.

import { ApiError, describe, type DocRole, type Member, type Message, type Session } from "./api";
import { Assistant, renderCitations } from "./assistant";
import { append, clear, field, h, time } from "./dom";
import type { Live } from "./live";

const PAGE = 50;
const TYPING_REPEAT_MS = 2000;
const TYPING_IDLE_MS = 3000;
const RETRY_MS = 2000;

interface PresenceEntry {
  user_id: string;
  username: string;
  connection_count: number;
  connections: { connection_id: string; state: unknown }[];
}

interface JoinAck {
  role: DocRole;
  connection_id: string;
  user: { user_id: string; username: string };
  last_seq: number;
  presence: PresenceEntry[];
  presence_more: boolean;
  messages: Message[];
  has_more: boolean;
  replies: { reply_id: string; seq: number; text: string }[];
}

interface Page {
  messages: Message[];
  has_more: boolean;
}

interface Pending {
  clientMsgId: string;
  text: string;
  error: string | null;
  inFlight: boolean;
}

export interface RoomElements {
  presence: HTMLElement;
  chat: HTMLElement;
  assistant: HTMLElement;
}

export class Room {
  role: DocRole;
  private readonly assistant: Assistant;
  private joined = false;
  private self: { userId: string; connectionId: string } | null = null; // from the join ack
  private readonly messages = new Map<number, Message>();
  private hasOlder = false;
  private loadingOlder = false;
  private readonly pending = new Map<string, Pending>();
  // Each page sets a presence state when it joins, so the connections with one are its
  // tabs (python clients that set none count once, as the user's presence).
  private readonly present = new Map<string, { username: string; tabs: Set<string> }>();
  private readonly typing = new Set<string>();
  private readonly names = new Map<string, string>(); // user id -> username, from the members list
  private editing: string | null = null;
  // Each item of the message list as last drawn, by message seq or pending client_msg_id,
  // with what it was drawn from: an item is drawn again only when that changed.
  private readonly drawn = new Map<number | string, { from: unknown[]; item: HTMLElement }>();
  private editDraft: string | null = null;
  private typingSentAt = 0;
  private typingTimer: number | undefined;
  private readonly handlers: [string, (...args: never[]) => void][] = [];
  private readonly roleListeners: ((role: DocRole) => void)[] = [];

  private readonly presenceList = h("ul", { class: "people", "aria-label": "People here" });
  private readonly typingLine = h("p", { class: "typing", "aria-live": "polite" });
  private readonly list = h("ol", { class: "messages", "aria-label": "Messages", tabindex: "0" });
  private readonly olderButton = h("button", { type: "button", class: "link" }, "Load older messages");
  private readonly input = h("textarea", { rows: 2, maxlength: 4000, name: "message" });
  private readonly sendButton = h("button", { type: "submit" }, "Send");
  private readonly chatNote = h("p", { class: "note" });

  constructor(
    private readonly live: Live,
    private readonly session: Session,
    readonly documentId: string,
    initialRole: DocRole,
    elements: RoomElements,
  ) {
    this.role = initialRole;
    this.assistant = new Assistant(
      live,
      documentId,
      elements.assistant,
      (event, handler) => this.on(event, handler),
      (userId) => this.present.get(userId)?.username ?? this.names.get(userId) ?? null,
    );
    this.assistant.setRole(initialRole);
    this.build(elements);
    this.on("chat:message", (event: { document_id: string; message: Message }) => this.upsert(event));
    this.on("chat:edited", (event: { document_id: string; message: Message }) => this.upsert(event));
    this.on("chat:deleted", (event: { document_id: string; message: Message }) => this.upsert(event));
    this.on("presence:changed", (event: { document_id: string; left: string[]; joined: { user_id: string; username: string }[] }) => {
      if (event.document_id !== this.documentId) return;
      for (const id of event.left) {
        this.present.delete(id);
        this.typing.delete(id);
      }
      for (const user of event.joined) {
        if (!this.present.has(user.user_id)) this.present.set(user.user_id, { username: user.username, tabs: new Set() });
      }
      this.renderPresence();
    });
    this.on("presence:state", (event: { document_id: string; user_id: string; connection_id: string; state: unknown }) => {
      const person = event.document_id === this.documentId ? this.present.get(event.user_id) : undefined;
      if (person === undefined) return;
      if (event.state === null) person.tabs.delete(event.connection_id);
      else person.tabs.add(event.connection_id);
      this.renderPresence();
    });
    this.on("typing", (event: { document_id: string; user_id: string; typing: boolean }) => {
      if (event.document_id !== this.documentId) return;
      if (event.typing) this.typing.add(event.user_id);
      else this.typing.delete(event.user_id);
      this.renderPresence();
    });
    this.on("room:role", (event: { document_id: string; role: DocRole }) => {
      if (event.document_id === this.documentId) this.setRole(event.role);
    });
    this.on("room:resync", (event: { document_id: string; presence: PresenceEntry[]; presence_more: boolean }) => {
      // The server lost touch with its other processes for a while (§5.7): the room's
      // presence replaces ours (its first page, then the rest), typing starts afresh,
      // and the newest page is read again for edits and deletions made meanwhile
      // (missed messages came already).
      if (event.document_id !== this.documentId) return;
      this.setPresence(event.presence);
      void this.restOfPresence(event.presence, event.presence_more).catch(() => undefined);
      void this.history({})
        .then((page) => this.merge(page.messages, false))
        .catch(() => undefined);
    });
    this.on("room:removed", (event: { document_id: string; reason: string }) => {
      if (event.document_id !== this.documentId) return;
      this.joined = false;
      this.chatNote.textContent =
        event.reason === "deleted" ? "This document was deleted." : "You no longer have access to this document.";
      this.setRole("viewer");
    });
    live.connectListeners.push(this.onConnect);
    if (live.socket.connected) this.onConnect();
  }

  private on<T>(event: string, handler: (payload: T) => void): void {
    const wrapped = handler as (...args: never[]) => void;
    this.live.socket.on(event, wrapped as never);
    this.handlers.push([event, wrapped]);
  }

  /** The document's members (main.ts reads them): who asked the assistant's earlier
   * answers, when they are not here now. */
  knowMembers(members: Member[]): void {
    for (const member of members) this.names.set(member.user_id, member.username);
    this.assistant.namesChanged();
  }

  onRole(listener: (role: DocRole) => void): void {
    this.roleListeners.push(listener);
  }

  private readonly onConnect = (): void => {
    void this.join().catch((error: unknown) => {
      this.chatNote.textContent = `Could not join the room: ${describe(error)}`;
    });
  };

  private get lastSeq(): number {
    let last = 0;
    for (const seq of this.messages.keys()) last = Math.max(last, seq);
    return last;
  }

  /** Join (again after a reconnect: catch up from the last seq held, §5.8). */
  private async join(): Promise<void> {
    const first = !this.joined;
    const ack = await this.live.command<JoinAck>("join", {
      document_id: this.documentId,
      since_seq: first ? null : this.lastSeq,
    });
    this.joined = true;
    this.self = { userId: ack.user.user_id, connectionId: ack.connection_id };
    this.setRole(ack.role);
    this.setPresence(ack.presence);
    await this.restOfPresence(ack.presence, ack.presence_more);
    void this.live
      .command("presence:update", { document_id: this.documentId, state: { page: true } })
      .catch(() => undefined);
    this.assistant.streaming(ack.replies);
    if (first) {
      const page = await this.history({});
      this.hasOlder = page.has_more;
      this.merge(page.messages, true);
    } else {
      this.merge(ack.messages, false);
      let more = ack.has_more;
      while (more) {
        const page = await this.history({ after_seq: this.lastSeq, limit: 100 });
        this.merge(page.messages, false);
        more = page.has_more;
      }
    }
    this.chatNote.textContent = "";
    for (const pending of this.pending.values()) void this.trySend(pending);
  }

  /** Everyone here, as a join ack or room:resync lists them (this tab among them). */
  private setPresence(entries: PresenceEntry[]): void {
    this.present.clear();
    this.typing.clear();
    this.addPresence(entries);
  }

  /** A large room's first page of people (a join ack's, a room:resync's): the next
   * pages, each taken as it arrives, like the first (the events after each apply to it). */
  private async restOfPresence(page: PresenceEntry[], more: boolean): Promise<void> {
    let last = page.at(-1);
    while (more && last !== undefined) {
      let next: { presence: PresenceEntry[]; more: boolean };
      try {
        next = await this.live.command("presence:list", { document_id: this.documentId, after: last.user_id });
      } catch (error) {
        if (!(error instanceof ApiError && error.code === "rate_limited")) throw error;
        // A room of thousands is more pages than the rate's burst: wait them out.
        await new Promise((resolve) => setTimeout(resolve, (error.retryAfter ?? 1) * 1000));
        continue;
      }
      this.addPresence(next.presence);
      last = next.presence.at(-1);
      more = next.more;
    }
  }

  /** People as a join ack or a presence:list page lists them, as they are now. */
  private addPresence(entries: PresenceEntry[]): void {
    for (const person of entries) {
      const tabs = new Set(person.connections.map((connection) => connection.connection_id));
      if (person.user_id === this.self?.userId) tabs.add(this.self.connectionId);
      this.present.set(person.user_id, { username: person.username, tabs });
    }
    this.renderPresence();
  }

  private history(bounds: { before_seq?: number; after_seq?: number; limit?: number }): Promise<Page> {
    return this.live.command<Page>("chat:history", { document_id: this.documentId, limit: PAGE, ...bounds });
  }

  private async loadOlder(): Promise<void> {
    if (!this.hasOlder || this.loadingOlder || this.messages.size === 0) return;
    this.loadingOlder = true;
    const before = Math.min(...this.messages.keys());
    const height = this.list.scrollHeight;
    try {
      const page = await this.history({ before_seq: before });
      this.hasOlder = page.has_more;
      this.merge(page.messages, false);
      this.list.scrollTop += this.list.scrollHeight - height; // keep the reader's place
    } catch (error) {
      this.chatNote.textContent = `Could not load older messages: ${describe(error)}`;
    } finally {
      this.loadingOlder = false;
    }
  }

  private upsert(event: { document_id: string; message: Message }): void {
    if (event.document_id === this.documentId) this.merge([event.message], false);
  }

  private merge(messages: Message[], scrollToEnd: boolean): void {
    const atEnd = this.list.scrollHeight - this.list.scrollTop - this.list.clientHeight < 40;
    for (const message of messages) this.messages.set(message.seq, message);
    this.renderMessages();
    this.assistant.stored(messages);
    if (scrollToEnd || atEnd) this.list.scrollTop = this.list.scrollHeight;
  }

  // --- sending --------------------------------------------------------------------

  private send(text: string): void {
    const pending: Pending = { clientMsgId: crypto.randomUUID(), text, error: null, inFlight: false };
    this.pending.set(pending.clientMsgId, pending);
    this.renderMessages();
    this.list.scrollTop = this.list.scrollHeight;
    void this.trySend(pending);
  }

  /** Send, and on a timeout or a dropped connection send again with the same
   * client_msg_id: the server stores it once (§5.8). */
  private async trySend(pending: Pending): Promise<void> {
    if (pending.inFlight || !this.joined || !this.live.socket.connected) return;
    pending.inFlight = true;
    pending.error = null;
    try {
      const ack = await this.live.command<{ id: string; seq: number; created_at: string }>("chat:send", {
        document_id: this.documentId,
        client_msg_id: pending.clientMsgId,
        text: pending.text,
      });
      this.pending.delete(pending.clientMsgId);
      const user = this.session.user;
      this.merge(
        [
          {
            id: ack.id,
            document_id: this.documentId,
            seq: ack.seq,
            author: { kind: "user", id: user?.id ?? null, username: user?.username ?? null },
            client_msg_id: pending.clientMsgId,
            text: pending.text,
            metadata: {},
            created_at: ack.created_at,
            edited_at: null,
            deleted: false,
          },
        ],
        true,
      );
    } catch (error) {
      pending.inFlight = false;
      const code = error instanceof ApiError ? error.code : "";
      if (code === "timeout" || code === "internal" || code === "rate_limited" || code === "not_joined") {
        window.setTimeout(() => void this.trySend(pending), RETRY_MS);
      } else {
        pending.error = describe(error);
      }
      this.renderMessages();
    }
  }

  private typed(): void {
    window.clearTimeout(this.typingTimer);
    if (this.input.value.trim() === "") {
      this.stopTyping();
      return;
    }
    const now = Date.now();
    if (now - this.typingSentAt > TYPING_REPEAT_MS && this.joined) {
      this.typingSentAt = now;
      void this.live.command("typing", { document_id: this.documentId, typing: true }).catch(() => undefined);
    }
    this.typingTimer = window.setTimeout(() => this.stopTyping(), TYPING_IDLE_MS);
  }

  private stopTyping(): void {
    window.clearTimeout(this.typingTimer);
    if (this.typingSentAt === 0) return;
    this.typingSentAt = 0;
    if (this.joined) {
      void this.live.command("typing", { document_id: this.documentId, typing: false }).catch(() => undefined);
    }
  }

  private async edit(message: Message, text: string): Promise<void> {
    try {
      const ack = await this.live.command<{ message: Message }>("chat:edit", {
        document_id: this.documentId,
        message_id: message.id,
        text,
      });
      this.editing = null;
      this.editDraft = null;
      this.merge([ack.message], false);
    } catch (error) {
      this.chatNote.textContent = `Could not edit: ${describe(error)}`;
    }
  }

  private async remove(message: Message): Promise<void> {
    if (!window.confirm("Delete this message?")) return;
    try {
      const ack = await this.live.command<{ message: Message }>("chat:delete", {
        document_id: this.documentId,
        message_id: message.id,
      });
      this.merge([ack.message], false);
    } catch (error) {
      this.chatNote.textContent = `Could not delete: ${describe(error)}`;
    }
  }


  // --- rendering ------------------------------------------------------------------

  private setRole(role: DocRole): void {
    this.role = role;
    const writer = role !== "viewer";
    for (const control of [this.input, this.sendButton]) control.disabled = !writer;
    this.assistant.setRole(role);
    this.chatNote.textContent = writer ? this.chatNote.textContent : "You are a viewer: you can read the chat.";
    for (const listener of this.roleListeners) listener(role);
    this.renderMessages();
  }

  private build(elements: RoomElements): void {
    append(elements.presence, h("h2", {}, "Here now"), this.presenceList, this.typingLine);

    this.olderButton.addEventListener("click", () => void this.loadOlder());
    this.list.addEventListener("scroll", () => {
      if (this.list.scrollTop < 40) void this.loadOlder();
    });
    this.input.addEventListener("input", () => this.typed());
    this.input.addEventListener("keydown", (event) => {
      if (event.key === "Enter" && !event.shiftKey) {
        event.preventDefault();
        form.requestSubmit();
      }
    });
    const form = h("form", { class: "compose" }, field("Your message", this.input), this.sendButton);
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      const text = this.input.value;
      if (text.trim() === "") return;
      this.input.value = "";
      this.stopTyping();
      this.send(text);
    });
    append(elements.chat, h("h2", {}, "Chat"), this.olderButton, this.list, this.chatNote, form);

  }

  private renderPresence(): void {
    clear(this.presenceList);
    const me = this.session.user?.id;
    const people = [...this.present.entries()].sort((a, b) => a[1].username.localeCompare(b[1].username));
    for (const [id, person] of people) {
      const typing = this.typing.has(id) && id !== me;
      append(
        this.presenceList,
        h(
          "li",
          { "data-user": person.username },
          person.username,
          id === me ? " (you)" : "",
          person.tabs.size > 1 ? ` · ${person.tabs.size} tabs` : "",
          typing ? h("span", { class: "badge" }, " typing…") : null,
        ),
      );
    }
    const names = [...this.typing].filter((id) => id !== me).map((id) => this.present.get(id)?.username ?? "someone");
    this.typingLine.textContent =
      names.length === 0 ? "" : `${names.join(", ")} ${names.length === 1 ? "is" : "are"} typing…`;
  }

  /** The message list brought up to date, item by item: an item whose message, pending
   * send or controls did not change stays the same element, so a busy room neither
   * redraws its whole history on each message nor replaces a button under the pointer
   * (a click whose press and release fall on two elements is lost). */
  private renderMessages(): void {
    this.olderButton.hidden = !this.hasOlder;
    const me = this.session.user?.id;
    const wanted: HTMLElement[] = [];
    const kept = new Set<number | string>();
    const draw = (key: number | string, from: unknown[], make: () => HTMLElement): void => {
      let entry = this.drawn.get(key);
      if (entry === undefined || entry.from.some((value, n) => value !== from[n])) {
        entry = { from, item: make() };
        this.drawn.set(key, entry);
      }
      kept.add(key);
      wanted.push(entry.item);
    };
    for (const seq of [...this.messages.keys()].sort((a, b) => a - b)) {
      const message = this.messages.get(seq);
      if (message === undefined) continue;
      draw(seq, [message, this.editing === message.id, this.role, me], () => this.renderMessage(message, me));
    }
    for (const pending of this.pending.values()) {
      draw(pending.clientMsgId, [pending.text, pending.error], () => this.renderPending(pending));
    }
    for (const key of this.drawn.keys()) if (!kept.has(key)) this.drawn.delete(key);
    // Into place in order: items already there stay; new ones (mostly at the end) go in.
    let at = this.list.firstElementChild;
    for (const item of wanted) {
      if (item === at) at = at.nextElementSibling;
      else this.list.insertBefore(item, at);
    }
    while (at !== null) {
      const next = at.nextElementSibling;
      at.remove();
      at = next;
    }
  }

  private renderPending(pending: Pending): HTMLElement {
    const item = h(
      "li",
      { class: "message pending", "data-client-msg-id": pending.clientMsgId },
      h("span", { class: "who" }, this.session.user?.username ?? "you"),
      h("span", { class: "text" }, pending.text),
      h("span", { class: "meta" }, pending.error === null ? "sending…" : `not sent: ${pending.error}`),
    );
    if (pending.error !== null) {
      item.append(
        h("button", { type: "button", class: "link", onclick: () => void this.trySend(pending) }, "Retry"),
        h("button", {
          type: "button",
          class: "link",
          onclick: () => {
            this.pending.delete(pending.clientMsgId);
            this.renderMessages();
          },
        }, "Discard"),
      );
    }
    return item;
  }

  private renderMessage(message: Message, me: string | undefined): HTMLElement {
    const mine = message.author.kind === "user" && message.author.id === me;
    const who = message.author.kind === "assistant" ? "Assistant" : (message.author.username ?? "someone");
    const item = h("li", { class: `message${message.author.kind === "assistant" ? " ai" : ""}`, "data-seq": message.seq });
    item.append(h("span", { class: "who" }, who), h("time", { datetime: message.created_at, class: "meta" }, time(message.created_at)));
    if (message.deleted) {
      item.append(h("span", { class: "text deleted" }, "message deleted"));
      return item;
    }
    if (this.editing === message.id) {
      // Kept across a redraw of this message (edited or deleted meanwhile, say).
      const box = h("input", { type: "text", value: this.editDraft ?? message.text, "aria-label": "Edit message", maxlength: 4000 });
      box.addEventListener("input", () => { this.editDraft = box.value; });
      const form = h("form", { class: "inline" }, box, h("button", { type: "submit" }, "Save"),
        h("button", { type: "button", onclick: () => { this.editing = null; this.editDraft = null; this.renderMessages(); } }, "Cancel"));
      form.addEventListener("submit", (event) => {
        event.preventDefault();
        if (box.value.trim() !== "") void this.edit(message, box.value);
      });
      item.append(form);
      queueMicrotask(() => box.focus());
      return item;
    }
    item.append(h("span", { class: "text" }, message.text));
    if (message.edited_at !== null) item.append(h("span", { class: "meta" }, "(edited)"));
    const cited = message.metadata["citations"];
    if (message.author.kind === "assistant" && Array.isArray(cited) && cited.length > 0) {
      item.append(renderCitations(cited));
    }
    const writer = this.role !== "viewer";
    if (mine && writer) {
      item.append(h("button", { type: "button", class: "link", "aria-label": `Edit message ${message.seq}`, onclick: () => { this.editing = message.id; this.editDraft = null; this.renderMessages(); } }, "Edit"));
    }
    if (writer && (mine || this.role === "owner")) {
      item.append(h("button", { type: "button", class: "link", "aria-label": `Delete message ${message.seq}`, onclick: () => void this.remove(message) }, "Delete"));
    }
    return item;
  }


  destroy(): void {
    const index = this.live.connectListeners.indexOf(this.onConnect);
    if (index >= 0) this.live.connectListeners.splice(index, 1);
    for (const [event, handler] of this.handlers) this.live.socket.off(event, handler as never);
    this.stopTyping();
    if (this.joined && this.live.socket.connected) {
      void this.live.command("leave", { document_id: this.documentId }).catch(() => undefined);
    }
  }
}


