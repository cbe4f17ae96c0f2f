//! Parse + validate + encode of one typical event: the collector's per-event hot path,
//! on the demo catalog and on a generated one of 1,000 events x 5 versions x 300 fields
//! (the cost per event must not grow with the catalog).
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use serde_json::value::RawValue;
use weir_proto::event::{EventView, Incoming};
use weir_proto::Catalog;

/// The allocator the `weir` binary runs with, so that the figures are the binary's.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// 1,000 events x 5 versions, each version with 300 optional string fields.
fn big_catalog() -> Catalog {
    let mut text = String::from("[environments.web]\nkind = \"frontend\"\n\n");
    for f in 0..300 {
        text.push_str(&format!("[fields.f{f}]\ntype = \"string\"\n\n"));
    }
    let fields: Vec<String> = (0..300).map(|f| format!("\"f{f}\"")).collect();
    let fields = fields.join(", ");
    for e in 0..1000 {
        text.push_str(&format!("[events.\"e{e}.seen\"]\nowner = \"bench\"\n\n"));
        for v in 1..=5 {
            text.push_str(&format!(
                "[[events.\"e{e}.seen\".versions]]\nversion = {v}\nenvironments = [\"web\"]\noptional = [{fields}]\n\n"
            ));
        }
    }
    Catalog::from_files(vec![("big.toml".into(), text)]).unwrap()
}

fn bench(c: &mut Criterion) {
    let demo = Catalog::demo();
    let demo_body = weir_proto::catalog::demo_body(100);
    let big = big_catalog();
    let events: Vec<String> = (0..100)
        .map(|i| format!(r#"{{"event":"e{e}.seen","version":{v},"env":"web","fields":{{"f1":"a{i}","f17":"search","f150":"x","f299":"s-{i}","f42":"y"}}}}"#, e = (i * 37) % 1000, v = i % 5 + 1))
        .collect();
    let big_body = format!("[{}]", events.join(","));
    let mut g = c.benchmark_group("collector");
    g.throughput(Throughput::Elements(100));
    for (name, catalog, body) in [
        ("parse_validate_encode_100", &demo, &demo_body),
        ("parse_validate_encode_100_big_catalog", &big, &big_body),
    ] {
        bench_body(&mut g, name, catalog, body);
    }
    g.finish();
}

fn bench_body(
    g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    name: &str,
    catalog: &Catalog,
    body: &str,
) {
    g.bench_function(name, |b| {
        let mut out = Vec::with_capacity(64 << 10);
        b.iter(|| {
            out.clear();
            let items: Vec<&RawValue> = serde_json::from_str(body).unwrap();
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
}

criterion_group!(benches, bench);
criterion_main!(benches);
