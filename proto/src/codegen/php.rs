//! The PHP langpack: a composer package (PSR-4, `strict_types`) with a class per event
//! version whose constructor takes typed parameters (a missing one is an
//! `ArgumentCountError`, a wrong type a `TypeError`; enums and lengths throw
//! `InvalidArgumentException`), `Sender` (HTTP to a collector through PHP's own stream
//! wrapper: batches of NDJSON, retry with backoff, a drop counter) and `DatagramSender`
//! (the unix datagram socket). No extensions beyond the defaults.

use std::fmt::Write as _;

use crate::catalog::{FieldType, Scalar};

use super::{EventVersion, Field, Model};

fn studly(s: &str) -> String {
    super::pascal(s)
}

/// The PHP namespace for `env`.
pub fn namespace(env: &str) -> String {
    format!("Weir\\Events\\{}", studly(env))
}

/// The composer package name for `env`.
pub fn package(env: &str) -> String {
    format!("weir/events-{env}")
}

fn php_str(s: &str) -> String {
    format!("'{}'", s.replace('\\', "\\\\").replace('\'', "\\'"))
}

fn php_type(ty: FieldType) -> &'static str {
    match ty {
        FieldType::Scalar(Scalar::String) => "string",
        FieldType::Scalar(Scalar::Int) => "int",
        FieldType::Scalar(Scalar::Float) => "float",
        FieldType::Scalar(Scalar::Bool) => "bool",
        FieldType::Scalar(Scalar::Timestamp) => "\\DateTimeInterface|int|string",
        FieldType::Array(_) => "array",
    }
}

fn value_expr(f: &Field, var: &str) -> String {
    let name = php_str(&f.name);
    let enums = f
        .enum_literals(php_str, ", ")
        .map_or_else(|| "null".to_string(), |v| format!("[{v}]"));
    let max = f.max_length.map_or("null".to_string(), |n| n.to_string());
    let item = |s: Scalar| match s {
        Scalar::String => "string",
        Scalar::Int => "int",
        Scalar::Float => "float",
        Scalar::Bool => "bool",
        Scalar::Timestamp => "timestamp",
    };
    match f.ty {
        FieldType::Scalar(Scalar::Timestamp) => format!("Check::timestamp({var}, {name})"),
        FieldType::Scalar(s) => format!("Check::scalar({name}, {var}, {}, {enums}, {max})", php_str(item(s))),
        FieldType::Array(s) => format!("Check::list({name}, {var}, {}, {enums}, {max})", php_str(item(s))),
    }
}

fn class(ns: &str, header: &str, e: &EventVersion) -> String {
    let mut out = format!("<?php\n\n{header}\ndeclare(strict_types=1);\n\nnamespace {ns};\n\n");
    let _ = writeln!(
        out,
        "/**\n * `{}` version {}: {}\n */",
        e.event,
        e.version,
        e.description.replace("*/", "* /")
    );
    let _ = writeln!(out, "final class {} extends Event\n{{", e.type_name);
    let _ = writeln!(out, "    public const EVENT = {};", php_str(&e.event));
    let _ = writeln!(out, "    public const VERSION = {};\n", e.version);
    out.push_str("    /**\n");
    for f in &e.fields {
        let _ = writeln!(
            out,
            "     * @param {}{} ${} {}",
            if f.required { "" } else { "?" },
            php_type(f.ty),
            f.name,
            f.description.replace("*/", "* /")
        );
    }
    // Parameters carry their types in the docblock, not natively: PHP coerces natively
    // typed arguments ("7" to 7) unless the *caller* declares strict_types, so the
    // constructor checks every value itself, whatever mode the caller runs in.
    out.push_str("     */\n    public function __construct(\n");
    for f in &e.fields {
        let default = if f.required { "" } else { " = null" };
        let _ = writeln!(out, "        mixed ${}{default},", f.name);
    }
    out.push_str("    ) {\n");
    for f in &e.fields {
        let var = format!("${}", f.name);
        if f.required {
            let _ = writeln!(
                out,
                "        $this->fields[{}] = {};",
                php_str(&f.name),
                value_expr(f, &var)
            );
        } else {
            let _ = writeln!(
                out,
                "        if ({var} !== null) {{\n            $this->fields[{}] = {};\n        }}",
                php_str(&f.name),
                value_expr(f, &var)
            );
        }
    }
    out.push_str("    }\n}\n");
    out
}

const EVENT: &str = r#"
/** Base of every generated event: `payload()` is the array a collector takes as JSON. */
abstract class Event
{
    public const EVENT = '';
    public const VERSION = 0;

    /** @var array<string, mixed> */
    protected array $fields = [];

    /** The event id (the dedup key); a UUIDv7 is assigned when null. */
    public ?string $id = null;

    /** Client time: RFC 3339 text or integer microseconds. */
    public int|string|null $ts = null;

    public function withId(string $id): static
    {
        $this->id = Check::scalar('id', $id, 'string', null, 128);
        return $this;
    }

    public function withTime(\DateTimeInterface|int|string $ts): static
    {
        $this->ts = Check::timestamp($ts);
        return $this;
    }

    /** @return array<string, mixed> */
    public function payload(): array
    {
        $p = ['event' => static::EVENT, 'version' => static::VERSION, 'env' => Langpack::ENV, 'fields' => (object) $this->fields];
        if ($this->id !== null) {
            $p['id'] = $this->id;
        }
        if ($this->ts !== null) {
            $p['ts'] = $this->ts;
        }
        return $p;
    }
}
"#;

const CHECK: &str = r#"
/** Run-time checks behind the typed constructors. */
final class Check
{
    /** @param list<int|string>|null $allowed */
    public static function scalar(string $field, mixed $value, string $type, ?array $allowed, ?int $max): mixed
    {
        $ok = match ($type) {
            'string' => is_string($value),
            'int' => is_int($value),
            'float' => is_int($value) || is_float($value),
            'bool' => is_bool($value),
            default => false,
        };
        if (!$ok) {
            throw new \TypeError("$field: expected $type, got " . get_debug_type($value));
        }
        if ($max !== null && is_string($value) && preg_match_all('/./su', $value) > $max) {
            throw new \InvalidArgumentException("$field: longer than $max characters");
        }
        if ($allowed !== null && !in_array($value, $allowed, true)) {
            throw new \InvalidArgumentException("$field: " . var_export($value, true) . ' is not one of ' . implode(', ', $allowed));
        }
        return $value;
    }

    /** @param list<int|string>|null $allowed @return list<mixed> */
    public static function list(string $field, mixed $value, string $type, ?array $allowed, ?int $max): array
    {
        if (!is_array($value) || !array_is_list($value)) {
            throw new \TypeError("$field: expected a list");
        }
        if ($max !== null && count($value) > $max) {
            throw new \InvalidArgumentException("$field: more than $max elements");
        }
        foreach ($value as $i => $v) {
            self::scalar("{$field}[$i]", $v, $type, $allowed, null);
        }
        return $value;
    }

    public static function timestamp(mixed $value, string $field = 'ts'): int|string
    {
        if (!($value instanceof \DateTimeInterface) && !is_int($value) && !is_string($value)) {
            throw new \TypeError("$field: expected a DateTimeInterface, microseconds or RFC 3339 text, got " . get_debug_type($value));
        }
        if ($value instanceof \DateTimeInterface) {
            return \DateTimeImmutable::createFromInterface($value)
                ->setTimezone(new \DateTimeZone('UTC'))->format('Y-m-d\TH:i:s.u\Z');
        }
        return $value;
    }
}
"#;

const SENDER: &str = r#"
/**
 * Sends events to a weir collector over HTTP (`POST /v1/events`, NDJSON) with PHP's own
 * stream wrapper. Events are queued and sent in batches of `$batchSize` (and on
 * `flush()`, `close()` or destruction); a batch that fails (no answer, 5xx, 429) is
 * retried with exponential backoff. What cannot be queued or sent is counted in
 * `$dropped` and said through `$warn` (default `error_log`): the first time, then at
 * most once a minute with how many since. What the collector refuses is counted in
 * `$rejected`.
 */
final class Sender
{
    public int $sent = 0;
    public int $rejected = 0;
    public int $dropped = 0;
    /** @var list<string> */
    private array $queue = [];
    private string $url;
    /** @var \Closure(string): void */
    private \Closure $warn;
    private float $warnedAt = 0.0;
    private int $droppedSinceWarning = 0;

    public function __construct(
        string $url = 'http://127.0.0.1:8080',
        private int $batchSize = 100,
        private int $maxQueue = 10000,
        private int $maxRetries = 5,
        private float $timeout = 5.0,
        ?\Closure $warn = null,
    ) {
        $this->url = rtrim($url, '/') . '/v1/events';
        $this->warn = $warn ?? static function (string $message): void {
            error_log($message);
        };
    }

    public function send(Event $event): void
    {
        if (count($this->queue) >= $this->maxQueue) {
            $this->drop(1, "the queue is full ({$this->maxQueue} events)");
            return;
        }
        $this->queue[] = json_encode($event->payload(), JSON_UNESCAPED_SLASHES | JSON_THROW_ON_ERROR);
        if (count($this->queue) >= $this->batchSize) {
            $this->flush();
        }
    }

    public function flush(): void
    {
        while ($this->queue !== []) {
            $batch = array_splice($this->queue, 0, $this->batchSize);
            $this->post($batch);
        }
    }

    public function close(): void
    {
        $this->flush();
    }

    public function __destruct()
    {
        $this->flush();
    }

    /** Counts `$n` events that cannot be sent and says so: the first time, then at most once a minute. */
    private function drop(int $n, string $why): void
    {
        $this->dropped += $n;
        $this->droppedSinceWarning += $n;
        $now = microtime(true);
        if ($this->warnedAt > 0 && $now - $this->warnedAt < 60) {
            return;
        }
        ($this->warn)("weir: dropped {$this->droppedSinceWarning} event(s) for {$this->url}: $why (counted in Sender::\$dropped)");
        $this->warnedAt = $now;
        $this->droppedSinceWarning = 0;
    }

    /** @param list<string> $batch */
    private function post(array $batch): void
    {
        $body = implode("\n", $batch) . "\n";
        $delay = 0.1;
        $why = 'no answer';
        for ($attempt = 0; $attempt <= $this->maxRetries; $attempt++) {
            $context = stream_context_create(['http' => [
                'method' => 'POST',
                'header' => "Content-Type: application/x-ndjson\r\n",
                'content' => $body,
                'timeout' => $this->timeout,
                'ignore_errors' => true,
            ]]);
            $reply = @file_get_contents($this->url, false, $context);
            $status = 0;
            $retryAfter = null;
            foreach ($http_response_header ?? [] as $h) {
                if (preg_match('#^HTTP/\S+ (\d{3})#', $h, $m)) {
                    $status = (int) $m[1];
                } elseif (preg_match('#^Retry-After:\s*(\d+)#i', $h, $m)) {
                    $retryAfter = (float) $m[1];
                }
            }
            if ($reply !== false && $status >= 200 && $status < 300) {
                $r = json_decode($reply, true);
                $this->sent += (int) ($r['accepted'] ?? count($batch));
                $this->rejected += (int) ($r['rejected'] ?? 0);
                return;
            }
            if ($status >= 400 && $status < 500 && $status !== 429) {
                $this->rejected += count($batch);
                return;
            }
            $why = $status > 0 ? "HTTP $status" : (error_get_last()['message'] ?? 'no answer');
            if ($attempt === $this->maxRetries) {
                break;
            }
            usleep((int) (($retryAfter ?? $delay) * 1e6));
            $delay = min($delay * 2, 10.0);
        }
        $this->drop(count($batch), "$why after " . ($this->maxRetries + 1) . ' attempts');
    }
}
"#;

const DATAGRAM: &str = r#"
/**
 * Sends events to a weir collector's unix datagram socket: one event per datagram, no
 * reply. A datagram the socket does not take is counted in `$dropped`.
 */
final class DatagramSender
{
    public int $sent = 0;
    public int $dropped = 0;
    /** @var resource */
    private $socket;

    public function __construct(string $path = 'weir-data/collector.dgram')
    {
        $socket = @stream_socket_client("udg://$path", $errno, $error);
        if ($socket === false) {
            throw new \RuntimeException("cannot open $path: $error");
        }
        $this->socket = $socket;
    }

    public function send(Event $event): void
    {
        $data = json_encode($event->payload(), JSON_UNESCAPED_SLASHES | JSON_THROW_ON_ERROR);
        if (@fwrite($this->socket, $data) === strlen($data)) {
            $this->sent++;
        } else {
            $this->dropped++;
        }
    }

    public function close(): void
    {
        fclose($this->socket);
    }
}
"#;

/// The files of the PHP langpack, as (relative path, contents).
pub fn generate(model: &Model) -> Vec<(String, String)> {
    let ns = namespace(&model.env);
    let header = format!(
        "// Generated by `weir codegen --lang php --env {}` from catalog revision {}. Do not edit.\n",
        model.env, model.revision
    );
    let file = |body: &str| format!("<?php\n\n{header}\ndeclare(strict_types=1);\n\nnamespace {ns};\n{body}");
    let langpack = format!(
        "\n/** Facts about this langpack. */\nfinal class Langpack\n{{\n    public const ENV = {};\n    public const CATALOG_REVISION = {};\n    public const VERSION = {};\n}}\n",
        php_str(&model.env),
        php_str(&model.revision),
        php_str(&model.version)
    );
    let mut files = vec![
        ("src/Langpack.php".to_string(), file(&langpack)),
        ("src/Event.php".to_string(), file(EVENT)),
        ("src/Check.php".to_string(), file(CHECK)),
        ("src/Sender.php".to_string(), file(SENDER)),
        ("src/DatagramSender.php".to_string(), file(DATAGRAM)),
    ];
    for e in &model.events {
        files.push((format!("src/{}.php", e.type_name), class(&ns, &header, e)));
    }
    let composer = serde_json::json!({
        "name": package(&model.env),
        "version": model.version,
        "description": format!("Typed weir events for the {} environment (catalog revision {})", model.env, model.revision),
        "type": "library",
        "require": {"php": ">=8.1"},
        "autoload": {"psr-4": {format!("{ns}\\"): "src/"}},
    });
    files.push((
        "composer.json".into(),
        serde_json::to_string_pretty(&composer).unwrap_or_default() + "\n",
    ));
    let autoload = format!(
        "<?php\n\n{header}\n// For projects without composer: require this file.\nspl_autoload_register(static function (string $class): void {{\n    $prefix = {};\n    if (str_starts_with($class, $prefix)) {{\n        require __DIR__ . '/src/' . substr($class, strlen($prefix)) . '.php';\n    }}\n}});\n",
        php_str(&format!("{ns}\\"))
    );
    files.push(("autoload.php".into(), autoload));
    files.sort();
    files
}
