//! The TypeScript langpack: an npm package with an interface and a class per event
//! version (required fields and literal enum types checked by `tsc`; types, enums and
//! lengths checked again at run time, for callers from plain JavaScript), and `Sender`
//! (HTTP to a collector with `fetch`: NDJSON batches, retry with backoff, a drop counter).

use std::fmt::Write as _;

use crate::catalog::{FieldType, Scalar};

use super::{EventVersion, Field, Model};

/// The npm package name for `env`.
pub fn package(env: &str) -> String {
    format!("weir-events-{env}")
}

fn js_str(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

fn scalar_ts(s: Scalar) -> &'static str {
    match s {
        Scalar::String => "string",
        Scalar::Int | Scalar::Float => "number",
        Scalar::Bool => "boolean",
        Scalar::Timestamp => "Date | number | string",
    }
}

fn ts_type(f: &Field) -> String {
    let enums = || f.enum_literals(js_str, " | ");
    match f.ty {
        FieldType::Scalar(s) => enums().unwrap_or_else(|| scalar_ts(s).to_string()),
        FieldType::Array(s) => format!("Array<{}>", enums().unwrap_or_else(|| scalar_ts(s).to_string())),
    }
}

fn checker(f: &Field, value: &str) -> String {
    let enums = f
        .enum_literals(js_str, ", ")
        .map_or_else(|| "undefined".to_string(), |v| format!("[{v}]"));
    let max = f.max_length.map_or("undefined".to_string(), |n| n.to_string());
    let scalar = |s: Scalar| match s {
        Scalar::String => "checkString",
        Scalar::Int => "checkInt",
        Scalar::Float => "checkFloat",
        Scalar::Bool => "checkBool",
        Scalar::Timestamp => "checkTimestamp",
    };
    match f.ty {
        FieldType::Scalar(s) => format!("{}({}, {value}, {enums}, {max})", scalar(s), js_str(&f.name)),
        FieldType::Array(s) => format!(
            "checkArray({}, {value}, {}, {enums}, {max})",
            js_str(&f.name),
            scalar(s)
        ),
    }
}

fn class(out: &mut String, e: &EventVersion) {
    let iface = format!("{}Fields", e.type_name);
    let _ = writeln!(out, "\n/** Fields of `{}` version {}. */", e.event, e.version);
    let _ = writeln!(out, "export interface {iface} {{");
    for f in &e.fields {
        if !f.description.is_empty() {
            let _ = writeln!(out, "  /** {} */", f.description.replace("*/", "* /"));
        }
        let _ = writeln!(
            out,
            "  {}{}: {};",
            js_str(&f.name),
            if f.required { "" } else { "?" },
            ts_type(f)
        );
    }
    out.push_str("}\n");
    let _ = writeln!(
        out,
        "\n/** `{}` version {}: {} */",
        e.event,
        e.version,
        e.description.replace("*/", "* /")
    );
    let _ = writeln!(out, "export class {} implements WeirEvent {{", e.type_name);
    let _ = writeln!(out, "  static readonly EVENT = {};", js_str(&e.event));
    let _ = writeln!(out, "  static readonly VERSION = {};", e.version);
    let _ = writeln!(out, "  readonly event = {};", js_str(&e.event));
    let _ = writeln!(out, "  readonly version = {};", e.version);
    out.push_str("  readonly env = ENV;\n  readonly fields: Record<string, unknown> = {};\n  readonly id?: string;\n  readonly ts?: number | string;\n\n");
    let _ = writeln!(
        out,
        "  constructor(fields: {iface}, options: {{ id?: string; ts?: Date | number | string }} = {{}}) {{"
    );
    out.push_str("    const given = fields as unknown as Record<string, unknown>;\n");
    let names: Vec<String> = e.fields.iter().map(|f| js_str(&f.name)).collect();
    let _ = writeln!(out, "    checkKnown(given, [{}]);", names.join(", "));
    for f in &e.fields {
        let value = format!("given[{}]", js_str(&f.name));
        if f.required {
            let _ = writeln!(out, "    this.fields[{}] = {};", js_str(&f.name), checker(f, &value));
        } else {
            let _ = writeln!(
                out,
                "    if ({value} !== undefined) this.fields[{}] = {};",
                js_str(&f.name),
                checker(f, &value)
            );
        }
    }
    out.push_str("    if (options.id !== undefined) this.id = checkString(\"id\", options.id, undefined, 128);\n");
    out.push_str(
        "    if (options.ts !== undefined) this.ts = checkTimestamp(\"ts\", options.ts, undefined, undefined);\n",
    );
    out.push_str("  }\n}\n");
}

const HEAD: &str = r#"
/** An event as a collector takes it (`POST /v1/events`). */
export interface WeirEvent {
  readonly event: string;
  readonly version: number;
  readonly env: string;
  readonly id?: string;
  readonly ts?: number | string;
  readonly fields: Record<string, unknown>;
}

function allowed(field: string, value: unknown, values: readonly unknown[] | undefined): void {
  if (values !== undefined && !values.includes(value)) {
    throw new RangeError(`${field}: ${JSON.stringify(value)} is not one of ${JSON.stringify(values)}`);
  }
}

function checkKnown(given: Record<string, unknown>, known: readonly string[]): void {
  for (const key of Object.keys(given)) {
    if (!known.includes(key)) throw new TypeError(`${key}: not a field of this event version`);
  }
}

function required(field: string, value: unknown): void {
  if (value === undefined || value === null) throw new TypeError(`${field}: required`);
}

function checkString(field: string, value: unknown, values?: readonly unknown[], max?: number): string {
  required(field, value);
  if (typeof value !== "string") throw new TypeError(`${field}: expected a string, got ${typeof value}`);
  if (max !== undefined && [...value].length > max) throw new RangeError(`${field}: longer than ${max} characters`);
  allowed(field, value, values);
  return value;
}

function checkInt(field: string, value: unknown, values?: readonly unknown[], _max?: number): number {
  required(field, value);
  if (typeof value !== "number" || !Number.isSafeInteger(value)) {
    throw new TypeError(`${field}: expected an integer, got ${JSON.stringify(value)}`);
  }
  allowed(field, value, values);
  return value;
}

function checkFloat(field: string, value: unknown, _values?: readonly unknown[], _max?: number): number {
  required(field, value);
  if (typeof value !== "number" || !Number.isFinite(value)) {
    throw new TypeError(`${field}: expected a finite number, got ${JSON.stringify(value)}`);
  }
  return value;
}

function checkBool(field: string, value: unknown, _values?: readonly unknown[], _max?: number): boolean {
  required(field, value);
  if (typeof value !== "boolean") throw new TypeError(`${field}: expected a boolean, got ${typeof value}`);
  return value;
}

/** A Date, integer microseconds since the epoch, or RFC 3339 text. */
function checkTimestamp(field: string, value: unknown, _values?: readonly unknown[], _max?: number): number | string {
  required(field, value);
  if (value instanceof Date) return value.toISOString();
  if (typeof value === "number" && Number.isSafeInteger(value)) return value;
  if (typeof value === "string") return value;
  throw new TypeError(`${field}: expected a Date, microseconds or RFC 3339 text`);
}

function checkArray<T>(
  field: string,
  value: unknown,
  item: (field: string, value: unknown, values?: readonly unknown[], max?: number) => T,
  values?: readonly unknown[],
  max?: number,
): T[] {
  required(field, value);
  if (!Array.isArray(value)) throw new TypeError(`${field}: expected an array`);
  if (max !== undefined && value.length > max) throw new RangeError(`${field}: more than ${max} elements`);
  return value.map((v, i) => item(`${field}[${i}]`, v, values));
}
"#;

const SENDER: &str = r#"
/** Options of a {@link Sender}. */
export interface SenderOptions {
  /** Events per request (default 100). */
  batchSize?: number;
  /** Milliseconds between background flushes (default 1000). */
  flushIntervalMs?: number;
  /** Events held at most; more are dropped and counted (default 10000). */
  maxQueue?: number;
  /** Retries of a failed batch, with exponential backoff (default 5). */
  maxRetries?: number;
  /** Where drops are said (default `console.warn`): the first time, then at most once a minute. */
  warn?: (message: string) => void;
}

/**
 * Sends events to a weir collector over HTTP (`POST /v1/events`, NDJSON) with `fetch`.
 * Events are queued and sent in batches; a batch that fails (no answer, 5xx, 429) is
 * retried with backoff, and what cannot be queued or sent is counted in `dropped`.
 * Events the collector refuses are counted in `rejected`. `close()` sends what is left.
 */
export class Sender {
  sent = 0;
  rejected = 0;
  dropped = 0;
  private queue: string[] = [];
  private readonly url: string;
  private readonly batchSize: number;
  private readonly maxQueue: number;
  private readonly maxRetries: number;
  private readonly timer: ReturnType<typeof setInterval>;
  private inflight: Promise<void> = Promise.resolve();
  private readonly warn: (message: string) => void;
  private warnedAt = 0;
  private droppedSinceWarning = 0;

  constructor(url = "http://127.0.0.1:8080", options: SenderOptions = {}) {
    this.url = url.replace(/\/+$/, "") + "/v1/events";
    this.batchSize = options.batchSize ?? 100;
    this.maxQueue = options.maxQueue ?? 10000;
    this.maxRetries = options.maxRetries ?? 5;
    this.warn = options.warn ?? ((message) => console.warn(message));
    this.timer = setInterval(() => void this.flush(), options.flushIntervalMs ?? 1000);
    // In Node, do not keep the process alive for the background flush.
    (this.timer as unknown as { unref?: () => void }).unref?.();
  }

  /** Queues one event (never blocks). */
  send(event: WeirEvent): void {
    if (this.queue.length >= this.maxQueue) {
      this.drop(1, `the queue is full (${this.maxQueue} events)`);
      return;
    }
    const body: Record<string, unknown> = { event: event.event, version: event.version, env: event.env, fields: event.fields };
    if (event.id !== undefined) body.id = event.id;
    if (event.ts !== undefined) body.ts = event.ts;
    this.queue.push(JSON.stringify(body));
    if (this.queue.length >= this.batchSize) void this.flush();
  }

  /** Sends everything queued; resolves when it is sent, refused or dropped. */
  flush(): Promise<void> {
    this.inflight = this.inflight.then(async () => {
      while (this.queue.length > 0) {
        const batch = this.queue.splice(0, this.batchSize);
        await this.post(batch);
      }
    });
    return this.inflight;
  }

  /** Stops the background flush and sends what is left. */
  async close(): Promise<void> {
    clearInterval(this.timer);
    await this.flush();
  }

  /** Counts `n` events that cannot be sent and says so: the first time, then at most once a minute. */
  private drop(n: number, why: string): void {
    this.dropped += n;
    this.droppedSinceWarning += n;
    const now = Date.now();
    if (this.warnedAt !== 0 && now - this.warnedAt < 60000) return;
    this.warn(`weir: dropped ${this.droppedSinceWarning} event(s) for ${this.url}: ${why} (counted in Sender.dropped)`);
    this.warnedAt = now;
    this.droppedSinceWarning = 0;
  }

  private async post(batch: string[]): Promise<void> {
    let delay = 100;
    let why = "no answer";
    for (let attempt = 0; attempt <= this.maxRetries; attempt++) {
      let retryAfter: number | undefined;
      try {
        const response = await fetch(this.url, {
          method: "POST",
          headers: { "content-type": "application/x-ndjson" },
          body: batch.join("\n") + "\n",
        });
        if (response.ok) {
          const reply = (await response.json()) as { accepted?: number; rejected?: number };
          this.sent += reply.accepted ?? batch.length;
          this.rejected += reply.rejected ?? 0;
          return;
        }
        if (response.status < 500 && response.status !== 429) {
          this.rejected += batch.length;
          return;
        }
        const header = response.headers.get("retry-after");
        retryAfter = header !== null && /^\d+$/.test(header) ? Number(header) * 1000 : undefined;
        why = `HTTP ${response.status}`;
      } catch (e) {
        // No answer: retried below.
        why = String((e as { cause?: unknown }).cause ?? e);
      }
      if (attempt === this.maxRetries) break;
      await new Promise((resolve) => setTimeout(resolve, retryAfter ?? delay));
      delay = Math.min(delay * 2, 10000);
    }
    this.drop(batch.length, `${why} after ${this.maxRetries + 1} attempts`);
  }
}
"#;

/// The files of the TypeScript langpack, as (relative path, contents).
pub fn generate(model: &Model) -> Vec<(String, String)> {
    let header = format!(
        "// Generated by `weir codegen --lang typescript --env {}` from catalog revision {}. Do not edit.\n",
        model.env, model.revision
    );
    let mut index = header.clone();
    let _ = writeln!(
        index,
        "\n/** The environment these events are sent as. */\nexport const ENV = {};\n/** The catalog revision this langpack was generated from. */\nexport const CATALOG_REVISION = {};",
        js_str(&model.env),
        js_str(&model.revision)
    );
    index.push_str(HEAD);
    for e in &model.events {
        class(&mut index, e);
    }
    index.push_str(SENDER);
    let package = serde_json::json!({
        "name": package(&model.env),
        "version": model.version,
        "description": format!("Typed weir events for the {} environment (catalog revision {})", model.env, model.revision),
        "main": "dist/index.js",
        "types": "dist/index.d.ts",
        "files": ["dist"],
        "scripts": {"build": "tsc -p ."},
        "devDependencies": {"typescript": "^5"},
    });
    let tsconfig = serde_json::json!({
        "compilerOptions": {
            "target": "ES2020",
            "module": "commonjs",
            "lib": ["ES2022", "DOM"],
            "strict": true,
            "declaration": true,
            "outDir": "dist",
            "rootDir": "src",
        },
        "include": ["src"],
    });
    let pretty = |v: &serde_json::Value| serde_json::to_string_pretty(v).unwrap_or_default() + "\n";
    vec![
        ("package.json".into(), pretty(&package)),
        ("tsconfig.json".into(), pretty(&tsconfig)),
        ("src/index.ts".into(), index),
    ]
}
