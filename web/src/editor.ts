// The collaborative editor: CodeMirror 6 bound by y-codemirror.next to the document's
// Y.Text ("content", app/services/live_documents.py TEXT_NAME), synced by the unmodified
// y-socket.io provider on /yjs|<document id> (docs/protocol.md §6).

import { defaultKeymap, indentWithTab } from "@codemirror/commands";
import { Compartment, EditorState } from "@codemirror/state";
import { EditorView, keymap, lineNumbers, drawSelection } from "@codemirror/view";
import { yCollab, yUndoManagerKeymap } from "y-codemirror.next";
import { SocketIOProvider } from "y-socket.io";
import * as Y from "yjs";
import type { Session } from "./api";

export const TEXT_NAME = "content";

// Dark enough for white text on them (WCAG AA at the label's size).
const COLOURS = ["#1d4ed8", "#b91c1c", "#047857", "#7c3aed", "#b45309", "#be185d", "#0f766e", "#4d7c0f"];

export function colourOf(userId: string): string {
  let hash = 0;
  for (const char of userId) hash = (hash * 31 + char.charCodeAt(0)) >>> 0;
  return COLOURS[hash % COLOURS.length] ?? "#1d4ed8";
}

export interface Peer {
  clientId: number;
  name: string;
  colour: string;
}

export class CollabEditor {
  readonly doc = new Y.Doc();
  readonly provider: SocketIOProvider;
  readonly view: EditorView;
  private readonly editable = new Compartment();
  private readonly peerListeners: ((peers: Peer[]) => void)[] = [];
  private readonly statusListeners: ((text: string) => void)[] = [];

  constructor(
    parent: HTMLElement,
    documentId: string,
    session: Session,
    user: { id: string; username: string },
    readOnly: boolean,
    label: string,
  ) {
    this.provider = new SocketIOProvider(
      window.location.origin,
      documentId,
      this.doc,
      { autoConnect: true, disableBc: true },
      // The provider spreads these over its own options: the token is read at each
      // (re)connect, so a renewed one is used after a drop.
      {
        auth: (cb: (data: object) => void) => cb({ token: session.accessToken }),
        reconnectionDelayMax: 3000,
      },
    );
    const colour = colourOf(user.id);
    this.provider.awareness.setLocalStateField("user", {
      name: user.username,
      color: colour,
      colorLight: `${colour}33`,
    });
    const ytext = this.doc.getText(TEXT_NAME);
    this.view = new EditorView({
      parent,
      state: EditorState.create({
        doc: ytext.toString(),
        extensions: [
          lineNumbers(),
          drawSelection(),
          EditorView.lineWrapping,
          keymap.of([...yUndoManagerKeymap, ...defaultKeymap, indentWithTab]),
          yCollab(ytext, this.provider.awareness),
          this.editable.of(editableExtensions(!readOnly)),
          EditorView.contentAttributes.of({ "aria-label": label }),
          // The editor's styles go in a <style> element: the server's CSP admits it
          // by the nonce it put in the page for this load.
          EditorView.cspNonce.of(cspNonce()),
        ],
      }),
    });
    this.provider.awareness.on("change", () => this.announcePeers());
    this.provider.socket.on("session:ended", (body: { code: string; message: string }) => {
      if (body.code === "token_expired") {
        // The provider cannot renew its token over the socket (docs/protocol.md §6.6):
        // it is ended at expiry, and connects again with the current one.
        void session.freshToken().then(() => this.provider.connect(), () => undefined);
      } else if (body.code === "removed" || body.code === "deleted") {
        this.tell(body.code === "deleted" ? "This document was deleted." : "You were removed from this document.");
      }
    });
    this.provider.socket.on("connect_error", (error: Error & { data?: { code?: string } }) => {
      if (error.data?.code === "token_expired") {
        void session.freshToken().then(() => this.provider.connect(), () => undefined);
      }
    });
    this.provider.on("sync", (synced: boolean) => {
      this.view.dom.dataset["synced"] = String(synced);
    });
  }

  onPeers(listener: (peers: Peer[]) => void): void {
    this.peerListeners.push(listener);
  }

  onNotice(listener: (text: string) => void): void {
    this.statusListeners.push(listener);
  }

  private tell(text: string): void {
    for (const listener of this.statusListeners) listener(text);
  }

  private announcePeers(): void {
    const peers: Peer[] = [];
    for (const [clientId, state] of this.provider.awareness.getStates()) {
      const user = (state as { user?: { name?: unknown; color?: unknown } }).user;
      if (typeof user?.name !== "string") continue;
      peers.push({
        clientId,
        name: user.name,
        colour: typeof user.color === "string" ? user.color : "#444",
      });
    }
    for (const listener of this.peerListeners) listener(peers);
  }

  setReadOnly(readOnly: boolean): void {
    this.view.dispatch({ effects: this.editable.reconfigure(editableExtensions(!readOnly)) });
  }

  get text(): string {
    return this.doc.getText(TEXT_NAME).toString();
  }

  destroy(): void {
    this.provider.awareness.setLocalState(null);
    this.provider.destroy();
    this.view.destroy();
    this.doc.destroy();
  }
}

function cspNonce(): string {
  return document.querySelector<HTMLMetaElement>('meta[name="csp-nonce"]')?.content ?? "";
}

function editableExtensions(editable: boolean) {
  return [EditorView.editable.of(editable), EditorState.readOnly.of(!editable)];
}
