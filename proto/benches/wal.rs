//! Spool append: group commit of 100-event requests (~200 B per event) with fsync,
//! from 64 concurrent writers, the way the collector's HTTP handlers use it; and the
//! latency of one append alone, of a 100-event and of a 1-event request.
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use weir_proto::record;
use weir_proto::runtime::wal::{Wal, WalOptions};

/// The allocator the `weir` binary runs with, so that the figures are the binary's.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let wal = Wal::open(WalOptions {
        dir: dir.path().to_path_buf(),
        segment_bytes: 64 << 20,
        name: "bench",
        metric_prefix: "weir_bench_log",
        gather: true,
    })
    .unwrap();
    let mut request = Vec::new();
    for _ in 0..100 {
        record::encode_into(&mut request, &[b'x'; 200]);
    }
    let mut g = c.benchmark_group("spool");
    g.throughput(Throughput::Elements(64 * 100));
    g.sample_size(20);
    g.bench_function("append_64x100_events_group_commit", |b| {
        b.iter(|| {
            rt.block_on(async {
                let mut tasks = Vec::new();
                for _ in 0..64 {
                    let wal = wal.clone();
                    let req = request.clone();
                    tasks.push(tokio::spawn(async move { wal.append(req).await.unwrap() }));
                }
                for t in tasks {
                    t.await.unwrap();
                }
            })
        })
    });
    g.finish();
    // One writer, one request at a time: the latency floor a request sees from the spool
    // (write + fdatasync + thread handoff), for a 16 KB request (≈ 100 events) and a
    // single-event one (~300 B). The append runs in a task on the runtime's worker, as a
    // request handler's does.
    let mut g = c.benchmark_group("spool");
    g.sample_size(50);
    for (name, payload) in [("append_one_16k_latency", 16_000), ("append_one_event_latency", 300)] {
        let mut data = Vec::new();
        record::encode_into(&mut data, &vec![b'x'; payload]);
        g.bench_function(name, |b| {
            b.iter(|| {
                let (wal, data) = (wal.clone(), data.clone());
                rt.block_on(async {
                    tokio::spawn(async move { wal.append(data).await.unwrap() })
                        .await
                        .unwrap()
                })
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
