//! The dead-letter store: events a recipient can never take (refused by the server, or
//! unreadable), kept with the reason so an operator can inspect and re-send them.
//!
//! One NDJSON file per recipient and UTC day:
//! `<dir>/<recipient>/<YYYY-MM-DD>.ndjson`, each line
//! `{"at": "...", "recipient": "...", "reason": "...", "event": {stored event JSON}}`
//! (`"decode_error"` and `"record_hex"` instead of `"event"` when the event itself could
//! not be read). Lines are fsynced before the recipient's cursor moves past them.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use weir_proto::event::{format_micros, now_micros, EventView};

/// One recipient's dead letters.
pub struct DeadLetters {
    dir: PathBuf,
    recipient: String,
    line: Vec<u8>,
    pending: Vec<u8>,
}

impl DeadLetters {
    /// The store for `recipient` under `dir`.
    pub fn new(dir: &Path, recipient: &str) -> DeadLetters {
        DeadLetters {
            dir: dir.join(recipient),
            recipient: recipient.to_string(),
            line: Vec::new(),
            pending: Vec::new(),
        }
    }

    /// The directory of this recipient's files.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn head(&mut self, reason: &str) {
        self.line.clear();
        self.line.extend_from_slice(b"{\"at\":\"");
        self.line.extend_from_slice(format_micros(now_micros()).as_bytes());
        self.line.extend_from_slice(b"\",\"recipient\":");
        let _ = serde_json::to_writer(&mut self.line, &self.recipient);
        self.line.extend_from_slice(b",\"reason\":");
        let _ = serde_json::to_writer(&mut self.line, reason);
    }

    /// Queues an event with the reason it was refused.
    pub fn add(&mut self, event: &[u8], reason: &str) {
        self.head(reason);
        match EventView::decode(event) {
            Ok(view) => {
                self.line.extend_from_slice(b",\"event\":");
                view.write_json(&mut self.line);
            }
            Err(e) => {
                self.line.extend_from_slice(b",\"decode_error\":");
                let _ = serde_json::to_writer(&mut self.line, &e.to_string());
                self.line.extend_from_slice(b",\"record_hex\":\"");
                for b in event {
                    self.line.extend_from_slice(format!("{b:02x}").as_bytes());
                }
                self.line.push(b'"');
            }
        }
        self.line.extend_from_slice(b"}\n");
        self.pending.extend_from_slice(&self.line);
    }

    /// True when nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// Appends what is queued to today's file and fsyncs it.
    pub fn flush(&mut self) -> io::Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        fs::create_dir_all(&self.dir)?;
        let day = &format_micros(now_micros())[..10];
        let path = self.dir.join(format!("{day}.ndjson"));
        let mut f = OpenOptions::new().create(true).append(true).open(&path)?;
        f.write_all(&self.pending)?;
        f.sync_data()?;
        self.pending.clear();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    #[test]
    fn lines_carry_reason_and_the_stored_event() {
        let tmp = tempfile::tempdir().unwrap();
        let mut dl = DeadLetters::new(tmp.path(), "stream");
        let ev = weir_proto::pb::Event {
            id: "e1".into(),
            event: "item.viewed".into(),
            version: 1,
            env: "web".into(),
            received_at: 1_700_000_000_000_000,
            fields: bytes::Bytes::from_static(br#"{"item_id":1}"#),
            valid: true,
            ..Default::default()
        };
        dl.add(&ev.encode_to_vec(), "Broker: Message size too large");
        dl.add(&[0xff, 0xff], "unreadable");
        dl.flush().unwrap();
        assert!(dl.is_empty());
        let file = fs::read_dir(tmp.path().join("stream"))
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path();
        let text = fs::read_to_string(file).unwrap();
        let lines: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["reason"], "Broker: Message size too large");
        assert_eq!(lines[0]["event"]["id"], "e1");
        assert_eq!(lines[0]["event"]["fields"]["item_id"], 1);
        assert_eq!(lines[1]["record_hex"], "ffff");
    }
}
