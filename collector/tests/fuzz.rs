//! Property-based fuzzing of the body decoder and ingest: whatever the bytes, no panic;
//! a body is either refused whole or every event gets exactly one outcome; everything
//! kept decodes as a stored event. Runs a bounded number of cases in every test run
//! (`PROPTEST_CASES` raises it for longer fuzzing sessions).

use proptest::prelude::*;
use prost::Message;
use weir_collector::body::{self, Format};
use weir_collector::ingest::{self, Source};
use weir_proto::pb::Event;
use weir_proto::{record, Catalog};

fn check(catalog: &Catalog, data: &[u8], encoding: Option<&str>, format: Format) {
    let Ok(decoded) = body::decode(encoding, bytes::Bytes::copy_from_slice(data), 1 << 20) else {
        return;
    };
    let Ok(items) = body::split(&decoded, format) else {
        return;
    };
    let got = ingest::ingest(catalog, &items, Source::default(), "fuzz", 1_795_352_645_000_000);
    let s = &got.summary;
    assert_eq!(s.accepted + s.rejected + s.dropped, items.len());
    assert_eq!(s.errors.len(), s.flagged + s.rejected);
    let stored: Vec<Event> = record::iter(&got.framed)
        .map(|r| Event::decode(r).expect("stored event decodes"))
        .collect();
    assert_eq!(stored.len(), s.accepted);
    for e in &stored {
        assert!(!e.id.is_empty() && e.received_at == 1_795_352_645_000_000);
        assert_eq!(e.valid, e.errors.is_empty());
        assert!(
            serde_json::from_slice::<serde_json::Value>(&e.fields).is_ok(),
            "fields are JSON"
        );
    }
}

/// JSON-ish text built from the pieces events are made of, so cases reach validation.
fn jsonish() -> impl Strategy<Value = String> {
    let atom = prop_oneof![
        Just("\"item.viewed\"".to_string()),
        Just("\"web\"".to_string()),
        Just("\"backend\"".to_string()),
        Just("{\"event\":".to_string()),
        Just("\"env\":".to_string()),
        Just("\"fields\":{".to_string()),
        Just("\"item_id\":".to_string()),
        Just("\"source\":\"feed\"".to_string()),
        Just("\"session_id\":\"s\"".to_string()),
        Just("\"version\":".to_string()),
        Just("\"ts\":".to_string()),
        Just("\"id\":".to_string()),
        Just("[".to_string()),
        Just("]".to_string()),
        Just("{".to_string()),
        Just("}".to_string()),
        Just(",".to_string()),
        Just(":".to_string()),
        Just("\n".to_string()),
        Just("null".to_string()),
        Just("true".to_string()),
        any::<i64>().prop_map(|i| i.to_string()),
        any::<f64>().prop_map(|f| f.to_string()),
        "\\PC{0,12}".prop_map(|s| serde_json::to_string(&s).unwrap()),
    ];
    prop::collection::vec(atom, 0..40).prop_map(|v| v.concat())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(data in prop::collection::vec(any::<u8>(), 0..512)) {
        let catalog = Catalog::demo();
        check(&catalog, &data, None, Format::Json);
        check(&catalog, &data, None, Format::Ndjson);
        check(&catalog, &data, Some("gzip"), Format::Json);
        check(&catalog, &data, Some("zstd"), Format::Json);
    }

    #[test]
    fn json_shaped_input_never_panics(text in jsonish()) {
        let catalog = Catalog::demo();
        check(&catalog, text.as_bytes(), None, Format::Json);
        check(&catalog, text.as_bytes(), None, Format::Ndjson);
    }

    #[test]
    fn valid_events_with_arbitrary_field_values(item in any::<i64>(), source in "\\PC{0,40}", extra in jsonish()) {
        let catalog = Catalog::demo();
        let text = format!(
            r#"[{{"event":"item.viewed","env":"web","fields":{{"item_id":{item},"source":{},"session_id":"s"}}}},{{"event":"item.viewed","env":"ios","fields":{{"item_id":{extra}}}}}]"#,
            serde_json::to_string(&source).unwrap()
        );
        check(&catalog, text.as_bytes(), None, Format::Json);
    }
}
