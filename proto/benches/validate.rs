//! Parse + validate + encode of one typical event: the collector's per-event hot path.
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use serde_json::value::RawValue;
use weir_proto::event::{EventView, Incoming};
use weir_proto::Catalog;

fn bench(c: &mut Criterion) {
    let catalog = Catalog::demo();
    let events: Vec<String> = (0..100)
        .map(|i| format!(r#"{{"event":"item.viewed","version":2,"env":"web","fields":{{"item_id":{i},"source":"search","position":{i},"price":12.5,"session_id":"s-{i}"}}}}"#))
        .collect();
    let body = format!("[{}]", events.join(","));
    let mut g = c.benchmark_group("collector");
    g.throughput(Throughput::Elements(100));
    g.bench_function("parse_validate_encode_100", |b| {
        let mut out = Vec::with_capacity(64 << 10);
        b.iter(|| {
            out.clear();
            let items: Vec<&RawValue> = serde_json::from_str(&body).unwrap();
            for raw in items {
                let ev = Incoming::parse(raw).unwrap();
                let checked = catalog.validate(&ev, ev.env.as_deref());
                assert!(checked.is_valid());
                weir_proto::record::encode_with(&mut out, |buf| {
                    EventView {
                        id: "0192f1c4-0000-7000-8000-000000000000",
                        event: ev.event.as_deref().unwrap_or(""),
                        version: checked.version,
                        env: "web",
                        received_at: 1_795_352_645_123_456,
                        client_ts: ev.ts,
                        collector: "node-1",
                        fields: ev.fields_json(),
                        valid: true,
                        errors: Vec::new(),
                        raw: &[],
                        context: Vec::new(),
                    }
                    .encode(buf)
                });
            }
            out.len()
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
