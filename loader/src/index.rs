//! The index of one buffered hour: where each event is and what it is ordered by,
//! 32 bytes an event whatever the event's size, built from each event's head only
//! ([`EventHead`]). The events themselves stay in the (mapped) buffer file.
//!
//! Memory is bounded by `max_entries`: an hour with more events than that is indexed
//! in buckets by id hash spilled to files beside the staging directory, so duplicates
//! always meet in one bucket. Each bucket is deduplicated and sorted on its own and
//! written back as a sorted run; pass 2 merges the runs of each event version (a k-way
//! merge reading each run through a small buffer).
//!
//! Order of the rows of a file: `received_at`, then the id's hash (so the order does
//! not depend on where the buffer came from: the file buffer or the MongoDB mirror),
//! then the position in the buffer.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::fs::{self, File};
use std::hash::{BuildHasher, BuildHasherDefault, Hasher};
use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use weir_proto::catalog::Catalog;
use weir_proto::event::EventHead;
use weir_proto::record::{self, Decoded};

use crate::{io_err, schema, LoadError};

/// Group of an event valid when collected whose version the loader's catalog lacks.
pub(crate) const UNKNOWN: u32 = u32::MAX - 1;
/// Group of an event the collector kept invalid.
pub(crate) const INVALID: u32 = u32::MAX;
/// Marks a repeat of an id already seen (dropped before sorting).
const DUPLICATE: u32 = u32::MAX - 2;
/// Bytes of one entry, in memory and in spill files.
pub(crate) const ENTRY_BYTES: usize = 32;
/// At most this many spill buckets (open files, each with a write buffer).
const MAX_BUCKETS: usize = 256;
const SPILL_BUFFER: usize = 32 << 10;

/// One event of the hour.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Entry {
    /// `received_at`, microseconds.
    pub at: i64,
    /// Hash of the id.
    pub id_hash: u64,
    /// Where its encoded bytes start in the buffer.
    pub off: u64,
    /// How many bytes.
    pub len: u32,
    /// Index into [`Index::groups`], or [`UNKNOWN`] / [`INVALID`].
    pub group: u32,
}

impl Entry {
    /// Both kinds of invalid events go to one `_invalid` file: one class.
    pub(crate) fn class(&self) -> u32 {
        self.group.min(UNKNOWN)
    }

    fn key(&self) -> (u32, i64, u64, u64) {
        (self.class(), self.at, self.id_hash, self.off)
    }

    /// Order within a file.
    pub(crate) fn row_key(&self) -> (i64, u64, u64) {
        (self.at, self.id_hash, self.off)
    }

    fn to_bytes(self) -> [u8; ENTRY_BYTES] {
        let mut b = [0u8; ENTRY_BYTES];
        b[0..8].copy_from_slice(&self.at.to_le_bytes());
        b[8..16].copy_from_slice(&self.id_hash.to_le_bytes());
        b[16..24].copy_from_slice(&self.off.to_le_bytes());
        b[24..28].copy_from_slice(&self.len.to_le_bytes());
        b[28..32].copy_from_slice(&self.group.to_le_bytes());
        b
    }

    fn from_bytes(b: &[u8; ENTRY_BYTES]) -> Entry {
        let u64_at = |i: usize| {
            u64::from_le_bytes([
                b[i],
                b[i + 1],
                b[i + 2],
                b[i + 3],
                b[i + 4],
                b[i + 5],
                b[i + 6],
                b[i + 7],
            ])
        };
        let u32_at = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        Entry {
            at: u64_at(0) as i64,
            id_hash: u64_at(8),
            off: u64_at(16),
            len: u32_at(24),
            group: u32_at(28),
        }
    }

    /// The encoded event in `data` (empty if out of range, which a decode refuses).
    fn bytes<'d>(&self, data: &'d [u8]) -> &'d [u8] {
        let start = self.off as usize;
        data.get(start..start + self.len as usize).unwrap_or_default()
    }
}

/// The id hash: fast, and the same in every run (duplicates are still confirmed by
/// comparing the ids themselves).
fn id_hash(id: &str) -> u64 {
    foldhash::fast::FixedState::with_seed(0x77_65_69_72).hash_one(id)
}

/// Keys that are hashes already.
#[derive(Default)]
struct Identity(u64);

impl Hasher for Identity {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 << 8) | u64::from(b);
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = v;
    }
}

/// (event, version) → group, with the catalog consulted once per pair.
struct Groups<'a> {
    pairs: Vec<(&'a str, u32, u32)>,
    groups: Vec<(&'a str, u32)>,
}

impl<'a> Groups<'a> {
    fn of(&mut self, catalog: &Catalog, h: &EventHead<'a>) -> u32 {
        if !h.valid {
            return INVALID;
        }
        // A handful of pairs per hour: a scan beats hashing the name.
        if let Some(&(_, _, g)) = self.pairs.iter().find(|(e, v, _)| *v == h.version && *e == h.event) {
            return g;
        }
        let g = if schema::known(catalog, h.event, h.version) {
            self.groups.push((h.event, h.version));
            (self.groups.len() - 1) as u32
        } else {
            UNKNOWN
        };
        self.pairs.push((h.event, h.version, g));
        g
    }
}

/// The index of one hour, after deduplication and sorting.
pub(crate) struct Index<'a> {
    /// The event versions present, by group number.
    pub groups: Vec<(&'a str, u32)>,
    /// Events read (duplicates included).
    pub events: u64,
    /// Records whose event could not be read (skipped).
    pub unreadable: u64,
    /// Bytes that were no record (skipped over to the next intact one).
    pub damaged_bytes: u64,
    /// Repeats of an id seen earlier in the buffer (dropped).
    pub duplicates: u64,
    /// Bytes of the buffer read.
    pub bytes: u64,
    /// Whether the index went to spill files.
    pub spilled: bool,
    runs: Runs<'a>,
}

enum Runs<'a> {
    /// Entries point into the buffer.
    Memory(Vec<Entry>, &'a [u8]),
    /// Entries point into their class's file.
    Files {
        dir: PathBuf,
        runs: Vec<RunFile>,
        classes: HashMap<u32, memmap2::Mmap>,
    },
}

/// A sorted run on disk and where each class starts in it.
struct RunFile {
    path: PathBuf,
    /// (class, first entry, entries), ascending.
    classes: Vec<(u32, u64, u64)>,
}

/// Bucket files while indexing an hour that does not fit, and the events' bytes copied
/// per class (one file per event version, one for `_invalid`) in buffer order, so that
/// pass 2 reads each class from its own file instead of sweeping the whole buffer once
/// per event version (which, for an hour larger than the page cache, would read it from
/// disk that many times).
struct Spill {
    dir: PathBuf,
    paths: Vec<PathBuf>,
    writers: Vec<BufWriter<File>>,
    classes: HashMap<u32, ClassFile>,
}

/// One class's events, copied.
struct ClassFile {
    path: PathBuf,
    writer: BufWriter<File>,
    written: u64,
}

impl Spill {
    fn start(dir: &Path, buckets: usize) -> Result<Spill, LoadError> {
        if dir.exists() {
            fs::remove_dir_all(dir).map_err(io_err(dir))?;
        }
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        let mut paths = Vec::with_capacity(buckets);
        let mut writers = Vec::with_capacity(buckets);
        for b in 0..buckets {
            let path = dir.join(format!("bucket-{b:04}"));
            let f = File::create(&path).map_err(io_err(&path))?;
            writers.push(BufWriter::with_capacity(SPILL_BUFFER, f));
            paths.push(path);
        }
        Ok(Spill {
            dir: dir.to_path_buf(),
            paths,
            writers,
            classes: HashMap::new(),
        })
    }

    /// Copies the event's `bytes` to its class file, points the entry there, and files
    /// the entry in its bucket.
    fn push(&mut self, mut e: Entry, bytes: &[u8]) -> Result<(), LoadError> {
        let class = e.class();
        let file = match self.classes.entry(class) {
            std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
            std::collections::hash_map::Entry::Vacant(v) => {
                let path = self.dir.join(format!("class-{class}.buf"));
                let f = File::create(&path).map_err(io_err(&path))?;
                v.insert(ClassFile {
                    path,
                    writer: BufWriter::with_capacity(SPILL_BUFFER, f),
                    written: 0,
                })
            }
        };
        file.writer.write_all(bytes).map_err(io_err(&file.path))?;
        e.off = file.written;
        file.written += bytes.len() as u64;
        let b = (e.id_hash % self.writers.len() as u64) as usize;
        self.writers[b].write_all(&e.to_bytes()).map_err(io_err(&self.paths[b]))
    }

    /// Flushes the class files and maps them.
    fn map_classes(&mut self) -> Result<HashMap<u32, memmap2::Mmap>, LoadError> {
        let mut maps = HashMap::new();
        for (class, file) in self.classes.drain() {
            let written = file
                .writer
                .into_inner()
                .map_err(|e| io_err(&file.path)(e.into_error()))?;
            drop(written);
            if file.written == 0 {
                continue;
            }
            let f = File::open(&file.path).map_err(io_err(&file.path))?;
            // SAFETY: the file was just written by this load, in a directory of its own
            // that nothing else writes, and is not changed while mapped.
            let map = unsafe { memmap2::Mmap::map(&f) }.map_err(io_err(&file.path))?;
            maps.insert(class, map);
        }
        Ok(maps)
    }
}

/// Reads every entry of a file.
fn read_entries(path: &Path) -> Result<Vec<Entry>, LoadError> {
    let bytes = fs::read(path).map_err(io_err(path))?;
    Ok(bytes
        .chunks_exact(ENTRY_BYTES)
        .filter_map(|c| <&[u8; ENTRY_BYTES]>::try_from(c).ok())
        .map(Entry::from_bytes)
        .collect())
}

/// Drops repeats of an id, keeping the first in the buffer: `entries` must be in buffer
/// order. Hash matches are confirmed by comparing the ids. Returns how many it dropped.
fn dedup<'d>(entries: &mut Vec<Entry>, bytes: impl Fn(&Entry) -> &'d [u8]) -> u64 {
    let id_of = |e: &Entry| EventHead::decode(bytes(e)).map(|h| h.id).unwrap_or_default();
    let mut first: HashMap<u64, u32, BuildHasherDefault<Identity>> =
        HashMap::with_capacity_and_hasher(entries.len(), Default::default());
    // Other ids with a hash already taken (64-bit collisions: practically never).
    let mut others: HashMap<u64, Vec<u32>> = HashMap::new();
    let mut duplicates = 0;
    for i in 0..entries.len() {
        let h = entries[i].id_hash;
        let Some(&j) = first.get(&h) else {
            first.insert(h, i as u32);
            continue;
        };
        let id = id_of(&entries[i]);
        let seen = std::iter::once(j)
            .chain(others.get(&h).into_iter().flatten().copied())
            .any(|k| id_of(&entries[k as usize]) == id);
        if seen {
            entries[i].group = DUPLICATE;
            duplicates += 1;
        } else {
            others.entry(h).or_default().push(i as u32);
        }
    }
    if duplicates > 0 {
        entries.retain(|e| e.group != DUPLICATE);
    }
    duplicates
}

fn sort(entries: &mut [Entry]) {
    entries.sort_unstable_by_key(Entry::key);
}

/// Indexes the records in `data` (pass 1), then deduplicates and sorts. Past
/// `max_entries` events the index goes to bucket files in `spill_dir`.
pub(crate) fn build<'a>(
    data: &'a [u8],
    catalog: &Catalog,
    max_entries: usize,
    spill_dir: &Path,
) -> Result<Index<'a>, LoadError> {
    let max_entries = max_entries.max(1);
    let mut groups = Groups {
        pairs: Vec::new(),
        groups: Vec::new(),
    };
    let mut mem: Vec<Entry> = Vec::new();
    let mut spill: Option<Spill> = None;
    let (mut pos, mut events, mut unreadable) = (0usize, 0u64, 0u64);
    let mut damage: Vec<(usize, usize)> = Vec::new();
    while pos < data.len() {
        let (payload, used) = match record::decode(&data[pos..]) {
            Decoded::Record(payload, used) => (payload, used),
            // Damaged bytes (a torn write that later appends went past, or a bad disk):
            // never stop at them; skip to the next intact record and say so.
            Decoded::Incomplete | Decoded::Corrupt => {
                let skip = record::resync(&data[pos..]).unwrap_or(data.len() - pos);
                damage.push((pos, skip));
                pos += skip;
                continue;
            }
        };
        let off = pos + record::HEADER_LEN;
        pos += used;
        let Ok(h) = EventHead::decode(payload) else {
            unreadable += 1;
            continue;
        };
        let e = Entry {
            at: h.received_at,
            id_hash: id_hash(h.id),
            off: off as u64,
            len: payload.len() as u32,
            group: groups.of(catalog, &h),
        };
        events += 1;
        if let Some(s) = spill.as_mut() {
            s.push(e, payload)?;
            continue;
        }
        mem.push(e);
        if mem.len() >= max_entries && pos < data.len() {
            // Enough buckets for the whole hour, estimated from the events so far.
            let estimate = data.len() as f64 / pos as f64 * mem.len() as f64;
            let buckets = ((estimate * 1.25 / max_entries as f64).ceil() as usize).clamp(2, MAX_BUCKETS);
            let mut s = Spill::start(spill_dir, buckets)?;
            for e in mem.drain(..) {
                s.push(e, e.bytes(data))?;
            }
            mem = Vec::new();
            tracing::info!(
                events = estimate as u64,
                buckets,
                dir = %spill_dir.display(),
                "the hour's index is larger than the memory budget; spilling it"
            );
            spill = Some(s);
        }
    }
    for &(at, len) in &damage {
        tracing::error!(
            offset = at,
            bytes = len,
            "damaged bytes in the hourly buffer (not a record); skipped to the next intact record"
        );
    }
    let mut index = Index {
        groups: groups.groups,
        events,
        unreadable,
        damaged_bytes: damage.iter().map(|d| d.1 as u64).sum(),
        duplicates: 0,
        bytes: pos as u64,
        spilled: spill.is_some(),
        runs: Runs::Memory(Vec::new(), data),
    };
    match spill {
        None => {
            index.duplicates = dedup(&mut mem, |e| e.bytes(data));
            sort(&mut mem);
            index.runs = Runs::Memory(mem, data);
        }
        Some(mut s) => {
            let maps = s.map_classes()?;
            let class_bytes = |e: &Entry| -> &[u8] { maps.get(&e.class()).map_or(&[][..], |m| e.bytes(m)) };
            let mut runs = Vec::with_capacity(s.paths.len());
            for (path, w) in s.paths.iter().zip(s.writers) {
                let f = w.into_inner().map_err(|e| io_err(path)(e.into_error()))?;
                drop(f);
                let mut entries = read_entries(path)?;
                index.duplicates += dedup(&mut entries, class_bytes);
                sort(&mut entries);
                let mut classes: Vec<(u32, u64, u64)> = Vec::new();
                let mut out = BufWriter::with_capacity(1 << 20, File::create(path).map_err(io_err(path))?);
                for (i, e) in entries.iter().enumerate() {
                    match classes.last_mut() {
                        Some(c) if c.0 == e.class() => c.2 += 1,
                        _ => classes.push((e.class(), i as u64, 1)),
                    }
                    out.write_all(&e.to_bytes()).map_err(io_err(path))?;
                }
                out.flush().map_err(io_err(path))?;
                runs.push(RunFile {
                    path: path.clone(),
                    classes,
                });
            }
            index.runs = Runs::Files {
                dir: s.dir,
                runs,
                classes: maps,
            };
        }
    }
    Ok(index)
}

impl Index<'_> {
    /// The encoded event an entry points at.
    pub(crate) fn bytes(&self, e: &Entry) -> &[u8] {
        match &self.runs {
            Runs::Memory(_, data) => e.bytes(data),
            Runs::Files { classes, .. } => classes.get(&e.class()).map_or(&[][..], |m| e.bytes(m)),
        }
    }

    /// The entries of `class` (a group, or [`UNKNOWN`] for every invalid event) in row
    /// order.
    pub(crate) fn class(&self, class: u32) -> Result<Merge<'_>, LoadError> {
        match &self.runs {
            Runs::Memory(entries, _) => {
                let start = entries.partition_point(|e| e.class() < class);
                let end = entries.partition_point(|e| e.class() <= class);
                Ok(Merge::Memory(entries[start..end].iter()))
            }
            Runs::Files { runs, .. } => {
                let mut sources = Vec::new();
                let mut heap = BinaryHeap::new();
                for run in runs {
                    let Some(&(_, first, count)) = run.classes.iter().find(|c| c.0 == class) else {
                        continue;
                    };
                    let mut f = File::open(&run.path).map_err(io_err(&run.path))?;
                    f.seek(SeekFrom::Start(first * ENTRY_BYTES as u64))
                        .map_err(io_err(&run.path))?;
                    let mut src = RunReader {
                        path: &run.path,
                        reader: BufReader::with_capacity(64 << 10, f),
                        left: count,
                    };
                    if let Some(e) = src.next()? {
                        heap.push(Reverse(HeapItem(e, sources.len())));
                    }
                    sources.push(src);
                }
                Ok(Merge::Files { sources, heap })
            }
        }
    }
}

impl Drop for Index<'_> {
    fn drop(&mut self) {
        if let Runs::Files { dir, .. } = &self.runs {
            let _ = fs::remove_dir_all(dir);
        }
    }
}

pub(crate) struct RunReader<'r> {
    path: &'r Path,
    reader: BufReader<File>,
    left: u64,
}

impl RunReader<'_> {
    fn next(&mut self) -> Result<Option<Entry>, LoadError> {
        if self.left == 0 {
            return Ok(None);
        }
        let mut b = [0u8; ENTRY_BYTES];
        self.reader.read_exact(&mut b).map_err(io_err(self.path))?;
        self.left -= 1;
        Ok(Some(Entry::from_bytes(&b)))
    }
}

#[derive(PartialEq, Eq)]
pub(crate) struct HeapItem(Entry, usize);

impl Ord for HeapItem {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.row_key().cmp(&other.0.row_key())
    }
}

impl PartialOrd for HeapItem {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

/// The entries of one class in row order.
pub(crate) enum Merge<'i> {
    Memory(std::slice::Iter<'i, Entry>),
    Files {
        sources: Vec<RunReader<'i>>,
        heap: BinaryHeap<Reverse<HeapItem>>,
    },
}

impl Merge<'_> {
    /// The next entry.
    pub(crate) fn next(&mut self) -> Result<Option<Entry>, LoadError> {
        match self {
            Merge::Memory(it) => Ok(it.next().copied()),
            Merge::Files { sources, heap } => {
                let Some(Reverse(HeapItem(e, s))) = heap.pop() else {
                    return Ok(None);
                };
                if let Some(next) = sources[s].next()? {
                    heap.push(Reverse(HeapItem(next, s)));
                }
                Ok(Some(e))
            }
        }
    }

    /// Up to `n` next entries into `out` (cleared first).
    pub(crate) fn chunk(&mut self, n: usize, out: &mut Vec<Entry>) -> Result<(), LoadError> {
        out.clear();
        while out.len() < n {
            match self.next()? {
                Some(e) => out.push(e),
                None => break,
            }
        }
        Ok(())
    }
}
