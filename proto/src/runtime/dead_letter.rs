//! The dead-letter store: events that can never be delivered (refused by a recipient's
//! server, refused alone by every router, or unreadable), kept with the reason so an
//! operator can inspect and re-send them. The router keeps one per recipient, the
//! collector one for what its routers refuse.
//!
//! One NDJSON file per store and UTC day:
//! `<dir>/<recipient>/<YYYY-MM-DD>.ndjson` (router) or
//! `<data>/collector/dead-letters/<YYYY-MM-DD>.ndjson` (collector), each line
//! `{"at": "...", "recipient": "...", "reason": "...", "event": {stored event JSON}}`
//! (`"decode_error"` and `"record_hex"` instead of `"event"` when the event itself could
//! not be read). Lines are fsynced before the reader's cursor moves past them. A torn last
//! line (a crash or a full disk mid-append) is cut before the next append, and a failed
//! append is truncated back, so every line in the file is whole.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::event::{format_micros, now_micros, EventView};

/// One recipient's dead letters.
pub struct DeadLetters {
    dir: PathBuf,
    recipient: String,
    line: Vec<u8>,
    pending: Vec<u8>,
}

impl DeadLetters {
    /// The store for `recipient` under `dir` (`<dir>/<recipient>/`).
    pub fn new(dir: &Path, recipient: &str) -> DeadLetters {
        DeadLetters::in_dir(&dir.join(recipient), recipient)
    }

    /// A store whose files are directly in `dir`, its lines naming `recipient`.
    pub fn in_dir(dir: &Path, recipient: &str) -> DeadLetters {
        DeadLetters {
            dir: dir.to_path_buf(),
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
        let mut f = OpenOptions::new().create(true).read(true).append(true).open(&path)?;
        let len = cut_torn_line(&f, &path)?;
        if let Err(e) = f.write_all(&self.pending).and_then(|_| f.sync_data()) {
            // Nothing of this flush counts: leave the file as it was; the lines are kept
            // and written again by the next flush.
            let _ = f.set_len(len);
            return Err(e);
        }
        self.pending.clear();
        Ok(())
    }
}

/// Cuts a last line that has no newline (torn) and returns the file's length after.
fn cut_torn_line(f: &File, path: &Path) -> io::Result<u64> {
    let len = f.metadata()?.len();
    if len == 0 {
        return Ok(0);
    }
    let mut last = [0u8; 1];
    f.read_exact_at(&mut last, len - 1)?;
    if last[0] == b'\n' {
        return Ok(len);
    }
    // Find the end of the last whole line, reading backwards in blocks.
    let mut end = len;
    let mut keep = 0u64;
    let mut block = vec![0u8; 64 << 10];
    while end > 0 {
        let start = end.saturating_sub(block.len() as u64);
        let chunk = &mut block[..(end - start) as usize];
        f.read_exact_at(chunk, start)?;
        if let Some(i) = chunk.iter().rposition(|&b| b == b'\n') {
            keep = start + i as u64 + 1;
            break;
        }
        end = start;
    }
    tracing::warn!(path = %path.display(), cut_bytes = len - keep, "cutting a torn last line of the dead-letter file");
    f.set_len(keep)?;
    Ok(keep)
}

#[cfg(test)]
mod torn {
    use super::*;

    #[test]
    fn a_torn_last_line_is_cut_before_the_next_append() {
        let tmp = tempfile::tempdir().unwrap();
        let mut dl = DeadLetters::in_dir(tmp.path(), "router");
        dl.add(&[0xff], "first");
        dl.flush().unwrap();
        let path = fs::read_dir(tmp.path()).unwrap().next().unwrap().unwrap().path();
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"{\"at\":\"2026-").unwrap();
        dl.add(&[0xfe], "second");
        dl.flush().unwrap();
        let text = fs::read_to_string(&path).unwrap();
        let reasons: Vec<String> = text
            .lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["reason"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect();
        assert_eq!(reasons, ["first", "second"]);
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
        let ev = crate::pb::Event {
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
