// A backend's calls with the generated types and plain fetch (node 18+ or a browser).
// Type-checked by the suite, and run by it against `railproof serve`.
import type { components, paths } from "./schema";

export type Session = components["schemas"]["SessionOut"];
export type Proof = components["schemas"]["ProofOut"];
export type OpenSession =
  paths["/v1/payment-sessions"]["post"]["requestBody"]["content"]["application/json"];
export type SubmitProof = paths["/v1/proofs"]["post"]["requestBody"]["content"]["application/json"];
type ErrorDetail = components["schemas"]["ErrorDetail"];

export class ApiError extends Error {
  constructor(
    readonly status: number,
    readonly detail: ErrorDetail,
  ) {
    super(`${status} ${detail.code}${detail.field ? ` (${detail.field})` : ""}: ${detail.message}`);
  }
}

export class Railproof {
  constructor(
    private readonly base: string,
    private readonly token: string,
  ) {}

  private async call<T>(path: string, init: RequestInit = {}): Promise<T> {
    const res = await fetch(this.base + path, {
      ...init,
      headers: {
        Authorization: `Bearer ${this.token}`,
        "Content-Type": "application/json",
        ...init.headers,
      },
    });
    const body = await res.json();
    if (!res.ok) throw new ApiError(res.status, (body as components["schemas"]["ErrorOut"]).error);
    return body as T;
  }

  // One Idempotency-Key per logical call: pass the same key when retrying it.
  openSession(body: OpenSession, key: string = crypto.randomUUID()): Promise<Session> {
    return this.call<Session>("/v1/payment-sessions", {
      method: "POST",
      headers: { "Idempotency-Key": key },
      body: JSON.stringify(body),
    });
  }

  submitProof(body: SubmitProof, key: string = crypto.randomUUID()): Promise<Proof> {
    return this.call<Proof>("/v1/proofs", {
      method: "POST",
      headers: { "Idempotency-Key": key },
      body: JSON.stringify(body),
    });
  }

  getProof(id: string): Promise<Proof> {
    return this.call<Proof>(`/v1/proofs/${encodeURIComponent(id)}`);
  }
}
