//! Every kind of bad input to the collector's HTTP API, each with its exact status and
//! message, and nothing of a refused request stored.

use std::io::Write;

use crate::common::*;

fn ev(id: &str) -> String {
    format!(r#"{{"event":"cart.viewed","env":"web","id":"{id}","fields":{{"items":1,"session_id":"s"}}}}"#)
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    gz.write_all(data).unwrap();
    gz.finish().unwrap()
}

#[test]
fn bad_inputs_get_exact_answers_and_nothing_is_stored() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let up = Up::with_fixture(&data, &[]);
    let url = format!("{}/v1/events", up.collector);
    let json = [("content-type", "application/json")];
    let ndjson = [("content-type", "application/x-ndjson")];

    let deep = format!(
        r#"{{"event":"cart.viewed","env":"web","id":"refused-deep","fields":{{"items":{}1{}}}}}"#,
        "[".repeat(300),
        "]".repeat(300)
    );
    let mut bad_utf8 = br#"{"event":"cart.viewed","env":"web","id":"refused-utf8","fields":{"session_id":""#.to_vec();
    bad_utf8.extend_from_slice(b"\xff\xfe\"}}");
    let bomb = gzip(&vec![b' '; 64 << 20]);
    let hundred_k = format!(
        "[{}]",
        (0..100_000)
            .map(|i| ev(&format!("refused-big-{i}")))
            .collect::<Vec<_>>()
            .join(",")
    );
    let hundred_k_gz = gzip(hundred_k.as_bytes());
    let huge_string = format!(
        r#"{{"event":"cart.viewed","env":"web","id":"refused-huge","fields":{{"items":1,"session_id":"{}"}}}}"#,
        "x".repeat(2 << 20)
    );
    let huge_answer = format!(
        r#"{{"accepted":0,"flagged":0,"rejected":1,"errors":[{{"index":0,"error":"event is {} bytes, at most 1048576 allowed"}}]}}"#,
        huge_string.len()
    );
    let ndjson_bad = format!("{}\n{{\"event\": oops}}\n{}\n", ev("refused-nd-1"), ev("refused-nd-2"));

    type Case<'a> = (&'a str, Vec<u8>, Vec<(&'a str, &'a str)>, u16, &'a str);
    let cases: Vec<Case> = vec![
        (
            "empty body",
            vec![],
            json.to_vec(),
            400,
            r#"{"error":"empty body: send a JSON event, a JSON array or NDJSON"}"#,
        ),
        (
            "not JSON",
            b"hello".to_vec(),
            json.to_vec(),
            400,
            r#"{"error":"invalid JSON: expected value at line 1 column 1"}"#,
        ),
        (
            "a JSON string",
            br#""an event""#.to_vec(),
            json.to_vec(),
            400,
            r#"{"error":"the body must be a JSON object (one event) or an array of objects"}"#,
        ),
        (
            "an array of numbers",
            b"[1, 2]".to_vec(),
            json.to_vec(),
            400,
            r#"{"error":"element 0: an event must be a JSON object"}"#,
        ),
        (
            "deep nesting",
            deep.into_bytes(),
            json.to_vec(),
            400,
            r#"{"error":"JSON is nested deeper than 64 levels"}"#,
        ),
        (
            "invalid UTF-8",
            bad_utf8,
            json.to_vec(),
            400,
            r#"{"error":"body is not valid UTF-8 (byte 79)"}"#,
        ),
        (
            "gzip bomb",
            bomb,
            vec![("content-type", "application/json"), ("content-encoding", "gzip")],
            413,
            r#"{"error":"body is larger than 5242880 bytes (after decompression); send smaller batches"}"#,
        ),
        (
            "corrupt gzip",
            b"this is not gzip at all, just text".to_vec(),
            vec![("content-encoding", "gzip")],
            400,
            r#"{"error":"cannot decompress the body: invalid gzip header"}"#,
        ),
        (
            "unknown encoding",
            ev("refused-br").into_bytes(),
            vec![("content-encoding", "br")],
            415,
            r#"{"error":"unsupported Content-Encoding \"br\": send gzip, zstd or none"}"#,
        ),
        (
            "wrong content type",
            ev("refused-xml").into_bytes(),
            vec![("content-type", "application/xml")],
            415,
            r#"{"error":"unsupported Content-Type \"application/xml\": send application/json or application/x-ndjson"}"#,
        ),
        (
            "NDJSON with one bad line",
            ndjson_bad.into_bytes(),
            ndjson.to_vec(),
            400,
            r#"{"error":"line 2: invalid JSON: expected value at line 1 column 11"}"#,
        ),
        (
            "100k-event array",
            hundred_k.into_bytes(),
            json.to_vec(),
            413,
            r#"{"error":"body is larger than 5242880 bytes (after decompression); send smaller batches"}"#,
        ),
        (
            "100k-event array, gzipped",
            hundred_k_gz,
            vec![("content-type", "application/json"), ("content-encoding", "gzip")],
            413,
            r#"{"error":"body is larger than 5242880 bytes (after decompression); send smaller batches"}"#,
        ),
        (
            // Nothing kept, something rejected: 400 with the summary.
            "one huge string",
            huge_string.into_bytes(),
            json.to_vec(),
            400,
            &huge_answer,
        ),
    ];
    for (name, body, headers, status, want) in cases {
        let (got_status, got) = post(&url, &body, &headers);
        assert_eq!(got_status, status, "{name}: {got}");
        let want: serde_json::Value = serde_json::from_str(want).unwrap();
        assert_eq!(got, want, "{name}");
    }
    // Wrong method and path.
    let err = |r: Result<ureq::Response, ureq::Error>| match r {
        Err(ureq::Error::Status(s, r)) => (s, r.into_string().unwrap()),
        other => panic!("expected an error status, got {other:?}"),
    };
    let (s, body) = err(ureq::get(&url).call());
    assert_eq!((s, body.as_str()), (405, r#"{"error":"use POST /v1/events"}"#));
    let (s, _) = err(ureq::post(&format!("{}/v1/event", up.collector)).send_string("{}"));
    assert_eq!(s, 404);

    // A large array within the limit is taken whole.
    let big_ok = format!(
        "[{}]",
        (0..50_000)
            .map(|i| ev(&format!("ok-{i}")))
            .collect::<Vec<_>>()
            .join(",")
    );
    let (status, body) = post(&url, big_ok.as_bytes(), &json);
    assert_eq!((status, body["accepted"].clone()), (202, serde_json::json!(50_000)));

    assert!(up.stop().success());
    let ids: Vec<String> = parquet_files(&data.join("warehouse"))
        .iter()
        .flat_map(|f| strings(&read_parquet(f), "id"))
        .collect();
    assert_eq!(ids.len(), 50_000);
    assert!(
        ids.iter().all(|id| id.starts_with("ok-")),
        "nothing of a refused request is stored"
    );
}
