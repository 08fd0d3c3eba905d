// The page: sign in or register, the documents list, and a document's room (editor,
// people, chat, assistant, members). Routes live in the hash: #/ and #/d/<id>.

import "./style.css";
import { ApiError, Session, describe, type DocRole, type DocumentOut, type Member } from "./api";
import { append, clear, field, h } from "./dom";
import { CollabEditor, type Peer } from "./editor";
import { Live, type Status } from "./live";
import { Room } from "./room";

const main = document.getElementById("main") as HTMLElement;
const banner = document.getElementById("banner") as HTMLElement;
const whoami = document.getElementById("whoami") as HTMLElement;

const session = new Session();
let live: Live | null = null;
let open: { room: Room; editor: CollabEditor } | null = null;
let sessionEnded = false;

const STATUS_TEXT: Record<Status, string> = {
  connecting: "",
  online: "",
  offline: "You are offline. Your edits and messages are kept and sent when the connection is back.",
  reconnecting: "Connection lost. Reconnecting…",
  back: "Back online. Everything is in sync.",
  ended: "Your session ended. Sign in again.",
};

function showBanner(status: Status, detail: string): void {
  const text = STATUS_TEXT[status];
  banner.dataset["state"] = status;
  banner.hidden = text === "";
  banner.textContent = detail && status !== "back" ? `${text} (${detail})` : text;
}

session.onEnded(() => {
  sessionEnded = true;
  closeDocument();
  live?.close();
  live = null;
  showBanner("ended", "");
  route();
});

function closeDocument(): void {
  open?.room.destroy();
  open?.editor.destroy();
  open = null;
}

function renderWhoami(): void {
  clear(whoami);
  const user = session.user;
  whoami.hidden = user === null;
  if (user === null) return;
  const signOut = h("button", { type: "button", class: "link" }, "Sign out");
  signOut.addEventListener("click", () => {
    closeDocument();
    live?.close();
    live = null;
    void session.logout().then(route);
  });
  append(whoami, "Signed in as ", h("strong", {}, user.username), " ", signOut);
}

async function route(): Promise<void> {
  closeDocument();
  clear(main);
  if (!session.signedIn) {
    renderWhoami();
    main.append(signInView());
    return;
  }
  if (session.user === null) {
    try {
      await session.loadUser();
    } catch (error) {
      if (!session.signedIn) return; // ended: route() runs again
      main.append(h("p", { class: "error", role: "alert" }, `Could not reach the server: ${describe(error)}`));
      window.setTimeout(() => void route(), 3000);
      return;
    }
  }
  renderWhoami();
  if (sessionEnded) {
    sessionEnded = false;
    showBanner("online", "");
  }
  if (live === null) {
    live = new Live(session);
    live.onStatus(showBanner);
  }
  const match = /^#\/d\/([0-9a-f-]{36})$/.exec(window.location.hash);
  if (match?.[1] !== undefined) await documentView(match[1]);
  else main.append(await documentsView());
  main.focus();
}

// --- sign in ------------------------------------------------------------------------

function signInView(): HTMLElement {
  const username = h("input", { type: "text", name: "username", autocomplete: "username", required: true, minlength: 3, maxlength: 32 });
  const password = h("input", { type: "password", name: "password", autocomplete: "current-password", required: true, minlength: 8, maxlength: 256 });
  const error = h("p", { class: "error", role: "alert" });
  const signIn = h("button", { type: "submit", value: "login" }, "Sign in");
  const register = h("button", { type: "submit", value: "register", class: "secondary" }, "Create account");
  const form = h("form", { class: "card signin", "aria-labelledby": "signin-title" },
    h("h2", { id: "signin-title" }, "Sign in"),
    field("Username", username), field("Password", password), error,
    h("div", { class: "actions" }, signIn, register));
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const submitter = (event as SubmitEvent).submitter as HTMLButtonElement | null;
    const action = submitter?.value === "register" ? session.register(username.value, password.value) : session.login(username.value, password.value);
    error.textContent = "";
    signIn.disabled = register.disabled = true;
    void action.then(
      () => {
        sessionEnded = false;
        showBanner("online", "");
        void route();
      },
      (failure: unknown) => {
        error.textContent = failure instanceof ApiError && failure.code === "validation_failed"
          ? "Usernames are 3-32 letters, digits, _ . or -; passwords at least 8 characters."
          : describe(failure);
        signIn.disabled = register.disabled = false;
      },
    );
  });
  return form;
}

// --- documents ----------------------------------------------------------------------

async function documentsView(): Promise<HTMLElement> {
  const list = h("ul", { class: "documents", "aria-label": "Your documents" });
  const more = h("button", { type: "button", class: "secondary" }, "More documents");
  let cursor: string | null = null;
  const load = async (): Promise<void> => {
    const query = cursor === null ? "" : `&cursor=${encodeURIComponent(cursor)}`;
    const page = (await session.call("GET", `/api/v1/documents?limit=50${query}`)) as { items: DocumentOut[]; next_cursor: string | null };
    for (const doc of page.items) {
      list.append(h("li", {}, h("a", { href: `#/d/${doc.id}` }, doc.title), h("span", { class: "role" }, doc.role)));
    }
    cursor = page.next_cursor;
    more.hidden = cursor === null;
    if (list.childElementCount === 0) list.append(h("li", { class: "note" }, "No documents yet: create one."));
  };
  more.addEventListener("click", () => void load());
  const title = h("input", { type: "text", name: "title", required: true, maxlength: 200 });
  const error = h("p", { class: "error", role: "alert" });
  const create = h("form", { class: "create" }, field("New document title", title), h("button", { type: "submit" }, "Create"), error);
  create.addEventListener("submit", (event) => {
    event.preventDefault();
    void session.call("POST", "/api/v1/documents", { title: title.value }).then(
      (doc) => { window.location.hash = `#/d/${(doc as DocumentOut).id}`; },
      (failure: unknown) => { error.textContent = describe(failure); },
    );
  });
  await load();
  return h("section", { class: "card" }, h("h2", {}, "Documents"), list, more, create);
}

// --- a document -----------------------------------------------------------------------

async function documentView(documentId: string): Promise<void> {
  let doc: DocumentOut;
  try {
    doc = (await session.call("GET", `/api/v1/documents/${documentId}`)) as DocumentOut;
  } catch (error) {
    main.append(h("p", { class: "error", role: "alert" }, `Cannot open this document: ${describe(error)}`), h("a", { href: "#/" }, "Back to documents"));
    return;
  }
  const user = session.user;
  if (user === null || live === null) return;
  const roleBadge = h("span", { class: "role", id: "my-role" }, doc.role);
  const readOnlyNote = h("p", { class: "note", id: "read-only-note" }, "You are a viewer: you can read this document but not change it.");
  const editorBox = h("div", { class: "editor" });
  const peers = h("ul", { class: "peers", "aria-label": "Editing now" });
  const presence = h("section", { class: "panel", "aria-label": "People" });
  const chat = h("section", { class: "panel chat", "aria-label": "Chat" });
  const assistant = h("section", { class: "panel assistant", "aria-label": "Assistant" });
  const members = h("section", { class: "panel members", "aria-label": "Members" });
  append(main,
    h("div", { class: "doc-head" }, h("a", { href: "#/" }, "← Documents"), h("h2", { id: "doc-title" }, doc.title), roleBadge),
    h("div", { class: "room" },
      h("div", { class: "side" },
        h("section", { class: "panel doc", "aria-labelledby": "doc-title" }, readOnlyNote, editorBox,
          h("p", { class: "note" }, "Tab indents; Esc then Tab leaves the editor."), h("h3", {}, "Editing now"), peers),
        chat),
      h("div", { class: "side" }, presence, assistant, members)));
  const editor = new CollabEditor(editorBox, documentId, session, { id: user.id, username: user.username }, doc.role === "viewer", `Text of ${doc.title}`);
  editor.onPeers((list: Peer[]) => {
    clear(peers);
    for (const peer of list) {
      const dot = h("span", { class: "dot", "aria-hidden": "true" });
      dot.style.backgroundColor = peer.colour;
      peers.append(h("li", {}, dot, peer.name));
    }
  });
  editor.onNotice((text) => { readOnlyNote.hidden = false; readOnlyNote.textContent = text; editor.setReadOnly(true); });
  const room = new Room(live, session, documentId, doc.role, { presence, chat, assistant });
  const showMembers = membersPanel(members, documentId, (items) => room.knowMembers(items));
  const setRole = (role: DocRole): void => {
    roleBadge.textContent = role;
    readOnlyNote.hidden = role !== "viewer";
    editor.setReadOnly(role === "viewer");
    showMembers(role);
  };
  room.onRole(setRole);
  setRole(doc.role);
  open = { room, editor };
}

/** The members panel: the list is read again after each change; the add form stays
 * (what the owner is typing into it is not lost when the list is redrawn). Owners add
 * people by username (§3.12 POST). ``onList`` hears each list read. */
function membersPanel(section: HTMLElement, documentId: string, onList: (items: Member[]) => void): (role: DocRole) => void {
  let role: DocRole = "viewer";
  let shown = 0;
  const list = h("ul", { class: "member-list", "aria-label": "Members of this document" });
  const error = h("p", { class: "error", role: "alert" });
  const done = h("p", { class: "note", role: "status" });
  const username = h("input", { type: "text", name: "username", required: true, minlength: 3, maxlength: 32, autocomplete: "off", spellcheck: "false" });
  const newRole = roleSelect("editor");
  const add = h("form", { class: "add-member" }, field("Username", username), field("Role", newRole), h("button", { type: "submit" }, "Add member"));
  append(section, h("h2", {}, "Members"), list, error, done, add);
  const change = (promise: Promise<unknown>): void => {
    error.textContent = "";
    done.textContent = "";
    void promise.then(() => redraw(), (failure: unknown) => { error.textContent = describe(failure); });
  };
  add.addEventListener("submit", (event) => {
    event.preventDefault();
    const body = { username: username.value.trim(), role: newRole.value };
    change(session.call("POST", `/api/v1/documents/${documentId}/members`, body).then((added) => {
      const member = added as Member;
      username.value = "";
      done.textContent = `${member.username} is now ${ROLE_NOUN[member.role]}.`;
    }, (failure: unknown) => {
      if (failure instanceof ApiError && failure.code === "validation_failed") {
        throw new ApiError(failure.status, failure.code, "Usernames are 3-32 letters, digits, _ . or -.");
      }
      throw failure;
    }));
  });
  const redraw = async (): Promise<void> => {
    const mine = ++shown; // a list read before a later change must not overwrite it
    let items: Member[];
    try {
      items = ((await session.call("GET", `/api/v1/documents/${documentId}/members`)) as { items: Member[] }).items;
    } catch {
      return;
    }
    if (mine !== shown) return;
    onList(items);
    const owner = role === "owner";
    add.hidden = !owner;
    clear(list);
    for (const member of items) {
      const row = h("li", {}, h("span", {}, member.username));
      if (owner && member.user_id !== session.user?.id) {
        const select = roleSelect(member.role);
        select.setAttribute("aria-label", `Role of ${member.username}`);
        select.addEventListener("change", () => change(session.call("PUT", `/api/v1/documents/${documentId}/members/${member.user_id}`, { role: select.value })));
        const remove = h("button", { type: "button", class: "link", "aria-label": `Remove ${member.username}` }, "Remove");
        remove.addEventListener("click", () => change(session.call("DELETE", `/api/v1/documents/${documentId}/members/${member.user_id}`)));
        row.append(select, remove);
      } else {
        row.append(h("span", { class: "role" }, member.role));
      }
      list.append(row);
    }
  };
  return (current: DocRole) => {
    role = current;
    void redraw();
  };
}

const ROLE_NOUN: Record<DocRole, string> = { owner: "the owner", editor: "an editor", viewer: "a viewer" };

function roleSelect(current: DocRole): HTMLSelectElement {
  const select = h("select", { name: "role" });
  for (const role of ["viewer", "editor", "owner"] as const) {
    select.append(h("option", { value: role, selected: role === current }, role));
  }
  return select;
}

window.addEventListener("hashchange", () => void route());
void route();
