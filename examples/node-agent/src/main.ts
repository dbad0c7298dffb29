// Configuration from the environment, a demo handler, signals.
//
//   EZ_URL        the dashboard, e.g. http://localhost:8000
//   EZ_AGENT_KEY  an agent key (scope "agent", bound to this id and these queues)
//   EZ_AGENT_ID   this agent's id
//   EZ_QUEUES     queues to take from, comma-separated
//   EZ_KIND       optional, default "node"
//   EZ_MODEL      optional, default "claude-sonnet-4"
//   EZ_DEMO_DELAY_MS  optional: how long the pretend LLM call takes (default 500)

import { setTimeout as delay } from "node:timers/promises";
import { Agent, type Handler } from "./agent.js";

function env(name: string, fallback?: string): string {
  const value = process.env[name]?.trim() || fallback;
  if (value === undefined) {
    console.error(`${name} is not set`);
    process.exit(2);
  }
  return value;
}

const MODEL = env("EZ_MODEL", "claude-sonnet-4");
const DELAY_MS = Number(env("EZ_DEMO_DELAY_MS", "500"));

/** The `usage` of an Anthropic Messages API answer. */
interface AnthropicUsage {
  input_tokens: number; // WITHOUT cache reads and writes
  output_tokens: number;
  cache_read_input_tokens?: number;
  cache_creation_input_tokens?: number;
}

/** The dashboard counts input the OpenTelemetry GenAI way: cache reads and writes
 * included.  Anthropic leaves them out, so add them back. */
function fromAnthropic(u: AnthropicUsage) {
  const cached = u.cache_read_input_tokens ?? 0;
  const created = u.cache_creation_input_tokens ?? 0;
  return {
    input_tokens: u.input_tokens + cached + created,
    output_tokens: u.output_tokens,
    cached_tokens: cached,
    cache_creation_tokens: created,
    reasoning_tokens: 0,
  };
}

/** Pretend to summarize with an LLM: wait, then answer as Anthropic would.  A
 * real handler calls the provider here, passing ctx.signal to its fetch. */
const summarize: Handler = async (task, ctx) => {
  const text = String((task.payload as { text?: unknown } | null)?.text ?? "");
  const words = text.split(/\s+/).filter(Boolean);
  const started = Date.now();
  // (aborted when the lease is lost or on a forced stop: nobody wants the result)
  await delay(DELAY_MS, undefined, { signal: ctx.signal });
  const usage: AnthropicUsage = {
    input_tokens: 50 + text.length, // the fresh part of the prompt
    output_tokens: 20,
    cache_read_input_tokens: 1800, // the cached system prompt
    cache_creation_input_tokens: 200,
  };
  await ctx.usage({
    model: MODEL,
    provider: "anthropic",
    ...fromAnthropic(usage),
    latency_ms: Date.now() - started,
    status: "ok",
    error_type: null,
  });
  await ctx.log("info", "summarized", { words: words.length, model: MODEL });
  return { summary: words.slice(0, 5).join(" "), words: words.length };
};

const agent = new Agent(
  {
    url: env("EZ_URL"),
    key: env("EZ_AGENT_KEY"),
    id: env("EZ_AGENT_ID"),
    queues: env("EZ_QUEUES")
      .split(",")
      .map((q) => q.trim())
      .filter(Boolean),
    kind: env("EZ_KIND", "node"),
    model: MODEL,
    version: "0.1.0",
  },
  summarize,
);

// SIGTERM or Ctrl-C: finish the current task, then stop; a second one drops it.
let signals = 0;
for (const sig of ["SIGTERM", "SIGINT"] as const) {
  process.on(sig, () => {
    agent.say(`${sig}: stopping${signals ? " now" : " after the current task"}`);
    agent.requestStop(null, signals++ > 0);
  });
}

agent.run().then(
  () => process.exit(0),
  (e: unknown) => {
    console.error(e);
    process.exit(1);
  },
);
