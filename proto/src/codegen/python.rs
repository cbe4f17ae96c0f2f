//! The Python langpack: a package `weir_events_<env>` with a class per event version
//! (keyword-only constructors that check types, enums and lengths), `Sender` (HTTP to a
//! collector: batches of NDJSON, retry with backoff, a drop counter) and
//! `DatagramSender` (the collector's unix datagram socket). Standard library only.

use std::fmt::Write as _;

use crate::catalog::{FieldType, Scalar};

use super::{EventVersion, Field, Model};

const KEYWORDS: &[&str] = &[
    "False", "None", "True", "and", "as", "assert", "async", "await", "break", "class", "continue", "def", "del",
    "elif", "else", "except", "finally", "for", "from", "global", "if", "import", "in", "is", "lambda", "nonlocal",
    "not", "or", "pass", "raise", "return", "try", "while", "with", "yield", "id", "ts",
];

fn ident(name: &str) -> String {
    let mut s: String = name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '_' { c } else { '_' })
        .collect();
    if s.starts_with(|c: char| c.is_ascii_digit()) || KEYWORDS.contains(&s.as_str()) {
        s.push('_');
    }
    s
}

/// The package name for `env`.
pub fn package(env: &str) -> String {
    format!("weir_events_{}", ident(env).trim_end_matches('_'))
}

fn py_str(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

fn annotation(ty: FieldType) -> &'static str {
    match ty {
        FieldType::Scalar(Scalar::String) => "str",
        FieldType::Scalar(Scalar::Int) => "int",
        FieldType::Scalar(Scalar::Float) => "float",
        FieldType::Scalar(Scalar::Bool) => "bool",
        FieldType::Scalar(Scalar::Timestamp) => "Union[_dt.datetime, int, str]",
        FieldType::Array(Scalar::String) => "Sequence[str]",
        FieldType::Array(Scalar::Int) => "Sequence[int]",
        FieldType::Array(Scalar::Float) => "Sequence[float]",
        FieldType::Array(_) => "Sequence[bool]",
    }
}

fn checker(f: &Field) -> String {
    let enums = f
        .enum_literals(py_str, ", ")
        .map_or_else(|| "None".to_string(), |v| format!("({v},)"));
    let max = f.max_length.map_or("None".to_string(), |n| n.to_string());
    let scalar = |s: Scalar| match s {
        Scalar::String => "_string",
        Scalar::Int => "_int",
        Scalar::Float => "_float",
        Scalar::Bool => "_bool",
        Scalar::Timestamp => "_timestamp",
    };
    let arg = ident(&f.name);
    match f.ty {
        FieldType::Scalar(s) => format!("{}({}, {arg}, {enums}, {max})", scalar(s), py_str(&f.name)),
        FieldType::Array(s) => format!("_array({}, {arg}, {}, {enums}, {max})", py_str(&f.name), scalar(s)),
    }
}

fn class(out: &mut String, e: &EventVersion) {
    let _ = writeln!(out, "\n\nclass {}(Event):", e.type_name);
    let _ = writeln!(
        out,
        "    \"\"\"`{}` version {}: {}",
        e.event,
        e.version,
        e.description.replace('"', "'")
    );
    if !e.fields.is_empty() {
        out.push_str("\n    Fields:\n");
        for f in &e.fields {
            let _ = writeln!(
                out,
                "        {} ({}{}): {}",
                f.name,
                f.ty,
                if f.required { ", required" } else { "" },
                f.description.replace('"', "'")
            );
        }
    }
    out.push_str("    \"\"\"\n\n");
    let _ = writeln!(out, "    EVENT = {}", py_str(&e.event));
    let _ = writeln!(out, "    VERSION = {}\n", e.version);
    let mut params = vec!["self".to_string(), "*".to_string()];
    for f in &e.fields {
        let ann = annotation(f.ty);
        if f.required {
            params.push(format!("{}: {ann}", ident(&f.name)));
        } else {
            params.push(format!("{}: Optional[{ann}] = None", ident(&f.name)));
        }
    }
    params.push("id: Optional[str] = None".into());
    params.push("ts: Union[_dt.datetime, int, str, None] = None".into());
    let _ = writeln!(
        out,
        "    def __init__(\n        {},\n    ) -> None:",
        params.join(",\n        ")
    );
    out.push_str("        super().__init__(id=id, ts=ts)\n");
    for f in &e.fields {
        if f.required {
            let _ = writeln!(out, "        self.fields[{}] = {}", py_str(&f.name), checker(f));
        } else {
            let _ = writeln!(out, "        if {} is not None:", ident(&f.name));
            let _ = writeln!(out, "            self.fields[{}] = {}", py_str(&f.name), checker(f));
        }
    }
}

const EVENTS_HEAD: &str = r#"from __future__ import annotations

import datetime as _dt
from typing import Any, Dict, Optional, Sequence, Union


class Event:
    """Base of every generated event: `to_dict()` gives the JSON a collector takes."""

    EVENT = ""
    VERSION = 0

    def __init__(self, *, id: Optional[str] = None, ts: Union[_dt.datetime, int, str, None] = None) -> None:
        self.fields: Dict[str, Any] = {}
        self.id = _string("id", id, None, 128) if id is not None else None
        self.ts = _timestamp("ts", ts, None, None) if ts is not None else None

    def to_dict(self) -> Dict[str, Any]:
        d: Dict[str, Any] = {"event": self.EVENT, "version": self.VERSION, "env": ENV, "fields": dict(self.fields)}
        if self.id is not None:
            d["id"] = self.id
        if self.ts is not None:
            d["ts"] = self.ts
        return d


def _allowed(field: str, value: Any, allowed: Optional[tuple]) -> None:
    if allowed is not None and value not in allowed:
        raise ValueError(f"{field}: {value!r} is not one of {list(allowed)}")


def _string(field: str, value: Any, allowed: Optional[tuple], max_length: Optional[int]) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{field}: expected a string, got {type(value).__name__}")
    if max_length is not None and len(value) > max_length:
        raise ValueError(f"{field}: longer than {max_length} characters")
    _allowed(field, value, allowed)
    return value


def _int(field: str, value: Any, allowed: Optional[tuple], max_length: Optional[int]) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{field}: expected an int, got {type(value).__name__}")
    if not -(2**63) <= value < 2**63:
        raise ValueError(f"{field}: out of the 64-bit range")
    _allowed(field, value, allowed)
    return value


def _float(field: str, value: Any, allowed: Optional[tuple], max_length: Optional[int]) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{field}: expected a number, got {type(value).__name__}")
    return value


def _bool(field: str, value: Any, allowed: Optional[tuple], max_length: Optional[int]) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{field}: expected a bool, got {type(value).__name__}")
    return value


def _timestamp(field: str, value: Any, allowed: Optional[tuple], max_length: Optional[int]) -> Union[int, str]:
    """A datetime (naive ones are taken as UTC), integer microseconds, or RFC 3339 text."""
    if isinstance(value, _dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=_dt.timezone.utc)
        return value.astimezone(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise TypeError(f"{field}: expected a datetime, microseconds or RFC 3339 text, got {type(value).__name__}")
    return value


def _array(field: str, value: Any, item: Any, allowed: Optional[tuple], max_length: Optional[int]) -> list:
    if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
        raise TypeError(f"{field}: expected a list, got {type(value).__name__}")
    if max_length is not None and len(value) > max_length:
        raise ValueError(f"{field}: more than {max_length} elements")
    return [item(f"{field}[{i}]", v, allowed, None) for i, v in enumerate(value)]
"#;

const SENDER: &str = r#"from __future__ import annotations

import json
import logging
import socket
import threading
import time
import urllib.error
import urllib.request
from typing import List, Optional

from .events import Event

log = logging.getLogger("weir")

# A dead endpoint is said once, then at most once a minute with how many were dropped.
_WARN_EVERY = 60.0


class _Warner:
    def __init__(self) -> None:
        self._last = 0.0
        self._since = 0

    def dropped(self, n: int, url: str, why: str) -> None:
        self._since += n
        now = time.monotonic()
        if self._last and now - self._last < _WARN_EVERY:
            return
        log.warning("weir: dropped %d event(s) for %s: %s (counted in Sender.dropped)", self._since, url, why)
        self._last, self._since = now, 0


class Sender:
    """Sends events to a weir collector over HTTP (`POST /v1/events`, NDJSON).

    Events are queued and sent in batches of `batch_size`, at least every
    `flush_interval` seconds, by a background thread. A batch that fails (no answer,
    5xx, 429) is retried with exponential backoff, `max_retries` times; what cannot be
    queued (the queue holds `max_queue` events) or sent is counted in `dropped`. Events
    the collector refuses are counted in `rejected`. Call `close()` (or use `with`) to
    send what is left.
    """

    def __init__(
        self,
        url: str = "http://127.0.0.1:8080",
        *,
        batch_size: int = 100,
        flush_interval: float = 1.0,
        max_queue: int = 10000,
        max_retries: int = 5,
        timeout: float = 5.0,
    ) -> None:
        self.url = url.rstrip("/") + "/v1/events"
        self.batch_size = batch_size
        self.max_queue = max_queue
        self.max_retries = max_retries
        self.timeout = timeout
        self.sent = 0
        self.rejected = 0
        self.dropped = 0
        self._warner = _Warner()
        self._queue: List[str] = []
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._closed = False
        self._interval = flush_interval
        self._thread = threading.Thread(target=self._run, name="weir-sender", daemon=True)
        self._thread.start()

    def send(self, event: Event) -> None:
        """Queues one event (never blocks)."""
        line = json.dumps(event.to_dict(), separators=(",", ":"))
        with self._lock:
            if len(self._queue) >= self.max_queue:
                self.dropped += 1
                self._warner.dropped(1, self.url, f"the queue is full ({self.max_queue} events)")
                return
            self._queue.append(line)
            if len(self._queue) >= self.batch_size:
                self._wake.set()

    def flush(self) -> None:
        """Sends everything queued now, in the calling thread."""
        while True:
            with self._lock:
                batch, self._queue = self._queue[: self.batch_size], self._queue[self.batch_size :]
            if not batch:
                return
            self._post(batch)

    def close(self) -> None:
        """Stops the background thread and sends what is left."""
        self._closed = True
        self._wake.set()
        self._thread.join()
        self.flush()

    def __enter__(self) -> "Sender":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _run(self) -> None:
        while not self._closed:
            self._wake.wait(self._interval)
            self._wake.clear()
            if not self._closed:
                self.flush()

    def _post(self, batch: List[str]) -> None:
        body = ("\n".join(batch) + "\n").encode()
        delay = 0.1
        for attempt in range(self.max_retries + 1):
            request = urllib.request.Request(
                self.url, data=body, method="POST", headers={"Content-Type": "application/x-ndjson"}
            )
            retry_after: Optional[float] = None
            why = "no answer"
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    reply = json.loads(response.read() or b"{}")
                    self.sent += int(reply.get("accepted", len(batch)))
                    self.rejected += int(reply.get("rejected", 0))
                    return
            except urllib.error.HTTPError as e:
                if e.code < 500 and e.code != 429:
                    self.rejected += len(batch)
                    return
                header = e.headers.get("Retry-After") if e.headers else None
                retry_after = float(header) if header and header.isdigit() else None
                why = f"HTTP {e.code}"
            except (urllib.error.URLError, OSError, ValueError) as e:
                why = str(e)
            if attempt == self.max_retries:
                break
            time.sleep(retry_after if retry_after is not None else delay)
            delay = min(delay * 2, 10.0)
        self.dropped += len(batch)
        self._warner.dropped(len(batch), self.url, f"{why} after {self.max_retries + 1} attempts")


class DatagramSender:
    """Sends events to a weir collector's unix datagram socket: one event per datagram,
    no reply, nothing waits. A datagram the socket does not take is counted in
    `dropped`."""

    def __init__(self, path: str = "weir-data/collector.dgram") -> None:
        self.path = path
        self.sent = 0
        self.dropped = 0
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)

    def send(self, event: Event) -> None:
        data = json.dumps(event.to_dict(), separators=(",", ":")).encode()
        try:
            self._socket.sendto(data, self.path)
            self.sent += 1
        except OSError:
            self.dropped += 1

    def close(self) -> None:
        self._socket.close()

    def __enter__(self) -> "DatagramSender":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
"#;

/// The files of the Python langpack, as (relative path, contents).
pub fn generate(model: &Model) -> Vec<(String, String)> {
    let pkg = package(&model.env);
    let header = format!(
        "# Generated by `weir codegen --lang python --env {}` from catalog revision {}. Do not edit.\n",
        model.env, model.revision
    );
    let mut events = header.clone();
    let _ = writeln!(
        events,
        "\"\"\"Events the `{}` environment may send, one class per event version.\"\"\"\n",
        model.env
    );
    events.push_str(EVENTS_HEAD);
    let _ = writeln!(
        events,
        "\nENV = {}\nCATALOG_REVISION = {}",
        py_str(&model.env),
        py_str(&model.revision)
    );
    for e in &model.events {
        class(&mut events, e);
    }
    let names: Vec<&str> = model.events.iter().map(|e| e.type_name.as_str()).collect();
    let mut init = header.clone();
    let _ = writeln!(
        init,
        "\"\"\"Typed weir events for the `{}` environment (catalog revision {}).\"\"\"\n",
        model.env, model.revision
    );
    let _ = writeln!(
        init,
        "from .events import CATALOG_REVISION, ENV, Event, {}",
        names.join(", ")
    );
    init.push_str("from .sender import DatagramSender, Sender\n\n");
    let mut all = vec![
        "\"CATALOG_REVISION\"",
        "\"ENV\"",
        "\"Event\"",
        "\"Sender\"",
        "\"DatagramSender\"",
    ]
    .into_iter()
    .map(String::from)
    .collect::<Vec<_>>();
    all.extend(names.iter().map(|n| format!("\"{n}\"")));
    let _ = writeln!(init, "__all__ = [{}]", all.join(", "));
    let _ = writeln!(init, "__version__ = {}", py_str(&model.version));
    let pyproject = format!(
        "[project]\nname = \"{}\"\nversion = \"{}\"\ndescription = \"Typed weir events for the {} environment (catalog revision {})\"\nrequires-python = \">=3.8\"\n\n[build-system]\nrequires = [\"setuptools>=61\"]\nbuild-backend = \"setuptools.build_meta\"\n\n[tool.setuptools]\npackages = [\"{pkg}\"]\n",
        pkg.replace('_', "-"),
        model.version,
        model.env,
        model.revision
    );
    vec![
        ("pyproject.toml".into(), pyproject),
        (format!("{pkg}/__init__.py"), init),
        (format!("{pkg}/events.py"), events),
        (format!("{pkg}/sender.py"), header + SENDER),
    ]
}
