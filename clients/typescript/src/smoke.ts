/**
 * The frontend's path through the contract, against a live server: list agents,
 * create a task, read it back.  Prints one JSON line of what it saw; exits non-zero
 * (with the problem JSON) on any refusal.
 *
 *   EZ_BASE=http://127.0.0.1:8888 EZ_KEY=ezk_... node dist/smoke.js
 */
import { dashboardClient, type Problem } from "./client.js";

function fail(what: string, status: number, problem: Problem | undefined): never {
  console.error(`${what}: HTTP ${status} ${JSON.stringify(problem)}`);
  process.exit(1);
}

async function main(): Promise<void> {
  const baseUrl = process.env["EZ_BASE"];
  const credential = process.env["EZ_KEY"];
  if (!baseUrl || !credential) {
    console.error("set EZ_BASE and EZ_KEY");
    process.exit(2);
  }
  const api = dashboardClient({ baseUrl, credential });

  const agents = await api.GET("/api/agents", { params: { query: { limit: 10 } } });
  if (!agents.data) fail("GET /api/agents", agents.response.status, agents.error);
  const agentIds = agents.data.items.map((a) => a.id);

  const created = await api.POST("/api/tasks", {
    body: { type: "smoke", queue: "smoke", payload: { from: "typescript" }, priority: 5 },
    params: { header: { "Idempotency-Key": "ts-smoke-1" } },
  });
  if (!created.data) fail("POST /api/tasks", created.response.status, created.error);
  const task = created.data.task;

  const read = await api.GET("/api/tasks/{task_id}", {
    params: { path: { task_id: task.id } },
  });
  if (!read.data) fail("GET /api/tasks/{task_id}", read.response.status, read.error);

  const missing = await api.GET("/api/tasks/{task_id}", {
    params: { path: { task_id: "tsk_00000000000000000000000000" } },
  });
  const problem: Problem | undefined = missing.error;

  console.log(
    JSON.stringify({
      agents: agentIds,
      created: { id: task.id, status: task.status, queue: task.queue },
      read: { id: read.data.id, type: read.data.type, payload: read.data.payload },
      missing: { status: missing.response.status, type: problem?.type },
    }),
  );
}

await main();
