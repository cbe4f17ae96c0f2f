//! Runs the collector's per-body path (split + validate + encode, as
//! `benches/ingest.rs`) a fixed number of times, for instruction counts that do not move
//! with the neighbours on a shared machine:
//!
//! ```text
//! cargo build --release -p weir-collector --example ingest_loop
//! valgrind --tool=callgrind --callgrind-out-file=/dev/null \
//!     $CARGO_TARGET_DIR/release/examples/ingest_loop 200 2>&1 | grep refs
//! ```
//! Divide the total by 100 x the count for instructions per event.
use weir_collector::body::{self, Format};
use weir_collector::ingest::{ingest, Source};
use weir_proto::Catalog;

fn main() {
    let rounds: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(200);
    let catalog = Catalog::demo();
    let body = weir_proto::catalog::demo_body(100);
    let mut bytes = 0;
    for _ in 0..rounds {
        let Ok(items) = body::split(body.as_bytes(), Format::Json) else {
            eprintln!("the body does not split");
            std::process::exit(1);
        };
        let got = ingest(&catalog, &items, Source::default(), "node-1", 1_795_352_645_123_456);
        bytes += got.framed.len();
    }
    println!("{rounds} bodies of 100 events, {bytes} bytes encoded");
}
