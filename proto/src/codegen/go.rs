//! The Go langpack: a module with a struct per event version whose constructor takes the
//! required fields as typed parameters (so a missing or mistyped one does not compile) and
//! checks enums and lengths (an error), optional fields as setters; `Sender` (HTTP to a
//! collector: batches of NDJSON, retry with backoff, a drop counter) and `DatagramSender`
//! (the unix datagram socket). Standard library only.

use std::fmt::Write as _;

use crate::catalog::{EnumValue, FieldType, Scalar};

use super::{EventVersion, Field, Model};

/// The Go module path for `env`.
pub fn module(env: &str) -> String {
    format!("weir-events-{env}")
}

fn go_str(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

fn exported(name: &str) -> String {
    super::pascal(name)
}

fn param(name: &str) -> String {
    let e = exported(name);
    let mut c = e.chars();
    let p = c
        .next()
        .map(|f| f.to_ascii_lowercase().to_string() + c.as_str())
        .unwrap_or_default();
    match p.as_str() {
        "type" | "func" | "range" | "map" | "chan" | "go" | "select" | "case" | "default" | "package" | "import"
        | "var" | "const" | "interface" | "struct" | "return" | "break" | "continue" | "for" | "if" | "else"
        | "switch" | "defer" | "goto" | "fallthrough" => format!("{p}_"),
        _ => p,
    }
}

fn go_type(ty: FieldType) -> &'static str {
    match ty {
        FieldType::Scalar(Scalar::String) => "string",
        FieldType::Scalar(Scalar::Int) => "int64",
        FieldType::Scalar(Scalar::Float) => "float64",
        FieldType::Scalar(Scalar::Bool) => "bool",
        FieldType::Scalar(Scalar::Timestamp) => "time.Time",
        FieldType::Array(Scalar::String) => "[]string",
        FieldType::Array(Scalar::Int) => "[]int64",
        FieldType::Array(Scalar::Float) => "[]float64",
        FieldType::Array(_) => "[]bool",
    }
}

/// Go statements checking `value` (of the field's Go type); they `return` an error.
fn checks(f: &Field, value: &str, ret: &str) -> String {
    let mut out = String::new();
    if let Some(n) = f.max_length {
        match f.ty {
            FieldType::Scalar(Scalar::String) => {
                let _ = writeln!(
                    out,
                    "\tif utf8.RuneCountInString({value}) > {n} {{\n\t\treturn {ret}fmt.Errorf(\"{}: longer than {n} characters\")\n\t}}",
                    f.name
                );
            }
            FieldType::Array(_) => {
                let _ = writeln!(
                    out,
                    "\tif len({value}) > {n} {{\n\t\treturn {ret}fmt.Errorf(\"{}: more than {n} elements\")\n\t}}",
                    f.name
                );
            }
            _ => {}
        }
    }
    if !f.enum_values.is_empty() {
        let vals: Vec<String> = f
            .enum_values
            .iter()
            .map(|e| match e {
                EnumValue::Int(i) => i.to_string(),
                EnumValue::Str(s) => go_str(s),
            })
            .collect();
        let elem = match f.ty {
            FieldType::Scalar(Scalar::Int) | FieldType::Array(Scalar::Int) => "int64",
            _ => "string",
        };
        let test = |v: &str| format!("!oneOf([]{elem}{{{}}}, {v})", vals.join(", "));
        match f.ty {
            FieldType::Array(_) => {
                let _ = writeln!(
                    out,
                    "\tfor _, v := range {value} {{\n\t\tif {} {{\n\t\t\treturn {ret}fmt.Errorf(\"{}: %v is not one of {}\", v)\n\t\t}}\n\t}}",
                    test("v"),
                    f.name,
                    vals.join(", ").replace('"', "'")
                );
            }
            FieldType::Scalar(_) => {
                let _ = writeln!(
                    out,
                    "\tif {} {{\n\t\treturn {ret}fmt.Errorf(\"{}: %v is not one of {}\", {value})\n\t}}",
                    test(value),
                    f.name,
                    vals.join(", ").replace('"', "'")
                );
            }
        }
    }
    out
}

fn wire(f: &Field, value: &str) -> String {
    if f.ty == FieldType::Scalar(Scalar::Timestamp) {
        format!("{value}.UTC().Format(time.RFC3339Nano)")
    } else {
        value.to_string()
    }
}

fn event_type(out: &mut String, e: &EventVersion) {
    let t = &e.type_name;
    let _ = writeln!(
        out,
        "\n// {t} is `{}` version {}: {}",
        e.event, e.version, e.description
    );
    let _ = writeln!(
        out,
        "type {t} struct {{\n\tfields map[string]any\n\tid     string\n\tts     any\n}}"
    );
    let required: Vec<&Field> = e.fields.iter().filter(|f| f.required).collect();
    let params: Vec<String> = required
        .iter()
        .map(|f| format!("{} {}", param(&f.name), go_type(f.ty)))
        .collect();
    let _ = writeln!(
        out,
        "\n// New{t} makes a `{}` v{} event from its required fields.",
        e.event, e.version
    );
    for f in &required {
        if !f.description.is_empty() {
            let _ = writeln!(out, "// {}: {}.", param(&f.name), f.description);
        }
    }
    let _ = writeln!(out, "func New{t}({}) (*{t}, error) {{", params.join(", "));
    let _ = writeln!(out, "\te := &{t}{{fields: map[string]any{{}}}}");
    for f in &required {
        out.push_str(&checks(f, &param(&f.name), "nil, "));
        let _ = writeln!(out, "\te.fields[{}] = {}", go_str(&f.name), wire(f, &param(&f.name)));
    }
    out.push_str("\treturn e, nil\n}\n");
    for f in e.fields.iter().filter(|f| !f.required) {
        let setter = format!("Set{}", exported(&f.name));
        let _ = writeln!(
            out,
            "\n// {setter} sets the optional field `{}`{}.",
            f.name,
            if f.description.is_empty() {
                String::new()
            } else {
                format!(": {}", f.description)
            }
        );
        let _ = writeln!(out, "func (e *{t}) {setter}(v {}) error {{", go_type(f.ty));
        out.push_str(&checks(f, "v", ""));
        let _ = writeln!(
            out,
            "\te.fields[{}] = {}\n\treturn nil\n}}",
            go_str(&f.name),
            wire(f, "v")
        );
    }
    let _ = writeln!(
        out,
        "\n// SetID sets the event id (the dedup key); a UUIDv7 is assigned when unset.\nfunc (e *{t}) SetID(id string) {{ e.id = id }}\n\n// SetTime sets the client time.\nfunc (e *{t}) SetTime(ts time.Time) {{ e.ts = ts.UTC().Format(time.RFC3339Nano) }}\n\n// Payload is the JSON object a collector takes.\nfunc (e *{t}) Payload() map[string]any {{\n\treturn payload({}, {}, e.fields, e.id, e.ts)\n}}",
        go_str(&e.event),
        e.version
    );
}

const COMMON: &str = r#"
// Event is any generated event.
type Event interface {
	// Payload is the JSON object a collector takes (`POST /v1/events`).
	Payload() map[string]any
}

func payload(event string, version int, fields map[string]any, id string, ts any) map[string]any {
	p := map[string]any{"event": event, "version": version, "env": Env, "fields": fields}
	if id != "" {
		p["id"] = id
	}
	if ts != nil {
		p["ts"] = ts
	}
	return p
}

func oneOf[T comparable](allowed []T, v T) bool {
	for _, a := range allowed {
		if a == v {
			return true
		}
	}
	return false
}
"#;

const SENDER: &str = r#"package weirevents

import (
	"bytes"
	"encoding/json"
	"fmt"
	"log"
	"net"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// Sender sends events to a weir collector over HTTP (`POST /v1/events`, NDJSON). Events
// are queued and sent in batches, at least every FlushInterval, by a goroutine; a batch
// that fails (no answer, 5xx, 429) is retried with exponential backoff MaxRetries times.
// What cannot be queued or sent is counted in Dropped and said through Warn (default
// log.Print): the first time, then at most once a minute with how many since. What the
// collector refuses is counted in Rejected. Close sends what is left.
type Sender struct {
	URL           string
	BatchSize     int
	MaxQueue      int
	MaxRetries    int
	FlushInterval time.Duration
	Client        *http.Client
	Warn          func(message string)

	Sent, Rejected, Dropped atomic.Int64

	warnMu    sync.Mutex
	warnedAt  time.Time
	warnSince int64

	mu    sync.Mutex
	send  sync.Mutex
	queue [][]byte
	stop  chan struct{}
	done  chan struct{}
}

// NewSender starts a sender for the collector at url (e.g. http://127.0.0.1:8080).
func NewSender(url string) *Sender {
	s := &Sender{
		URL:           url + "/v1/events",
		BatchSize:     100,
		MaxQueue:      10000,
		MaxRetries:    5,
		FlushInterval: time.Second,
		Client:        &http.Client{Timeout: 5 * time.Second},
		Warn:          func(message string) { log.Print(message) },
		stop:          make(chan struct{}),
		done:          make(chan struct{}),
	}
	go s.run()
	return s
}

// Send queues one event; it never blocks.
func (s *Sender) Send(e Event) {
	line, err := json.Marshal(e.Payload())
	if err != nil {
		s.drop(1, "cannot encode the event: "+err.Error())
		return
	}
	s.mu.Lock()
	if len(s.queue) >= s.MaxQueue {
		s.mu.Unlock()
		s.drop(1, fmt.Sprintf("the queue is full (%d events)", s.MaxQueue))
		return
	}
	s.queue = append(s.queue, line)
	s.mu.Unlock()
}

// drop counts n events that cannot be sent and says so: the first time, then at most
// once a minute.
func (s *Sender) drop(n int64, why string) {
	s.Dropped.Add(n)
	s.warnMu.Lock()
	defer s.warnMu.Unlock()
	s.warnSince += n
	if !s.warnedAt.IsZero() && time.Since(s.warnedAt) < time.Minute {
		return
	}
	if s.Warn != nil {
		s.Warn(fmt.Sprintf("weir: dropped %d event(s) for %s: %s (counted in Sender.Dropped)", s.warnSince, s.URL, why))
	}
	s.warnedAt, s.warnSince = time.Now(), 0
}

// Flush sends everything queued now.
func (s *Sender) Flush() {
	s.send.Lock()
	defer s.send.Unlock()
	for {
		s.mu.Lock()
		n := len(s.queue)
		if n > s.BatchSize {
			n = s.BatchSize
		}
		batch := s.queue[:n]
		s.queue = s.queue[n:]
		s.mu.Unlock()
		if len(batch) == 0 {
			return
		}
		s.post(batch)
	}
}

// Close stops the background goroutine and sends what is left.
func (s *Sender) Close() {
	close(s.stop)
	<-s.done
	s.Flush()
}

func (s *Sender) run() {
	defer close(s.done)
	t := time.NewTicker(s.FlushInterval)
	defer t.Stop()
	for {
		select {
		case <-s.stop:
			return
		case <-t.C:
			s.Flush()
		}
	}
}

func (s *Sender) post(batch [][]byte) {
	body := append(bytes.Join(batch, []byte("\n")), '\n')
	delay := 100 * time.Millisecond
	why := "no answer"
	for attempt := 0; attempt <= s.MaxRetries; attempt++ {
		wait := delay
		resp, err := s.Client.Post(s.URL, "application/x-ndjson", bytes.NewReader(body))
		if err != nil {
			why = err.Error()
		} else {
			var reply struct {
				Accepted int64 `json:"accepted"`
				Rejected int64 `json:"rejected"`
			}
			status := resp.StatusCode
			if status/100 == 2 {
				_ = json.NewDecoder(resp.Body).Decode(&reply)
				resp.Body.Close()
				s.Sent.Add(reply.Accepted)
				s.Rejected.Add(reply.Rejected)
				return
			}
			if secs, e := strconv.Atoi(resp.Header.Get("Retry-After")); e == nil {
				wait = time.Duration(secs) * time.Second
			}
			resp.Body.Close()
			if status < 500 && status != 429 {
				s.Rejected.Add(int64(len(batch)))
				return
			}
			why = fmt.Sprintf("HTTP %d", status)
		}
		if attempt == s.MaxRetries {
			break
		}
		time.Sleep(wait)
		if delay *= 2; delay > 10*time.Second {
			delay = 10 * time.Second
		}
	}
	s.drop(int64(len(batch)), fmt.Sprintf("%s after %d attempts", why, s.MaxRetries+1))
}

// DatagramSender sends events to a collector's unix datagram socket: one event per
// datagram, no reply. A datagram the socket does not take is counted in Dropped.
type DatagramSender struct {
	conn          net.Conn
	Sent, Dropped atomic.Int64
}

// NewDatagramSender connects to the socket at path (e.g. weir-data/collector.dgram).
func NewDatagramSender(path string) (*DatagramSender, error) {
	c, err := net.Dial("unixgram", path)
	if err != nil {
		return nil, err
	}
	return &DatagramSender{conn: c}, nil
}

// Send sends one event.
func (d *DatagramSender) Send(e Event) {
	b, err := json.Marshal(e.Payload())
	if err == nil {
		_, err = d.conn.Write(b)
	}
	if err != nil {
		d.Dropped.Add(1)
		return
	}
	d.Sent.Add(1)
}

// Close closes the socket.
func (d *DatagramSender) Close() error { return d.conn.Close() }
"#;

/// The files of the Go langpack, as (relative path, contents).
pub fn generate(model: &Model) -> Vec<(String, String)> {
    let header = format!(
        "// Code generated by `weir codegen --lang go --env {}` from catalog revision {}. DO NOT EDIT.\n\n",
        model.env, model.revision
    );
    let mut events = header.clone();
    let _ = writeln!(
        events,
        "// Package weirevents holds the events the `{}` environment may send, one type per\n// event version, and senders to a weir collector.\npackage weirevents\n",
        model.env
    );
    let uses_time = true;
    let uses_utf8 = model.events.iter().any(|e| {
        e.fields
            .iter()
            .any(|f| f.max_length.is_some() && f.ty == FieldType::Scalar(Scalar::String))
    });
    events.push_str("import (\n\t\"fmt\"\n");
    if uses_time {
        events.push_str("\t\"time\"\n");
    }
    if uses_utf8 {
        events.push_str("\t\"unicode/utf8\"\n");
    }
    events.push_str(")\n");
    let _ = writeln!(
        events,
        "\n// Env is the environment these events are sent as.\nconst Env = {}\n\n// CatalogRevision is the catalog revision this package was generated from.\nconst CatalogRevision = {}\n\n// Version is this langpack's version.\nconst Version = {}\n\nvar _ = fmt.Errorf",
        go_str(&model.env),
        go_str(&model.revision),
        go_str(&model.version)
    );
    events.push_str(COMMON);
    for e in &model.events {
        event_type(&mut events, e);
    }
    let go_mod = format!("module {}\n\ngo 1.19\n", module(&model.env));
    vec![
        ("go.mod".into(), go_mod),
        ("events.go".into(), events),
        ("sender.go".into(), header + SENDER),
    ]
}
