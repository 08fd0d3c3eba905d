// The assistant's panel of a room (docs/protocol.md §5.6 ai:ask, ai:cancel; §5.7 ai:*):
// ask, the answers streaming in by chunk seq, cancel, usage and citations. Earlier
// answers come from the chat history, where each ended reply is stored as a message of
// the assistant (its metadata: reply_id, status, usage, asked_by, question, citations), so the
// panel shows them again after a reload, oldest first.

import { describe, type DocRole, type Message } from "./api";
import { append, clear, field, h } from "./dom";
import type { Live } from "./live";

interface Reply {
  id: string;
  askedBy: string;
  askedById: string | null;
  messageSeq: number | null; // the stored message's seq, once it ended
  question: string;
  text: string;
  seq: number;
  status: "streaming" | "completed" | "cancelled" | "failed";
  usage: Record<string, number> | null;
  citations: unknown[];
  error: string | null;
}

type Listen = <T>(event: string, handler: (payload: T) => void) => void;

export class Assistant {
  private role: DocRole = "viewer";
  private readonly replies = new Map<string, Reply>();
  private readonly question = h("textarea", { rows: 2, maxlength: 4000, name: "question" });
  private readonly askButton = h("button", { type: "submit" }, "Ask");
  private readonly askNote = h("p", { class: "note", role: "status" });
  private readonly replyList = h("ol", { class: "replies", "aria-label": "Assistant answers", "aria-live": "polite", tabindex: "0" });
  // The answer element of each reply shown, by reply id (the list as last drawn).
  private readonly answers = new Map<string, HTMLElement>();

  /** ``listen`` registers a socket handler that the room removes when it closes;
   * ``nameOf`` gives a user id's username when the room knows it. */
  constructor(
    private readonly live: Live,
    private readonly documentId: string,
    element: HTMLElement,
    private readonly listen: Listen,
    private readonly nameOf: (userId: string) => string | null,
  ) {
    const askForm = h("form", { class: "compose" }, field("Ask the assistant", this.question), this.askButton);
    askForm.addEventListener("submit", (event) => {
      event.preventDefault();
      const question = this.question.value.trim();
      if (question !== "") void this.ask(question);
    });
    append(element, h("h2", {}, "Assistant"), this.replyList, askForm, this.askNote);
    this.listen("ai:started", (event: { document_id: string; reply_id: string; asked_by: { user_id: string; username: string }; question: string }) => {
      if (event.document_id !== this.documentId) return;
      this.reply(event.reply_id, event.asked_by.username, event.question).askedById = event.asked_by.user_id;
      this.renderReplies();
    });
    this.listen("ai:chunk", (event: { document_id: string; reply_id: string; seq: number; first_seq?: number; text: string }) => {
      if (event.document_id !== this.documentId) return;
      const reply = this.reply(event.reply_id, "", "");
      const first = event.first_seq ?? event.seq;
      if (event.seq <= reply.seq || first > reply.seq + 1) return; // held already, or a gap
      reply.text += event.text;
      reply.seq = event.seq;
      const answer = this.answers.get(reply.id);
      // The text alone changes: redrawing the list on every chunk would replace the
      // Cancel button under a pointer between its press and release, and lose the click.
      if (answer === undefined) this.renderReplies();
      else this.keepingTheEnd(() => { answer.textContent = reply.text; });
    });
    const ended = (event: {
      document_id: string;
      reply_id: string;
      status: Reply["status"];
      usage?: Record<string, number>;
      error?: { message: string };
      citations?: unknown;
      message: Message | null;
    }) => {
      if (event.document_id !== this.documentId) return;
      const reply = this.reply(event.reply_id, "", "");
      reply.status = event.status;
      reply.usage = event.usage ?? null;
      reply.error = event.error?.message ?? null;
      if (Array.isArray(event.citations)) reply.citations = event.citations;
      if (event.message !== null) {
        if (event.message.text.length >= reply.text.length) reply.text = event.message.text;
        reply.messageSeq = event.message.seq;
      }
      this.renderReplies();
    };
    this.listen("ai:done", ended);
    this.listen("ai:error", ended);
  }

  /** The replies streaming when the room was joined: their text so far (join ack). */
  streaming(replies: { reply_id: string; seq: number; text: string }[]): void {
    for (const streaming of replies) {
      const reply = this.reply(streaming.reply_id, "", "");
      reply.text = streaming.text;
      reply.seq = streaming.seq;
    }
    this.renderReplies();
  }

  /** Chat messages as they arrive (history pages, live, edits, deletions): the
   * assistant's are its ended replies. A deleted one leaves the panel. */
  stored(messages: Message[]): void {
    let changed = false;
    for (const message of messages) {
      const meta = message.metadata;
      const id = meta["reply_id"];
      if (message.author.kind !== "assistant" || typeof id !== "string") continue;
      changed = true;
      if (message.deleted) {
        this.replies.delete(id);
        continue;
      }
      const reply = this.reply(id, "", "");
      const status = meta["status"];
      reply.status = status === "cancelled" || status === "failed" ? status : "completed";
      if (message.text.length >= reply.text.length) reply.text = message.text;
      reply.messageSeq = message.seq;
      if (typeof meta["asked_by"] === "string") reply.askedById = meta["asked_by"];
      if (typeof meta["question"] === "string" && reply.question === "") reply.question = meta["question"];
      if (typeof meta["usage"] === "object" && meta["usage"] !== null) reply.usage = meta["usage"] as Record<string, number>;
      if (Array.isArray(meta["citations"])) reply.citations = meta["citations"];
    }
    if (changed) this.renderReplies();
  }

  /** Names learnt since (the members list): redraw who asked. */
  namesChanged(): void {
    this.renderReplies();
  }

  setRole(role: DocRole): void {
    this.role = role;
    const writer = role !== "viewer";
    for (const control of [this.question, this.askButton]) control.disabled = !writer;
    this.askNote.textContent = writer ? "" : "Viewers can read the answers but not ask.";
    this.renderReplies();
  }

  private reply(id: string, askedBy: string, question: string): Reply {
    let reply = this.replies.get(id);
    if (reply === undefined) {
      reply = { id, askedBy, askedById: null, messageSeq: null, question, text: "", seq: 0, status: "streaming", usage: null, citations: [], error: null };
      this.replies.set(id, reply);
    } else if (askedBy !== "") {
      reply.askedBy = askedBy;
      reply.question = question;
    }
    return reply;
  }

  private async ask(question: string): Promise<void> {
    this.askNote.textContent = "";
    try {
      await this.live.command("ai:ask", { document_id: this.documentId, question });
      this.question.value = "";
    } catch (error) {
      this.askNote.textContent = `The assistant could not take the question: ${describe(error)}`;
    }
  }

  private async cancel(replyId: string): Promise<void> {
    try {
      await this.live.command("ai:cancel", { document_id: this.documentId, reply_id: replyId });
    } catch (error) {
      this.askNote.textContent = `Could not cancel: ${describe(error)}`;
    }
  }

  /** Run ``change``; a list scrolled to its end before stays at its end after. */
  private keepingTheEnd(change: () => void): void {
    const atEnd = this.replyList.scrollHeight - this.replyList.scrollTop - this.replyList.clientHeight < 40;
    change();
    if (atEnd) this.replyList.scrollTop = this.replyList.scrollHeight;
  }

  private renderReplies(): void {
    this.keepingTheEnd(() => this.drawReplies());
  }

  private drawReplies(): void {
    clear(this.replyList);
    this.answers.clear();
    const writer = this.role !== "viewer";
    // Ended replies in the room's order (their messages' seq), then those streaming.
    const order = (reply: Reply): number => reply.messageSeq ?? Number.MAX_SAFE_INTEGER;
    const replies = [...this.replies.values()].sort((a, b) => order(a) - order(b));
    for (const reply of replies) {
      const item = h("li", { class: `reply ${reply.status}`, "data-reply": reply.id, "data-status": reply.status });
      const asker = reply.askedBy || (reply.askedById === null ? null : this.nameOf(reply.askedById)) || "someone";
      if (reply.question !== "") item.append(h("p", { class: "question" }, h("strong", {}, asker), " asked: ", reply.question));
      else if (reply.askedById !== null) item.append(h("p", { class: "question" }, "Asked by ", h("strong", {}, asker)));
      const answer = h("p", { class: "answer" }, reply.text || (reply.status === "streaming" ? "…" : ""));
      this.answers.set(reply.id, answer);
      item.append(answer);
      if (reply.status === "streaming") {
        item.append(h("p", { class: "meta" }, "answering…"));
        if (writer) item.append(h("button", { type: "button", onclick: () => void this.cancel(reply.id) }, "Cancel"));
      } else {
        const usage = reply.usage;
        const tokens = usage === null ? "" : ` · ${usage["input_tokens"] ?? 0} tokens in, ${usage["output_tokens"] ?? 0} out`;
        item.append(h("p", { class: "meta usage" }, `${reply.status}${tokens}`));
        if (reply.error !== null) item.append(h("p", { class: "error" }, reply.error));
        if (reply.citations.length > 0) item.append(renderCitations(reply.citations));
      }
      this.replyList.append(item);
    }
  }
}

/** ai:done's citations: {kind, id, title, passage}; [n] in the answer is the n-th. */
export function renderCitations(citations: unknown[]): HTMLElement {
  const list = h("ol", { class: "citations", "aria-label": "Sources" });
  for (const citation of citations) {
    const item = (typeof citation === "object" && citation !== null ? citation : {}) as Record<string, unknown>;
    const text = (key: string): string | null => (typeof item[key] === "string" ? (item[key] as string) : null);
    const title = text("title") ?? text("id") ?? "a source";
    const id = text("id");
    const heading =
      text("kind") === "document" && id !== null && /^[0-9a-f-]{36}$/.test(id)
        ? h("a", { href: `#/d/${id}` }, title)
        : h("strong", {}, title);
    const passage = text("passage") ?? text("text");
    list.append(
      h("li", {}, heading, text("kind") !== null ? ` (${text("kind")})` : "", passage !== null ? h("q", {}, passage) : null),
    );
  }
  return h("div", { class: "sources" }, h("h3", {}, "Sources"), list);
}
