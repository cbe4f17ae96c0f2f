//! Spool append: group commit of 100-event requests (~200 B per event) with fsync,
//! from 64 concurrent writers, the way the collector's HTTP handlers use it; and the
//! latency of one append alone, of a 100-event and of a 1-event request.
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use weir_proto::record;
use weir_proto::runtime::wal::{Wal, WalOptions};

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
    // One writer, one 16 KB request (≈ 100 events) at a time: the latency floor a
    // request sees from the spool (write + fdatasync + thread handoff). The append runs in
    // a task on the runtime's worker, as a request handler's does.
    let mut one = Vec::new();
    record::encode_into(&mut one, &[b'x'; 16_000]);
    let mut g = c.benchmark_group("spool");
    g.sample_size(50);
    g.bench_function("append_one_16k_latency", |b| {
        b.iter(|| {
            let (wal, one) = (wal.clone(), one.clone());
            rt.block_on(async {
                tokio::spawn(async move { wal.append(one).await.unwrap() })
                    .await
                    .unwrap()
            })
        })
    });
    // One single-event request (~300 B) at a time: what a 1-event request waits for.
    let mut small = Vec::new();
    record::encode_into(&mut small, &[b'x'; 300]);
    g.bench_function("append_one_event_latency", |b| {
        b.iter(|| {
            let (wal, small) = (wal.clone(), small.clone());
            rt.block_on(async {
                tokio::spawn(async move { wal.append(small).await.unwrap() })
                    .await
                    .unwrap()
            })
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
