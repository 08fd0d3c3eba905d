// REST calls (docs/protocol.md §3) and the signed-in session: the token pair kept in
// localStorage, refreshed one at a time (a refresh token spent twice ends the session).

export interface Tokens {
  access_token: string;
  refresh_token: string;
  expires_in: number;
}

export interface User {
  id: string;
  username: string;
  role: string;
}

export type DocRole = "owner" | "editor" | "viewer";

export interface DocumentOut {
  id: string;
  title: string;
  owner_id: string;
  role: DocRole;
  created_at: string;
}

export interface Member {
  user_id: string;
  username: string;
  role: DocRole;
}

export interface Author {
  kind: "user" | "assistant";
  id: string | null;
  username: string | null;
}

export interface Message {
  id: string;
  document_id: string;
  seq: number;
  author: Author;
  client_msg_id: string | null;
  text: string;
  metadata: Record<string, unknown>;
  created_at: string;
  edited_at: string | null;
  deleted: boolean;
}

export class ApiError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
    /** Seconds until a `rate_limited` command would pass (its `details.retry_after`). */
    readonly retryAfter?: number,
  ) {
    super(message);
  }
}

/** An error as a person reads it. */
export function describe(error: unknown): string {
  if (error instanceof ApiError) return error.message;
  return error instanceof Error ? error.message : String(error);
}

const STORAGE_KEY = "roomserver.session";

type Listener = () => void;

/** The signed-in session; `ended` listeners hear when it can no longer be renewed. */
export class Session {
  private tokens: Tokens | null;
  private refreshing: Promise<string> | null = null;
  private readonly endedListeners: Listener[] = [];
  user: User | null = null;

  constructor() {
    const saved = localStorage.getItem(STORAGE_KEY);
    this.tokens = saved === null ? null : (JSON.parse(saved) as Tokens);
  }

  get signedIn(): boolean {
    return this.tokens !== null;
  }

  get accessToken(): string {
    return this.tokens?.access_token ?? "";
  }

  onEnded(listener: Listener): void {
    this.endedListeners.push(listener);
  }

  private store(tokens: Tokens | null): void {
    this.tokens = tokens;
    if (tokens === null) localStorage.removeItem(STORAGE_KEY);
    else localStorage.setItem(STORAGE_KEY, JSON.stringify(tokens));
  }

  async login(username: string, password: string): Promise<void> {
    const tokens = (await request("POST", "/api/v1/auth/login", { username, password })) as Tokens;
    this.store(tokens);
    await this.loadUser();
  }

  async register(username: string, password: string): Promise<void> {
    await request("POST", "/api/v1/auth/register", { username, password });
    await this.login(username, password);
  }

  async loadUser(): Promise<User> {
    this.user = (await this.call("GET", "/api/v1/auth/me")) as User;
    return this.user;
  }

  async logout(): Promise<void> {
    const tokens = this.tokens;
    this.store(null);
    this.user = null;
    if (tokens !== null) {
      await request("POST", "/api/v1/auth/logout", { refresh_token: tokens.refresh_token }).catch(
        () => undefined,
      );
    }
  }

  /** The access token if it has a while to live (another connection may have renewed
   * it already), or a refreshed one. */
  async freshToken(): Promise<string> {
    const expires = expiryOf(this.accessToken);
    return expires !== null && expires - Date.now() > 30_000 ? this.accessToken : this.refresh();
  }

  /** A fresh access token (one refresh at a time); ends the session if refused. */
  refresh(): Promise<string> {
    if (this.refreshing === null) {
      this.refreshing = this.doRefresh().finally(() => {
        this.refreshing = null;
      });
    }
    return this.refreshing;
  }

  private async doRefresh(): Promise<string> {
    const current = this.tokens;
    if (current === null) throw new ApiError(401, "unauthorized", "not signed in");
    try {
      const tokens = (await request("POST", "/api/v1/auth/refresh", {
        refresh_token: current.refresh_token,
      })) as Tokens;
      this.store(tokens);
      return tokens.access_token;
    } catch (error) {
      if (error instanceof ApiError && (error.status === 401 || error.status === 403)) {
        this.end();
      }
      throw error;
    }
  }

  /** The session cannot go on: forget it and tell the page. */
  end(): void {
    this.store(null);
    this.user = null;
    for (const listener of this.endedListeners) listener();
  }

  /** An authenticated REST call; an expired access token is refreshed once. */
  async call(method: string, path: string, body?: unknown): Promise<unknown> {
    try {
      return await request(method, path, body, this.accessToken);
    } catch (error) {
      if (error instanceof ApiError && error.code === "token_expired") {
        return request(method, path, body, await this.refresh());
      }
      if (error instanceof ApiError && error.status === 401) this.end();
      throw error;
    }
  }
}

/** A JWT's exp in milliseconds (the token is only read here; the server checks it). */
function expiryOf(token: string): number | null {
  try {
    const part = token.split(".")[1] ?? "";
    const payload = JSON.parse(atob(part.replace(/-/g, "+").replace(/_/g, "/"))) as { exp?: unknown };
    return typeof payload.exp === "number" ? payload.exp * 1000 : null;
  } catch {
    return null;
  }
}

async function request(
  method: string,
  path: string,
  body?: unknown,
  token?: string,
): Promise<unknown> {
  const headers: Record<string, string> = {};
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (token) headers["Authorization"] = `Bearer ${token}`;
  const init: RequestInit = { method, headers };
  if (body !== undefined) init.body = JSON.stringify(body);
  let response: Response;
  try {
    response = await fetch(path, init);
  } catch {
    throw new ApiError(0, "offline", "the server cannot be reached");
  }
  if (response.status === 204) return null;
  const data: unknown = await response.json().catch(() => null);
  if (!response.ok) {
    const error = (data as { error?: { code?: string; message?: string } } | null)?.error;
    throw new ApiError(
      response.status,
      error?.code ?? "http_error",
      error?.message ?? `HTTP ${response.status}`,
    );
  }
  return data;
}
