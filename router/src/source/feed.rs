//! The router log's newest records, read from disk and decoded once for every consumer
//! that follows the log. Without it each recipient read and decoded every record itself,
//! so a recipient that is routed nothing still cost intake a full decode of the log; with
//! it, the consumer that reaches the end of the feed reads the next records for everyone
//! (the others wait for that read instead of making their own), and each takes the
//! events routed to it by looking up each event name of a record once. Intake offers each
//! record it made durable as it decoded it ([`Feed::offer`]), so consumers at the head
//! take new records from memory and the log is read back only by those behind.
//!
//! A consumer that falls behind the window (a recipient whose server was gone for a
//! while) reads from disk on its own until it catches up; its cursor is its own either way.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use weir_proto::event::{batch, EventHead};
use weir_proto::runtime::wal::{Position, WalError, WalReader};

use super::Want;

/// Most record bytes one read takes from disk.
pub const READ_BYTES: usize = 8 << 20;
/// Most records one read takes from disk.
pub const READ_RECORDS: usize = 64;
/// Record bytes the window keeps for consumers a little behind the newest: one read's
/// worth (32 MiB cost a fully routed recipient ~10% of its throughput in memory traffic,
/// and the router ~90 MiB of RSS, for no gain: consumers at the head share one read).
pub const WINDOW_BYTES: usize = 8 << 20;

/// What intake's offered records may hold, in windows: a consumer at the head that is
/// busy with a run (the hourly buffer's fsync of a few MiB) falls that far behind intake
/// before it must read back from disk, which costs it a decompression and a decode of
/// every record and so makes it fall further behind (one window was too little for the
/// buffer at 1M events/s).
pub const OFFERED_PER_WINDOW: usize = 4;

/// How long a consumer at the head waits for intake to offer what the log just made
/// durable before it reads it back from disk. The durable end moves just before intake's
/// appends return and they offer their records; an offer that never comes (a client that
/// hung up in between) costs this once. A consumer that is behind the offers kept never
/// waits (see `Feed::may_be_offered`). A few turns of the runtime were too few: at
/// 1.5M events/s two runs in five were read back from disk, one record at a time.
const OFFER_WAIT: std::time::Duration = std::time::Duration::from_millis(5);

/// One record of the log, decoded.
pub struct Entry {
    /// Where a reader stood before this record: its start, or the end of whatever a read
    /// passed before it (a segment's end, skipped damage).
    from: Position,
    /// Where a reader stands after it.
    to: Position,
    /// The batch's size in memory (decompressed), what the window counts.
    bytes: usize,
    body: Body,
}

enum Body {
    /// A batch of events, grouped by event name.
    Batch {
        events: Vec<Bytes>,
        groups: Vec<Group>,
        /// Events whose head cannot be decoded.
        unreadable: Vec<u32>,
    },
    /// A record that is not a batch, and why.
    Unreadable(Bytes, String),
}

/// The events of one name in one record, by index.
struct Group {
    event: Box<str>,
    valid: Vec<u32>,
    invalid: Vec<u32>,
}

impl Entry {
    /// Decodes one record that a reader passed from `from` to `to`.
    pub fn decode(from: Position, to: Position, record: Bytes) -> Entry {
        let batch_bytes = match crate::log_record::batch(record.clone()) {
            Ok(b) => b,
            Err(why) => {
                return Entry {
                    from,
                    to,
                    bytes: record.len(),
                    body: Body::Unreadable(record, format!("unreadable batch in the router log: {why}")),
                }
            }
        };
        let bytes = batch_bytes.len();
        let events = match batch::events(&batch_bytes) {
            Ok(e) => e,
            Err(e) => {
                return Entry {
                    from,
                    to,
                    bytes,
                    body: Body::Unreadable(record, format!("unreadable batch in the router log: {e}")),
                }
            }
        };
        let mut grouping = Grouping::default();
        for (i, ev) in events.iter().enumerate() {
            match EventHead::decode(ev) {
                Ok(head) => grouping.add(i, head.event, head.valid),
                Err(_) => grouping.unreadable.push(i as u32),
            }
        }
        let grouped = grouping.finish();
        Entry::checked(from, to, bytes, events, grouped)
    }

    /// A record whose batch was decoded elsewhere (by intake, as it checked it): `bytes`
    /// long decompressed, its `events`, and how they group.
    pub fn checked(from: Position, to: Position, bytes: usize, events: Vec<Bytes>, grouped: Grouped) -> Entry {
        let Grouped { groups, unreadable } = grouped;
        Entry {
            from,
            to,
            bytes,
            body: Body::Batch {
                events,
                groups,
                unreadable,
            },
        }
    }

    /// Where a reader stands after this record.
    pub fn to(&self) -> Position {
        self.to
    }

    /// Adds the events `want` takes to `events` in log order, and what must be
    /// dead-lettered to `unreadable`; returns the events this record holds.
    pub fn take(&self, want: &Want<'_>, events: &mut Vec<Bytes>, unreadable: &mut Vec<(Bytes, String)>) -> u64 {
        let (all, groups, bad) = match &self.body {
            Body::Unreadable(rec, why) => {
                unreadable.push((rec.clone(), why.clone()));
                return 0;
            }
            Body::Batch {
                events,
                groups,
                unreadable,
            } => (events, groups, unreadable),
        };
        let mut picked: Vec<u32> = Vec::new();
        let mut runs = 0;
        for g in groups {
            for (valid, idx) in [(true, &g.valid), (false, &g.invalid)] {
                if !idx.is_empty() && want.wants(&g.event, valid) {
                    picked.extend_from_slice(idx);
                    runs += 1;
                }
            }
        }
        if want.takes_unreadable() {
            picked.extend_from_slice(bad);
            runs += usize::from(!bad.is_empty());
        } else {
            unreadable.extend(
                bad.iter()
                    .map(|&i| (all[i as usize].clone(), "unreadable event in the log".into())),
            );
        }
        if picked.len() == all.len() {
            // The whole record (the usual case for the buffer and a busy recipient).
            events.extend(all.iter().cloned());
            return all.len() as u64;
        }
        // Each run is in log order; several are merged back into it.
        if runs > 1 {
            picked.sort_unstable();
        }
        events.extend(picked.iter().map(|&i| all[i as usize].clone()));
        all.len() as u64
    }
}

/// The events of one batch grouped by name as they are read, by index: built by
/// [`Entry::decode`] from each event's head, or by intake while it checks the batch.
#[derive(Default)]
pub struct Grouping<'a> {
    groups: Vec<Group>,
    index: HashMap<&'a str, usize>,
    unreadable: Vec<u32>,
}

impl<'a> Grouping<'a> {
    /// Adds event `i`, named `event`.
    pub fn add(&mut self, i: usize, event: &'a str, valid: bool) {
        let groups = &mut self.groups;
        // Batches mostly hold one or a few names: a scan beats hashing until they don't.
        let g = match groups.iter().position(|g| &*g.event == event) {
            Some(g) => g,
            None if groups.len() < 8 => {
                groups.push(Group::new(event));
                groups.len() - 1
            }
            None => *self.index.entry(event).or_insert_with(|| {
                groups.push(Group::new(event));
                groups.len() - 1
            }),
        };
        let g = &mut groups[g];
        if valid {
            g.valid.push(i as u32)
        } else {
            g.invalid.push(i as u32)
        }
    }
}

/// What a [`Grouping`] found, owning its names.
pub struct Grouped {
    groups: Vec<Group>,
    unreadable: Vec<u32>,
}

impl Grouping<'_> {
    /// The groups, letting go of the events' bytes.
    pub fn finish(self) -> Grouped {
        Grouped {
            groups: self.groups,
            unreadable: self.unreadable,
        }
    }
}

impl Group {
    fn new(event: &str) -> Group {
        Group {
            event: event.into(),
            valid: Vec::new(),
            invalid: Vec::new(),
        }
    }
}

/// Reads up to one run of records at `reader`'s position and decodes them; empty at the
/// durable end. A run holds at most [`READ_BYTES`] of batches once decompressed (or one
/// batch): compressed records past that are left for the next read. Blocking: call it
/// off the async threads.
pub fn read(reader: &mut WalReader) -> Result<Vec<Arc<Entry>>, WalError> {
    let mut from = reader.position();
    let records = reader.read_with_ends(READ_RECORDS, READ_BYTES)?;
    let last = records.len().saturating_sub(1);
    let after = reader.position();
    let mut out = Vec::with_capacity(records.len());
    let mut bytes = 0usize;
    for (i, (rec, end)) in records.into_iter().enumerate() {
        if !out.is_empty() && bytes >= READ_BYTES {
            // The rest is read again from here.
            reader.seek(from);
            break;
        }
        // The last record's end covers whatever the read skipped after it.
        let to = if i == last { after } else { end };
        let e = Entry::decode(from, to, rec);
        bytes += e.bytes;
        from = to;
        out.push(Arc::new(e));
    }
    Ok(out)
}

/// The shared window of decoded records of one log.
pub struct Feed {
    window: Mutex<Window>,
    /// Records intake made durable and offered, by where they start, until newer ones push
    /// them out.
    recent: Mutex<Recent>,
    /// Held by the consumer reading the next records from disk for everyone.
    reading: tokio::sync::Mutex<()>,
    /// Woken by every offer (consumers at the head wait for theirs).
    offers: tokio::sync::Notify,
    max_bytes: usize,
    disk_reads: AtomicU64,
    memory_reads: AtomicU64,
    /// `weir_router_log_reads_total` by `from`.
    disk_meter: metrics::Counter,
    memory_meter: metrics::Counter,
}

#[derive(Default)]
struct Recent {
    entries: std::collections::BTreeMap<Position, Arc<Entry>>,
    bytes: usize,
}

#[derive(Default)]
struct Window {
    entries: VecDeque<Arc<Entry>>,
    bytes: usize,
}

impl Feed {
    /// An empty feed keeping about `max_bytes` of records.
    pub fn new(max_bytes: usize) -> Arc<Feed> {
        Arc::new(Feed {
            window: Mutex::new(Window::default()),
            recent: Mutex::new(Recent::default()),
            reading: tokio::sync::Mutex::new(()),
            offers: tokio::sync::Notify::new(),
            max_bytes,
            disk_reads: AtomicU64::new(0),
            memory_reads: AtomicU64::new(0),
            disk_meter: metrics::counter!(crate::metrics::LOG_READS, "from" => "disk"),
            memory_meter: metrics::counter!(crate::metrics::LOG_READS, "from" => "memory"),
        })
    }

    /// Takes a record intake has just made durable, decoded as intake read it: consumers
    /// take it from memory instead of reading it back from disk (and decompressing and
    /// decoding it again). Records may be offered in any order; the oldest go once
    /// [`OFFERED_PER_WINDOW`] windows of newer ones are offered, and are read from disk by
    /// whoever is still behind them.
    pub fn offer(&self, entry: Entry) {
        let mut r = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        r.bytes += entry.bytes;
        r.entries.insert(entry.from, Arc::new(entry));
        while r.bytes > self.max_bytes.saturating_mul(OFFERED_PER_WINDOW) {
            match r.entries.pop_first() {
                Some((_, e)) => r.bytes -= e.bytes,
                None => break,
            }
        }
        drop(r);
        self.offers.notify_waiters();
    }

    /// Whether the record at `at` may still be offered: offers kept start at or before
    /// it (a consumer behind them, replaying a backlog after a restart or pushed out of
    /// the offers, reads from disk at once), and it is in the segment being written (at
    /// a segment's end the reader must move to the next one, which a read does).
    fn may_be_offered(&self, at: Position, durable: Position) -> bool {
        let r = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        at.segment == durable.segment && r.entries.first_key_value().is_some_and(|(from, _)| *from <= at)
    }

    /// Waits up to [`OFFER_WAIT`] for the record at `at` to be offered, and takes it
    /// with what follows it; empty when it was not.
    async fn wait_offered(&self, at: Position) -> Vec<Arc<Entry>> {
        let deadline = tokio::time::Instant::now() + OFFER_WAIT;
        loop {
            // Registered before the check, so an offer in between is not missed.
            let offered = self.offers.notified();
            tokio::pin!(offered);
            offered.as_mut().enable();
            let got = self.take_offered(at);
            if !got.is_empty() || tokio::time::timeout_at(deadline, offered).await.is_err() {
                return got;
            }
        }
    }

    /// The offered records from `at` on, one after the other (up to one run's worth).
    /// They stay offered for consumers behind (until newer ones push them out): a
    /// consumer busy with a run (the hourly buffer's fsync) may fall behind the window,
    /// and reading back from disk would cost it a decompression and a decode of every
    /// record, making it fall further behind.
    fn offered(&self, at: Position) -> Vec<Arc<Entry>> {
        let r = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        let (mut out, mut pos, mut bytes) = (Vec::new(), at, 0);
        while out.len() < READ_RECORDS && (out.is_empty() || bytes < READ_BYTES) {
            let Some(e) = r.entries.get(&pos) else { break };
            bytes += e.bytes;
            pos = e.to;
            out.push(e.clone());
        }
        out
    }

    /// [`Feed::offered`] from `at`, counted and added to the window when there are any.
    fn take_offered(&self, at: Position) -> Vec<Arc<Entry>> {
        let got = self.offered(at);
        if !got.is_empty() {
            self.memory_reads.fetch_add(1, Ordering::Relaxed);
            self.memory_meter.increment(1);
            self.push(at, &got);
        }
        got
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Window> {
        // Plain data: a panic elsewhere while holding the lock leaves nothing half-done.
        self.window.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The entries from `at` on (up to one run's worth); empty when `at` is not where an
    /// entry of the window starts.
    fn from(&self, at: Position) -> Vec<Arc<Entry>> {
        let w = self.lock();
        let i = w.entries.partition_point(|e| e.from < at);
        if w.entries.get(i).is_none_or(|e| e.from != at) {
            return Vec::new();
        }
        let mut bytes = 0;
        w.entries
            .range(i..)
            .take(READ_RECORDS)
            .take_while(|e| {
                let first = bytes == 0;
                bytes += e.bytes.max(1);
                first || bytes <= READ_BYTES
            })
            .cloned()
            .collect()
    }

    /// Whether `at` is at or past the end of the window (or the window is empty): the
    /// next records there are read from disk for everyone.
    fn at_head(&self, at: Position) -> bool {
        self.lock().entries.back().is_none_or(|e| at >= e.to)
    }

    /// Adds records read from `at`: appended when they continue the window, or starting it
    /// afresh when `at` is past its end (the consumers behind read from disk).
    fn push(&self, at: Position, entries: &[Arc<Entry>]) {
        let mut w = self.lock();
        match w.entries.back().map(|e| e.to) {
            Some(end) if at < end => return,
            Some(end) if at > end => *w = Window::default(),
            _ => {}
        }
        for e in entries {
            w.bytes += e.bytes;
            w.entries.push_back(e.clone());
        }
        while w.bytes > self.max_bytes && w.entries.len() > 1 {
            if let Some(e) = w.entries.pop_front() {
                w.bytes -= e.bytes;
            }
        }
    }

    /// How many reads went to disk (each decoded once, whoever it served).
    pub fn disk_reads(&self) -> u64 {
        self.disk_reads.load(Ordering::Relaxed)
    }

    /// How many runs consumers took from what intake offered.
    pub fn memory_reads(&self) -> u64 {
        self.memory_reads.load(Ordering::Relaxed)
    }

    /// The next run of entries at `reader`'s position: from the window when it holds
    /// them, else read from disk (once for every consumer at the head of the log).
    /// Moves `reader` past what it returns; empty at the durable end.
    pub async fn next(self: &Arc<Self>, reader: &mut Option<WalReader>) -> Result<Vec<Arc<Entry>>, WalError> {
        let Some(r) = reader.as_ref() else {
            return Ok(Vec::new());
        };
        let at = r.position();
        if at >= r.durable() {
            // At the durable end: nothing to read, and no blocking read to find out.
            return Ok(Vec::new());
        }
        let mut got = self.from(at);
        if got.is_empty() {
            got = self.take_offered(at);
        }
        if got.is_empty() {
            let head = self.at_head(at);
            if head && self.may_be_offered(at, r.durable()) {
                // A consumer at the head was woken by the log's durable end, which moves
                // just before intake offers what it appended: it waits for the offer
                // instead of reading the record back.
                got = self.wait_offered(at).await;
                if !got.is_empty() {
                    return Ok(self.seek_past(reader, got));
                }
            }
            // Consumers at the head wait for one read instead of each making its own.
            let _reading = if head { Some(self.reading.lock().await) } else { None };
            if head {
                got = self.from(at);
            }
            if got.is_empty() {
                let Some(mut r) = reader.take() else {
                    return Ok(Vec::new());
                };
                let (r, read) = match tokio::task::spawn_blocking(move || {
                    let x = read(&mut r);
                    (r, x)
                })
                .await
                {
                    Ok(x) => x,
                    // The blocking pool is shutting down: so is the router.
                    Err(_) => return Ok(Vec::new()),
                };
                *reader = Some(r);
                got = read?;
                if !got.is_empty() {
                    self.disk_reads.fetch_add(1, Ordering::Relaxed);
                    self.disk_meter.increment(1);
                    if head {
                        self.push(at, &got);
                    }
                }
            }
        }
        Ok(self.seek_past(reader, got))
    }

    /// Moves `reader` past the entries it is given, and gives them back.
    fn seek_past(&self, reader: &mut Option<WalReader>, got: Vec<Arc<Entry>>) -> Vec<Arc<Entry>> {
        if let (Some(r), Some(last)) = (reader.as_mut(), got.last()) {
            r.seek(last.to);
        }
        got
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use weir_proto::runtime::wal::{Wal, WalOptions};

    use crate::testing::batch;

    fn wal(dir: &std::path::Path, segment_bytes: u64) -> Wal {
        Wal::open(WalOptions {
            dir: dir.join("log"),
            segment_bytes,
            name: "t",
            metric_prefix: "weir_test_feed",
            gather: false,
        })
        .unwrap()
    }

    fn ids(events: &[Bytes]) -> Vec<String> {
        events
            .iter()
            .map(|e| EventHead::decode(e).unwrap().id.to_string())
            .collect()
    }

    /// Every event of the next run at `reader`, with the run's end.
    async fn next_ids(feed: &Arc<Feed>, reader: &mut Option<WalReader>) -> Vec<String> {
        let mut events = Vec::new();
        for e in feed.next(reader).await.unwrap() {
            e.take(&Want::Everything, &mut events, &mut Vec::new());
        }
        ids(&events)
    }

    /// A log in `dir`, where it starts, a feed of 1 MiB and five readers at the start.
    fn five_readers(dir: &std::path::Path) -> (Wal, Position, Arc<Feed>, Vec<Option<WalReader>>) {
        let wal = wal(dir, 1 << 20);
        let start = wal.first_position().unwrap();
        let readers = (0..5).map(|_| Some(wal.reader(start))).collect();
        (wal, start, Feed::new(1 << 20), readers)
    }

    #[tokio::test]
    async fn consumers_at_the_head_share_one_read() {
        let tmp = tempfile::tempdir().unwrap();
        let (wal, _, feed, mut readers) = five_readers(tmp.path());
        for round in 0..3 {
            wal.append(batch(&[
                (&format!("a{round}"), "x", true),
                (&format!("b{round}"), "y", true),
            ]))
            .await
            .unwrap();
            let runs = futures::future::join_all(readers.iter_mut().map(|r| next_ids(&feed, r))).await;
            for run in runs {
                assert_eq!(run, vec![format!("a{round}"), format!("b{round}")]);
            }
            assert_eq!(feed.disk_reads(), round + 1, "one read from disk served all five");
        }
        // At the durable end: nothing, and every reader stands there.
        assert!(next_ids(&feed, &mut readers[0]).await.is_empty());
        assert!(readers.iter().all(|r| r.as_ref().unwrap().position() == wal.durable()));
    }

    /// Appends a batch record (its payload zstd-compressed when `compressed`) and, when
    /// `offer`, offers it decoded to `feed` as intake does.
    async fn append(wal: &Wal, feed: &Feed, events: &[(&str, &str, bool)], compressed: bool, offer: bool) {
        let framed = batch(events);
        let payload = &framed[weir_proto::record::HEADER_LEN..];
        let stored = if compressed {
            let mut z = Vec::new();
            weir_proto::record::encode_into(&mut z, &zstd::bulk::compress(payload, 1).unwrap());
            z
        } else {
            framed.clone()
        };
        let (start, end) = wal.append_span(stored).await.unwrap();
        if offer {
            let plain = Bytes::copy_from_slice(payload);
            let view = batch::BatchView::decode(&plain).unwrap();
            let mut grouping = Grouping::default();
            view.check_each(|i, v| grouping.add(i, v.event, v.valid)).unwrap();
            let events = view.events.iter().map(|e| plain.slice_ref(e)).collect();
            feed.offer(Entry::checked(start, end, plain.len(), events, grouping.finish()));
        }
    }

    #[tokio::test]
    async fn offered_records_are_taken_from_memory_and_compressed_ones_read_back() {
        let tmp = tempfile::tempdir().unwrap();
        let (wal, start, feed, mut readers) = five_readers(tmp.path());
        for round in 0..3u64 {
            let (a, b) = (format!("a{round}"), format!("b{round}"));
            append(&wal, &feed, &[(&a, "x", true), (&b, "y", false)], true, true).await;
            let runs = futures::future::join_all(readers.iter_mut().map(|r| next_ids(&feed, r))).await;
            for run in runs {
                assert_eq!(run, vec![a.clone(), b.clone()]);
            }
            assert_eq!(feed.memory_reads(), round + 1, "what intake offered served all five");
            assert_eq!(feed.disk_reads(), 0);
        }
        // A record not offered (or not yet) is read from disk, decompressed.
        append(&wal, &feed, &[("c", "x", true)], true, false).await;
        assert_eq!(next_ids(&feed, &mut readers[0]).await, ["c"]);
        assert_eq!(feed.disk_reads(), 1);
        // A new consumer from the start reads the compressed records back from disk.
        let mut late = Some(wal.reader(start));
        let mut all = Vec::new();
        loop {
            let got = next_ids(&feed, &mut late).await;
            if got.is_empty() {
                break;
            }
            all.extend(got);
        }
        assert_eq!(all, ["a0", "b0", "a1", "b1", "a2", "b2", "c"]);
    }

    #[tokio::test]
    async fn only_a_consumer_within_the_offers_kept_waits_for_one() {
        let tmp = tempfile::tempdir().unwrap();
        let (wal, start, feed, _) = five_readers(tmp.path());
        // Written before a restart (never offered), then one intake offered.
        append(&wal, &feed, &[("old", "x", true)], true, false).await;
        let newest = wal.durable();
        append(&wal, &feed, &[("new", "x", true)], true, true).await;
        let end = wal.durable();
        assert!(
            !feed.may_be_offered(start, end),
            "a backlog before every offer kept is read at once"
        );
        assert!(feed.may_be_offered(newest, end), "the newest record is offered");
        assert!(feed.may_be_offered(end, end), "what comes next may be");
        let next = Position {
            segment: end.segment + 1,
            offset: 0,
        };
        assert!(
            !feed.may_be_offered(end, next),
            "at a segment's end a read moves the reader on"
        );
        let mut behind = Some(wal.reader(start));
        assert_eq!(next_ids(&feed, &mut behind).await, ["old", "new"], "one read from disk");
        assert_eq!(feed.disk_reads(), 1);
    }

    #[tokio::test]
    async fn each_recipient_takes_its_names_in_log_order_and_unreadable_records_are_dead_letters() {
        let tmp = tempfile::tempdir().unwrap();
        let wal = wal(tmp.path(), 1 << 20);
        let start = wal.first_position().unwrap();
        wal.append(batch(&[
            ("1", "a.routed", true),
            ("2", "b.other", true),
            ("3", "a.routed", false),
            ("4", "c.routed", true),
            ("5", "a.routed", true),
        ]))
        .await
        .unwrap();
        let mut garbage = Vec::new();
        weir_proto::record::encode_into(&mut garbage, b"\xff\xff not a batch");
        wal.append(garbage).await.unwrap();
        let catalog = crate::testing::catalog(&[("a.routed", Some("r")), ("b.other", None), ("c.routed", Some("r"))]);
        let feed = Feed::new(1 << 20);
        let entries = feed.next(&mut Some(wal.reader(start))).await.unwrap();
        assert_eq!(entries.len(), 2);
        let routed = Want::Routed {
            catalog: Arc::new(catalog),
            recipient: "r",
        };
        let (mut events, mut dead) = (Vec::new(), Vec::new());
        let passed: u64 = entries.iter().map(|e| e.take(&routed, &mut events, &mut dead)).sum();
        assert_eq!(passed, 5);
        assert_eq!(ids(&events), ["1", "4", "5"], "valid, routed here, in log order");
        assert_eq!(dead.len(), 1);
        assert!(dead[0].1.contains("unreadable batch"), "{}", dead[0].1);
        let (mut all, mut dead) = (Vec::new(), Vec::new());
        for e in &entries {
            e.take(&Want::Everything, &mut all, &mut dead);
        }
        assert_eq!(ids(&all), ["1", "2", "3", "4", "5"]);
        assert_eq!(dead.len(), 1);
        assert_eq!(entries[1].to(), wal.durable());
    }

    /// What one step of the model does.
    #[derive(Clone, Debug)]
    enum Step {
        /// Appends a batch of this many events, compressed or not, offering it to the
        /// feed as intake does or not.
        Append(usize, bool, bool),
        /// Consumer `i` pulls one run.
        Pull(usize),
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

        /// Model: however appends and pulls of three consumers interleave, across small
        /// segments and a window that holds only a few records, with records stored plain
        /// or compressed and offered by intake or not, each consumer sees every event
        /// once, in log order, and ends where the log ends.
        #[test]
        fn every_consumer_sees_every_event_once_in_order(
            steps in proptest::collection::vec(
                prop_oneof![
                    (1usize..5, any::<bool>(), any::<bool>()).prop_map(|(n, z, o)| Step::Append(n, z, o)),
                    (0usize..3).prop_map(Step::Pull),
                ],
                1..80,
            ),
            window in 100usize..3000,
        ) {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async {
                let tmp = tempfile::tempdir().unwrap();
                let wal = wal(tmp.path(), 600);
                let start = wal.first_position().unwrap();
                let feed = Feed::new(window);
                let mut readers: Vec<Option<WalReader>> = (0..3).map(|_| Some(wal.reader(start))).collect();
                let mut seen: Vec<Vec<String>> = vec![Vec::new(); 3];
                let mut appended = Vec::new();
                for step in steps {
                    match step {
                        Step::Append(n, compressed, offer) => {
                            let batch_ids: Vec<String> = (0..n).map(|i| format!("{}-{i}", appended.len())).collect();
                            let evs: Vec<(&str, &str, bool)> = batch_ids.iter().map(|id| (id.as_str(), "x", true)).collect();
                            append(&wal, &feed, &evs, compressed, offer).await;
                            appended.extend(batch_ids);
                        }
                        Step::Pull(i) => {
                            let got = next_ids(&feed, &mut readers[i]).await;
                            seen[i].extend(got);
                        }
                    }
                }
                for (i, r) in readers.iter_mut().enumerate() {
                    loop {
                        let got = next_ids(&feed, r).await;
                        if got.is_empty() {
                            break;
                        }
                        seen[i].extend(got);
                    }
                    assert_eq!(seen[i], appended, "consumer {i}");
                    assert_eq!(r.as_ref().unwrap().position(), wal.durable());
                }
            });
        }
    }
}
