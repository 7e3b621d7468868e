// The playground (/playground): try every operation of the API from a
// browser, through the TypeScript client (clients/typescript, bundled into
// static/playground/playground.js by esbuild: `make web`).
//
// It reads the operations from GET /v1/operations and each operation's
// params from the OpenAPI document (openapi.json, beside the page: the
// member of the JobRequest union for that operation), submits jobs, follows
// them (state, queue position, progress), shows their images or video and
// cancels them. The API may be on another origin (the "API base URL"
// field, or ?api= in the page's URL): the server must then list the page's
// origin in CORS_ALLOWED_ORIGINS.
import {
  createClient,
  isFinal,
  isProblem,
  ProblemError,
  resultUrls,
  type AIQueueClient,
  type Job,
  type OperationInfo,
  type SubmitJobBody,
} from "../../clients/typescript/src/index.js";

/** A JSON Schema, as far as the playground reads it. */
interface Schema {
  $ref?: string;
  type?: string;
  description?: string;
  enum?: unknown[];
  items?: Schema;
  anyOf?: Schema[];
  properties?: Record<string, Schema>;
  required?: string[];
  minimum?: number;
  maximum?: number;
  minItems?: number;
  pattern?: string;
  discriminator?: { propertyName: string; mapping: Record<string, string> };
}

interface Doc {
  components: { schemas: Record<string, Schema> };
}

type JobView = Job;

const $ = <T extends HTMLElement>(id: string) => {
  const el = document.getElementById(id);
  if (!el) throw new Error(`playground: no #${id}`);
  return el as T;
};

function h<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  attrs: Record<string, string | boolean | undefined> = {},
  ...children: (Node | string | null | undefined)[]
): HTMLElementTagNameMap[K] {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === false) continue;
    if (k === "text") el.textContent = String(v);
    else el.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children) if (c !== null && c !== undefined) el.append(c);
  return el;
}

const apiInput = $<HTMLInputElement>("api-base");
const tokenInput = $<HTMLInputElement>("token");
const demoButton = $<HTMLButtonElement>("use-demo-token");
const connectButton = $<HTMLButtonElement>("connect");
const creditsOut = $<HTMLOutputElement>("credits");
const form = $<HTMLFormElement>("submit-form");
const opSelect = $<HTMLSelectElement>("operation");
const opInfo = $<HTMLParagraphElement>("operation-info");
const paramsBox = $<HTMLDivElement>("params");
const extraInput = $<HTMLTextAreaElement>("extra-params");
const prioritySelect = $<HTMLSelectElement>("priority");
const submitButton = $<HTMLButtonElement>("submit");
const errorBox = $<HTMLDivElement>("error");
const jobsList = $<HTMLOListElement>("jobs");

const demoToken = document.querySelector<HTMLMetaElement>('meta[name="aiqueue-demo-token"]')?.content ?? "";
let client: AIQueueClient | undefined;
let doc: Doc | undefined;
let operations: OperationInfo[] = [];

apiInput.value = new URLSearchParams(location.search).get("api") ?? location.origin;
tokenInput.value = sessionStorage.getItem("aiqueue-token") ?? "";
if (demoToken) {
  demoButton.hidden = false;
  demoButton.addEventListener("click", () => {
    tokenInput.value = demoToken;
    void connect();
  });
}
connectButton.addEventListener("click", () => void connect());
opSelect.addEventListener("change", () => showParams());
form.addEventListener("submit", (ev) => {
  ev.preventDefault();
  void submit();
});

function showError(err: unknown) {
  errorBox.replaceChildren();
  if (err === undefined) {
    errorBox.hidden = true;
    return;
  }
  errorBox.hidden = false;
  if (err instanceof ProblemError) {
    errorBox.append(h("strong", { text: `${err.status} ${err.title}` }), ": " + (err.detail ?? ""));
    if (err.errors.length > 0) {
      errorBox.append(h("ul", {}, ...err.errors.map((e) => h("li", { text: `${e.location ?? ""}: ${e.message ?? ""}` }))));
    }
    if (err.retryAfter !== undefined) errorBox.append(h("p", { text: `Retry after ${err.retryAfter} s.` }));
  } else {
    errorBox.append(String(err instanceof Error ? err.message : err));
  }
}

async function connect() {
  showError(undefined);
  const token = tokenInput.value.trim();
  if (!token) {
    showError(new Error("Paste a bearer token first."));
    return;
  }
  sessionStorage.setItem("aiqueue-token", token);
  client = createClient({ baseUrl: apiInput.value.replace(/\/+$/, ""), token });
  try {
    [doc, operations] = await Promise.all([
      fetch(new URL("openapi.json", location.href)).then((r) => {
        if (!r.ok) throw new Error(`openapi.json: ${r.status}`);
        return r.json() as Promise<Doc>;
      }),
      client.listOperations(),
    ]);
  } catch (err) {
    showError(err);
    return;
  }
  opSelect.replaceChildren(
    ...operations.map((o) => h("option", { value: o.operation, text: `${o.operation} (${o.cost} credits, ${o.kind})` })),
  );
  form.hidden = false;
  showParams();
  await refreshCredits();
}

async function refreshCredits() {
  if (!client) return;
  try {
    const c = await client.getCredits();
    creditsOut.value = `${c.available} credits available (balance ${c.balance}, reserved ${c.reserved})`;
  } catch (err) {
    showError(err);
  }
}

function resolve(s: Schema | undefined): Schema | undefined {
  const ref = s?.$ref;
  if (!ref || !doc) return s;
  return doc.components.schemas[ref.replace("#/components/schemas/", "")];
}

/** The params schema of an operation: the member of JobRequest the discriminator names. */
function paramsSchema(op: string): Schema | undefined {
  const union = doc?.components.schemas["JobRequest"];
  const member = resolve({ $ref: union?.discriminator?.mapping[op] ?? "" });
  return resolve(member?.properties?.["params"]);
}

function showParams() {
  const op = operations.find((o) => o.operation === opSelect.value);
  if (!op) return;
  const price = op.max_cost > op.cost ? `${op.cost} to ${op.max_cost} credits, by its params` : `${op.cost} credits`;
  opInfo.textContent = `${op.description ?? ""} Default queue: ${op.priority}. Price: ${price}.`;
  const schema = paramsSchema(op.operation);
  const required = new Set(schema?.required ?? []);
  const fields: HTMLElement[] = [];
  for (const [name, prop] of Object.entries(schema?.properties ?? {})) {
    const id = `param-${name}`;
    const req = required.has(name);
    const label = h("label", { for: id }, name, req ? h("span", { class: "req", text: " (required)" }) : null);
    let input: HTMLInputElement | HTMLTextAreaElement | HTMLSelectElement;
    if (prop.enum || prop.type === "boolean") {
      // A choice, or left out (fal's default).
      const values = (prop.enum ?? [true, false]).map(String);
      input = h(
        "select",
        { id, "data-param": name, "data-kind": prop.type === "boolean" ? "boolean" : "string", required: req },
        h("option", { value: "", text: req ? "(choose)" : "(default)" }),
        ...values.map((v) => h("option", { value: v, text: v })),
      );
    } else if (prop.anyOf) {
      // An image size: a preset name or {"width": w, "height": h}.
      input = h("input", { id, type: "text", "data-param": name, "data-kind": "json-or-string", required: req, placeholder: 'square_hd, or {"width": 1024, "height": 768}' });
    } else if (prop.type === "array") {
      input = h("textarea", { id, rows: "2", "data-param": name, "data-kind": "list", required: req, placeholder: "one per line" });
    } else if (prop.type === "integer" || prop.type === "number") {
      input = h("input", {
        id,
        type: "number",
        "data-param": name,
        "data-kind": "number",
        required: req,
        min: prop.minimum?.toString(),
        max: prop.maximum?.toString(),
      });
    } else if (name === "prompt") {
      input = h("textarea", { id, rows: "2", "data-param": name, "data-kind": "string", required: req });
    } else {
      input = h("input", { id, type: "text", "data-param": name, "data-kind": "string", required: req });
    }
    const help = h("small", { id: id + "-help", text: prop.description ?? "" });
    input.setAttribute("aria-describedby", help.id);
    fields.push(h("div", { class: "field" }, label, input, help));
  }
  paramsBox.replaceChildren(...fields);
}

function readParams(): Record<string, unknown> {
  const params: Record<string, unknown> = {};
  const extra = extraInput.value.trim();
  if (extra) {
    const v: unknown = JSON.parse(extra);
    if (v === null || typeof v !== "object" || Array.isArray(v)) throw new Error("Extra params must be a JSON object.");
    Object.assign(params, v);
  }
  for (const el of paramsBox.querySelectorAll<HTMLInputElement | HTMLTextAreaElement | HTMLSelectElement>("[data-param]")) {
    const value = el.value.trim();
    if (!value) continue;
    const name = el.dataset["param"]!;
    const kind = el.dataset["kind"];
    if (kind === "list") params[name] = value.split(/\s*\n\s*/).filter(Boolean);
    else if (kind === "number") params[name] = Number(value);
    else if (kind === "boolean") params[name] = value === "true";
    else if (kind === "json-or-string" && value.startsWith("{")) params[name] = JSON.parse(value) as unknown;
    else params[name] = value;
  }
  return params;
}

async function submit() {
  if (!client) return;
  showError(undefined);
  let body: SubmitJobBody;
  try {
    body = { operation: opSelect.value, params: readParams() } as SubmitJobBody;
  } catch (err) {
    showError(err);
    return;
  }
  if (prioritySelect.value) (body as { priority?: string }).priority = prioritySelect.value;
  submitButton.disabled = true;
  try {
    const job = await client.submitJob(body);
    follow(client, job);
    await refreshCredits();
  } catch (err) {
    showError(err);
  } finally {
    submitButton.disabled = false;
  }
}

/** Adds the job to the list and keeps its card up to date until it ends. */
function follow(c: AIQueueClient, job: Job) {
  const card = h("li", { class: "job", "data-job-id": job.id });
  jobsList.prepend(card);
  const render = (j: JobView) => renderJob(c, card, j);
  render(job);
  c.waitForJob(job.id, { onUpdate: render })
    .then(render)
    .catch((err: unknown) => {
      card.append(h("p", { class: "problem", role: "alert", text: `Stopped following: ${err instanceof Error ? err.message : String(err)}` }));
    })
    .finally(() => void refreshCredits());
}

function renderJob(c: AIQueueClient, card: HTMLElement, j: JobView) {
  card.dataset["state"] = j.state;
  const facts: [string, string][] = [
    ["State", j.state],
    ["Operation", `${j.operation} (${j.priority})`],
    ["Credits", `${j.credits.amount} ${j.credits.state}`],
  ];
  if (j.queue_position !== undefined && j.queue_position !== null) facts.push(["Queue position", String(j.queue_position)]);
  facts.push(["Attempt", `${j.attempt} of ${j.max_attempts}`]);
  const p = j.progress;
  if (p) {
    if (p.stage) facts.push(["Stage", p.stage]);
    if (p.fal_queue_position !== undefined && p.fal_queue_position !== null) facts.push(["fal queue position", String(p.fal_queue_position)]);
    if (p.eta_seconds !== undefined && p.eta_seconds !== null) facts.push(["ETA", `about ${Math.round(p.eta_seconds)} s`]);
    const last = p.logs?.at(-1);
    if (last) facts.push(["Log", last.message]);
  }
  if (j.error) facts.push(["Error", `${j.error.code}: ${j.error.message}`]);

  const cancel = h("button", { type: "button", class: "cancel", text: "Cancel", disabled: isFinal(j) });
  cancel.setAttribute("aria-label", `Cancel job ${j.id}`);
  cancel.addEventListener("click", () => {
    cancel.disabled = true;
    c.cancelJob(j.id).then(
      (after) => renderJob(c, card, after),
      (err: unknown) => {
        if (isProblem(err, 409) && err.job) renderJob(c, card, err.job);
        else showError(err);
      },
    );
  });

  const media: HTMLElement[] = [];
  const video = (j.result as { video?: { url?: string } } | undefined)?.video?.url;
  for (const url of resultUrls(j)) {
    media.push(
      url === video
        ? h("video", { src: url, controls: true, preload: "none", "aria-label": `Video of job ${j.id}` })
        : h("img", { src: url, alt: `Image ${media.length + 1} of job ${j.id}`, loading: "lazy" }),
    );
    media.push(h("a", { href: url, target: "_blank", rel: "noopener noreferrer", text: url }));
  }

  card.replaceChildren(
    h("h3", { text: `Job ${j.id}` }),
    h("dl", {}, ...facts.flatMap(([k, v]) => [h("dt", { text: k }), h("dd", { "data-fact": k, text: v })])),
    cancel,
  );
  if (media.length) card.append(h("div", { class: "results" }, ...media));
}
