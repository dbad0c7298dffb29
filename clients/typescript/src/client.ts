/**
 * A typed client for the EzAugent Dashboard API.
 *
 * `schema.d.ts` is generated from the OpenAPI document the server serves
 * (`ezdash openapi`); the test suite regenerates it from a live server and fails when
 * the committed copy differs, so code compiled against these types compiles against
 * what the server really accepts and answers.
 */
import createClient, { type Client, type Middleware } from "openapi-fetch";

import type { components, paths } from "./schema.js";

export type { components, paths };
export type Schemas = components["schemas"];

/** RFC 9457 problem JSON, the body of every 4xx and 5xx answer. */
export type Problem = Schemas["Problem"];

export interface ClientOptions {
  /** Base URL of the server, e.g. `http://127.0.0.1:8888`. */
  baseUrl: string;
  /** An API key (`ezk_...`) or a JWT from `POST /api/auth/token`. */
  credential: string;
  /** Passed to every request (tests give a stub here; the default is global fetch). */
  fetch?: typeof globalThis.fetch;
}

export type DashboardClient = Client<paths>;

/** A client that sends the credential as a Bearer token on every request. */
export function dashboardClient(options: ClientOptions): DashboardClient {
  const client = createClient<paths>({
    baseUrl: options.baseUrl,
    ...(options.fetch ? { fetch: options.fetch } : {}),
  });
  const auth: Middleware = {
    onRequest({ request }) {
      request.headers.set("Authorization", `Bearer ${options.credential}`);
      return request;
    },
  };
  client.use(auth);
  return client;
}
