// The agent: register, heartbeat, take, run, finish; obey restart and stop.
//
// Two loops share this object.  The heartbeat loop renews the lease of the task
// being run, hears of leases lost and picks up commands; the work loop long-polls
// for a task, runs the handler and finishes it.  The work loop is the only one
// that acts on a command, between tasks, so "let the running task finish" is
// simply where a command is looked at.

import { hostname } from "node:os";
import {
  type Command,
  Gateway,
  type LogEntry,
  sleep,
  type Task,
  type UsageEvent,
} from "./gateway.js";

export interface AgentConfig {
  url: string;
  key: string;
  id: string;
  queues: string[];
  kind: string;
  model: string | null;
  version: string;
}

/** What a handler may do besides returning its result. */
export interface TaskContext {
  /** Aborted when the lease is lost or the agent is stopped by force: give up. */
  signal: AbortSignal;
  usage(call: Omit<UsageEvent, "ts" | "task_id">): Promise<void>;
  log(level: LogEntry["level"], message: string, fields?: Record<string, unknown>): Promise<void>;
}

export type Handler = (task: Task, ctx: TaskContext) => Promise<unknown>;

type Status = "idle" | "busy" | "restarting" | "stopping" | "stopped";

interface Running {
  task: Task;
  lost: boolean;
  abort: AbortController;
}

const TAKE_WAIT_S = 20;

export class Agent {
  private readonly gw: Gateway;
  private status: Status = "idle";
  private intervalMs = 5_000;
  private running: Running | null = null;
  private restart: Command | null = null;
  private stop: { command: Command | null; force: boolean } | null = null;
  private taking = new AbortController(); // aborts the long poll in progress
  private readonly beats = new AbortController(); // ends the heartbeat loop
  private readonly seen = new Set<string>(); // commands already acted on

  constructor(
    private readonly cfg: AgentConfig,
    private readonly handler: Handler,
  ) {
    this.gw = new Gateway(cfg.url, cfg.key, cfg.id);
  }

  say(message: string): void {
    console.log(`${new Date().toISOString()} ${this.cfg.id}: ${message}`);
  }

  /** Runs until stopped (a stop command or requestStop); resolves once stopped. */
  async run(): Promise<void> {
    await this.register();
    const heartbeats = this.heartbeatLoop();
    while (this.stop === null) {
      if (this.restart !== null) {
        await this.doRestart(this.restart);
        continue;
      }
      const task = await this.takeOne();
      if (task !== null) await this.runTask(task);
    }
    this.beats.abort();
    await heartbeats;
    await this.shutdown(this.stop.command);
  }

  /** Graceful (finish the current task) or forced (drop it: the server reclaims it). */
  requestStop(command: Command | null, force: boolean): void {
    this.stop = { command, force: force || (this.stop?.force ?? false) };
    this.status = "stopping";
    this.taking.abort();
    if (force) this.running?.abort.abort();
  }

  private async register(): Promise<void> {
    const { cfg } = this;
    const answer = await this.gw.register({
      name: cfg.id,
      kind: cfg.kind,
      model: cfg.model,
      host: hostname(),
      version: cfg.version,
      queues: cfg.queues,
      tags: { lang: "typescript", runtime: `node ${process.version}` },
    });
    this.intervalMs = answer.settings.heartbeat_interval_s * 1000;
    this.say(`registered; heartbeat every ${this.intervalMs} ms`);
  }

  // -- the heartbeat loop ----------------------------------------------------------
  private async heartbeatLoop(): Promise<void> {
    while (!this.beats.signal.aborted) {
      try {
        await this.beat();
      } catch (e) {
        this.say(`heartbeat failed: ${String(e)}`);
      }
      await sleep(this.intervalMs, this.beats.signal);
    }
  }

  private async beat(): Promise<void> {
    const held = this.running;
    const answer = await this.gw.heartbeat({
      status: this.status,
      current_task: held?.task.id ?? null,
      tasks: held ? [{ task_id: held.task.id, token: held.task.lease.token }] : [],
    });
    if (answer === null) {
      this.say("the server does not know this agent: registering again");
      await this.register();
      return;
    }
    if (held && answer.lost.includes(held.task.id)) {
      this.say(`lost the lease of ${held.task.id}: its result will be dropped`);
      held.lost = true;
      held.abort.abort();
    }
    for (const cmd of answer.commands) {
      if (this.seen.has(cmd.id)) continue;
      this.seen.add(cmd.id);
      await this.accept(cmd);
    }
  }

  /** Acknowledge first, then hand the command to the work loop. */
  private async accept(cmd: Command): Promise<void> {
    if (cmd.status === "pending" && !(await this.gw.report(cmd.id, "acknowledged"))) return;
    this.say(`command ${cmd.action}${cmd.force ? " (force)" : ""} acknowledged`);
    if (cmd.action === "stop") {
      this.requestStop(cmd, cmd.force);
    } else if (cmd.action === "restart") {
      this.restart = cmd;
      this.taking.abort();
    } else {
      await this.gw.report(cmd.id, "failed", `unknown action ${String(cmd.action)}`);
    }
  }

  // -- the work loop ---------------------------------------------------------------
  private async takeOne(): Promise<Task | null> {
    this.taking = new AbortController();
    const { signal } = this.taking;
    try {
      return await this.gw.take(this.cfg.queues, TAKE_WAIT_S, signal);
    } catch (e) {
      if (!signal.aborted) {
        this.say(`take failed: ${String(e)}`);
        await sleep(1_000, signal);
      }
      return null;
    }
  }

  private async runTask(task: Task): Promise<void> {
    const held: Running = { task, lost: false, abort: new AbortController() };
    this.running = held;
    this.status = "busy";
    this.say(`took ${task.id} (attempt ${task.attempt})`);
    let outcome: Record<string, unknown>;
    try {
      const result = await this.handler(task, this.context(task, held.abort.signal));
      outcome = { status: "succeeded", result };
    } catch (e) {
      const err = e instanceof Error ? e : new Error(String(e));
      outcome = { status: "failed", error: { type: err.name, message: err.message } };
    } finally {
      this.running = null;
      if (this.status === "busy") this.status = "idle";
    }
    if (held.lost) return; // another attempt owns the task now
    if (this.stop?.force) return; // forced stop: not finished, the server reclaims it
    try {
      const finished = await this.gw.finish(task.id, { token: task.lease.token, ...outcome });
      this.say(finished ? `${task.id} ${String(outcome.status)}` : `${task.id}: lease lost`);
    } catch (e) {
      this.say(`finishing ${task.id} failed (the server will reclaim it): ${String(e)}`);
    }
  }

  private context(task: Task, signal: AbortSignal): TaskContext {
    return {
      signal,
      usage: async (call) => {
        await this.gw.usage([{ ...call, ts: new Date().toISOString(), task_id: task.id }]);
      },
      log: async (level, message, fields) => {
        await this.gw.logs([{ level, message, task_id: task.id, ...(fields ? { fields } : {}) }]);
      },
    };
  }

  private async doRestart(cmd: Command): Promise<void> {
    this.restart = null;
    this.status = "restarting";
    this.say("restarting");
    try {
      await this.register(); // re-initialise: new settings, the same id
      this.status = "idle";
      await this.gw.report(cmd.id, "completed");
      this.say("restarted");
    } catch (e) {
      this.status = "idle";
      await this.gw.report(cmd.id, "failed", String(e)).catch(() => false);
    }
  }

  private async shutdown(cmd: Command | null): Promise<void> {
    if (cmd !== null) await this.gw.report(cmd.id, "completed");
    this.status = "stopped";
    await this.gw.heartbeat({ status: "stopped", current_task: null, tasks: [] });
    this.say("stopped");
  }
}
