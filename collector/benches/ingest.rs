//! The collector's whole per-body path short of the network and the spool: split a
//! 100-event JSON body into events, validate each against the demo catalog, stamp and
//! encode it into framed spool records, and count it for metrics.
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use weir_collector::body::{self, Format};
use weir_collector::ingest::{ingest, Source};
use weir_proto::Catalog;

/// The allocator the `weir` binary runs with, so that the figures are the binary's.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn bench(c: &mut Criterion) {
    let catalog = Catalog::demo();
    let body = weir_proto::catalog::demo_body(100);
    let mut g = c.benchmark_group("collector");
    g.throughput(Throughput::Elements(100));
    g.bench_function("split_ingest_100", |b| {
        b.iter(|| {
            let items = body::split(body.as_bytes(), Format::Json).unwrap();
            let got = ingest(&catalog, &items, Source::default(), "node-1", 1_795_352_645_123_456);
            assert_eq!(got.summary.accepted, 100);
            got.framed.len()
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
