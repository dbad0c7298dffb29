// The agent gateway (/api/agent/v1) over the global fetch, with retries.
//
// Network errors, 5xx and 429 are retried with exponential back-off and full
// jitter (a 429 or 503 waits at least its Retry-After); any other answer is
// returned to the caller, which decides what a 404 or a 409 means.

import { setTimeout as delay } from "node:timers/promises";

export interface Lease {
  token: string;
  expires_at: string;
}

export interface Task {
  id: string;
  type: string;
  queue: string;
  payload: unknown;
  attempt: number;
  lease: Lease;
}

export interface Command {
  id: string;
  action: "restart" | "stop";
  force: boolean;
  status: string;
}

export interface Registered {
  agent: { id: string; restarts: number };
  settings: { heartbeat_interval_s: number; visibility_timeout_s: number };
}

export interface HeartbeatAnswer {
  commands: Command[];
  lost: string[];
}

export interface UsageEvent {
  ts: string; // RFC 3339
  model: string;
  provider: string;
  input_tokens: number; // includes cached and cache-creation tokens (OpenTelemetry GenAI)
  output_tokens: number;
  cached_tokens: number;
  cache_creation_tokens: number;
  reasoning_tokens: number;
  latency_ms: number;
  status: "ok" | "error";
  error_type: string | null;
  task_id: string | null;
}

export interface LogEntry {
  level: "debug" | "info" | "warning" | "error";
  message: string;
  task_id?: string;
  fields?: Record<string, unknown>;
}

export interface Answer<T> {
  status: number;
  body: T;
}

export class GatewayError extends Error {
  constructor(
    readonly status: number,
    readonly body: unknown,
    what: string,
  ) {
    super(`${what}: HTTP ${status} ${JSON.stringify(body)}`);
  }
}

interface RequestOptions {
  retries?: number; // attempts after the first; default 6
  signal?: AbortSignal; // aborting ends the request and its retries
  headers?: Record<string, string>;
}

/** Resolves after ms, or at once when the signal aborts (it never rejects). */
export const sleep = (ms: number, signal?: AbortSignal): Promise<void> =>
  delay(ms, undefined, signal ? { signal } : {}).catch(() => undefined);

/** Seconds of a Retry-After header (delta-seconds or an HTTP date), in ms. */
function retryAfterMs(header: string | null): number {
  if (header === null) return 0;
  const s = Number(header);
  if (Number.isFinite(s)) return Math.max(0, s * 1000);
  const at = Date.parse(header);
  return Number.isNaN(at) ? 0 : Math.max(0, at - Date.now());
}

export class Gateway {
  private readonly base: string;

  constructor(
    url: string,
    private readonly key: string,
    readonly agentId: string,
  ) {
    this.base = `${url.replace(/\/+$/, "")}/api/agent/v1`;
  }

  async request<T>(
    method: string,
    path: string,
    body: unknown,
    opts: RequestOptions = {},
  ): Promise<Answer<T>> {
    const retries = opts.retries ?? 6;
    for (let attempt = 0; ; attempt++) {
      let wait: number;
      try {
        const init: RequestInit = {
          method,
          headers: {
            Authorization: `Bearer ${this.key}`,
            "Content-Type": "application/json",
            ...opts.headers,
          },
          body: JSON.stringify(body),
        };
        if (opts.signal !== undefined) init.signal = opts.signal;
        const r = await fetch(this.base + path, init);
        const text = await r.text();
        if (r.status < 500 && r.status !== 429) {
          return { status: r.status, body: (text ? JSON.parse(text) : null) as T };
        }
        if (attempt >= retries) throw new GatewayError(r.status, text, `${method} ${path}`);
        wait = retryAfterMs(r.headers.get("Retry-After"));
      } catch (e) {
        if (opts.signal?.aborted || e instanceof GatewayError || attempt >= retries) throw e;
        wait = 0; // a network error: the connection failed or was cut
      }
      // full jitter over 0.2 s * 2^attempt, capped at 10 s; never sooner than Retry-After
      const backoff = Math.random() * Math.min(10_000, 200 * 2 ** attempt);
      await sleep(Math.max(wait, backoff), opts.signal);
      if (opts.signal?.aborted) throw opts.signal.reason;
    }
  }

  private agentPath(tail = ""): string {
    return `/agents/${encodeURIComponent(this.agentId)}${tail}`;
  }

  private async ok<T>(what: string, a: Promise<Answer<T>>, want = 200): Promise<T> {
    const r = await a;
    if (r.status !== want) throw new GatewayError(r.status, r.body, what);
    return r.body;
  }

  register(doc: Record<string, unknown>): Promise<Registered> {
    return this.ok("register", this.request("PUT", this.agentPath(), doc));
  }

  /** Null when the server no longer knows this agent (it must register again). */
  async heartbeat(body: {
    status: string;
    current_task: string | null;
    tasks: { task_id: string; token: string }[];
  }): Promise<HeartbeatAnswer | null> {
    // one retry only: the next beat is never far away
    const r = await this.request<HeartbeatAnswer>("POST", this.agentPath("/heartbeat"), body, {
      retries: 1,
    });
    if (r.status === 404) return null;
    if (r.status !== 200) throw new GatewayError(r.status, r.body, "heartbeat");
    return r.body;
  }

  /** A long poll: the next task of these queues, or null after waitS seconds. */
  async take(queues: string[], waitS: number, signal: AbortSignal): Promise<Task | null> {
    const r = await this.request<{ task: Task }>(
      "POST",
      this.agentPath("/take"),
      { queues, wait_s: waitS },
      { signal },
    );
    if (r.status === 204) return null;
    if (r.status !== 200) throw new GatewayError(r.status, r.body, "take");
    return r.body.task;
  }

  /** False when the lease was lost (the task was reclaimed or cancelled). */
  async finish(taskId: string, body: Record<string, unknown>): Promise<boolean> {
    const r = await this.request("POST", `/tasks/${encodeURIComponent(taskId)}/finish`, body);
    if (r.status === 409) return false;
    if (r.status !== 200) throw new GatewayError(r.status, r.body, "finish");
    return true;
  }

  /** Returns false when the command is no longer in a state that allows this report. */
  async report(
    commandId: string,
    status: "acknowledged" | "completed" | "failed",
    error?: string,
  ): Promise<boolean> {
    const r = await this.request("POST", `/commands/${encodeURIComponent(commandId)}`, {
      status,
      error: error ?? null,
    });
    if (r.status === 409 || r.status === 404) return false;
    if (r.status !== 200) throw new GatewayError(r.status, r.body, "command report");
    return true;
  }

  // Batches carry an Idempotency-Key, so a retried batch is counted once.
  usage(events: UsageEvent[]): Promise<unknown> {
    const headers = { "Idempotency-Key": crypto.randomUUID() };
    const sent = this.request("POST", this.agentPath("/usage"), events, { headers });
    return this.ok("usage", sent, 202);
  }

  logs(entries: LogEntry[]): Promise<unknown> {
    const headers = { "Idempotency-Key": crypto.randomUUID() };
    const sent = this.request("POST", this.agentPath("/logs"), entries, { headers });
    return this.ok("logs", sent, 202);
  }
}
