//! Arrow Flight over a real warehouse: `weir loader serve`, read by the arrow-flight
//! Rust client and by pyarrow.flight.

use std::collections::BTreeSet;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;
use arrow_array::cast::AsArray;
use arrow_flight::{FlightClient, FlightDescriptor, Ticket};
use futures::TryStreamExt;

#[test]
fn flight_lists_and_fetches_hours_and_refuses_bad_tickets() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let up = Up::with_fixture(&data, &[("WEIR_LOADER_FLIGHT", "127.0.0.1:0")]);
    let mut sent = BTreeSet::new();
    let events: Vec<String> = (0..250)
        .map(|i| {
            sent.insert(format!("fl-{i}"));
            format!(r#"{{"event":"cart.viewed","env":"web","id":"fl-{i}","fields":{{"items":{i},"session_id":"s"}}}}"#)
        })
        .collect();
    assert_eq!(post_events(&up.collector, &format!("[{}]", events.join(","))).0, 202);
    assert!(up.stop().success());

    let port = free_port();
    let cfg = tmp.path().join("serve.toml");
    std::fs::write(
        &cfg,
        format!(
            "data_dir = \"{}\"\ncatalog = \"{}\"\n[loader]\nflight = \"127.0.0.1:{port}\"\nflight_token = \"fl-token\"\n",
            data.display(),
            fixture_catalog().display()
        ),
    )
    .unwrap();
    let mut server = Reaped::new(
        weir()
            .args(["loader", "serve", "--config", cfg.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "flight server did not start");
        std::thread::sleep(Duration::from_millis(50));
    }

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let channel = tonic::transport::Channel::from_shared(format!("http://127.0.0.1:{port}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut client = FlightClient::new(channel);
        // flight_token is set: a call without it is refused.
        let refused = match client.list_flights("").await {
            Ok(s) => s.try_collect::<Vec<_>>().await.err(),
            Err(e) => Some(e),
        };
        match refused {
            Some(arrow_flight::error::FlightError::Tonic(status)) => {
                assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status}");
                assert!(status.message().contains("flight_token"), "{status}");
            }
            other => panic!("a call without the token was not refused: {other:?}"),
        }
        client.add_header("authorization", "Bearer fl-token").unwrap();
        let flights: Vec<_> = client.list_flights("").await.unwrap().try_collect().await.unwrap();
        assert_eq!(flights.len(), 1, "one flight per loaded event version");
        let info = &flights[0];
        let cmd: serde_json::Value = serde_json::from_slice(&info.flight_descriptor.as_ref().unwrap().cmd).unwrap();
        assert_eq!(cmd, serde_json::json!({"event": "cart.viewed", "version": 1}));
        assert_eq!(info.total_records, 250);
        let meta: serde_json::Value = serde_json::from_slice(&info.app_metadata).unwrap();
        let hours = meta["hours"].as_array().unwrap().clone();
        assert!(!hours.is_empty());
        let schema = info.clone().try_decode_schema().unwrap();
        assert!(schema.field_with_name("items").is_ok() && schema.field_with_name("event").is_err());

        // Every endpoint's ticket fetches its hour; together, exactly the rows sent.
        let mut ids = BTreeSet::new();
        for ep in &info.endpoint {
            let batches: Vec<_> = client
                .do_get(ep.ticket.clone().unwrap())
                .await
                .unwrap()
                .try_collect()
                .await
                .unwrap();
            for b in &batches {
                ids.extend(
                    b.column_by_name("id")
                        .unwrap()
                        .as_string::<i32>()
                        .iter()
                        .map(|s| s.unwrap().to_string()),
                );
            }
        }
        assert_eq!(ids, sent);

        // A hand-written ticket over a range, and GetFlightInfo for it.
        let h = hours[0].as_str().unwrap();
        let spec = format!(r#"{{"event":"cart.viewed","version":1,"from":"{h}","to":"{h}"}}"#);
        let got = client
            .get_flight_info(FlightDescriptor::new_cmd(spec.clone()))
            .await
            .unwrap();
        assert_eq!(got.endpoint.len(), 1);
        let batches: Vec<_> = client
            .do_get(Ticket::new(spec))
            .await
            .unwrap()
            .try_collect()
            .await
            .unwrap();
        assert!(batches.iter().map(|b| b.num_rows()).sum::<usize>() > 0);

        // A ticket that matches no loaded hour: NOT_FOUND naming the hours there are,
        // not an empty table.
        let ticket = r#"{"event":"cart.viewed","version":1,"from":"2020-01-01T00","to":"2020-01-01T05"}"#;
        let err = match client.do_get(Ticket::new(ticket.to_string())).await {
            Ok(stream) => stream.try_collect::<Vec<_>>().await.unwrap_err(),
            Err(e) => e,
        };
        let arrow_flight::error::FlightError::Tonic(status) = err else {
            panic!("expected a gRPC status, got {err}");
        };
        assert_eq!(status.code(), tonic::Code::NotFound);
        assert!(
            status
                .message()
                .contains("no loaded hour of cart.viewed version 1 from 2020-01-01T00 to 2020-01-01T05")
                && status.message().contains(&format!("loaded hours of it: {h}")),
            "{}",
            status.message()
        );

        // Bad tickets: INVALID_ARGUMENT with a message that says what is wrong.
        let cases = [
            ("not json", "the ticket must be JSON"),
            (r#"{"event":"nope.seen","version":1}"#, "unknown event \"nope.seen\""),
            (
                r#"{"event":"cart.viewed","version":7}"#,
                "has no version 7 (latest is 1)",
            ),
            (
                r#"{"event":"cart.viewed","version":1,"from":"2026-11-22T13","to":"2026-11-22T10"}"#,
                "is after to",
            ),
            (
                r#"{"event":"cart.viewed","version":1,"from":"yesterday"}"#,
                "from: \"yesterday\" is not an hour like 2026-11-22T13",
            ),
            (
                r#"{"event":"cart.viewed","version":1,"colour":"red"}"#,
                "unknown field `colour`",
            ),
        ];
        for (ticket, want) in cases {
            let err = match client.do_get(Ticket::new(ticket.to_string())).await {
                Ok(stream) => stream.try_collect::<Vec<_>>().await.unwrap_err(),
                Err(e) => e,
            };
            let arrow_flight::error::FlightError::Tonic(status) = err else {
                panic!("{ticket}: expected a gRPC status, got {err}");
            };
            assert_eq!(status.code(), tonic::Code::InvalidArgument, "{ticket}");
            assert!(
                status.message().contains(want),
                "{ticket}: want {want:?} in {:?}",
                status.message()
            );
        }
    });

    // The same through pyarrow.flight.
    let script = format!(
        r#"
import json, pyarrow as pa, pyarrow.flight as fl
c = fl.connect("grpc://127.0.0.1:{port}")
try:
    list(c.list_flights())
    raise SystemExit("a call without the token was accepted")
except fl.FlightUnauthenticatedError:
    pass
o = fl.FlightCallOptions(headers=[(b"authorization", b"Bearer fl-token")])
flights = list(c.list_flights(options=o))
rows = sum(c.do_get(ep.ticket, options=o).read_all().num_rows for f in flights for ep in f.endpoints)
try:
    c.do_get(fl.Ticket(b"garbage"), options=o).read_all()
    bad = "accepted"
except pa.ArrowInvalid as e:  # how pyarrow reports INVALID_ARGUMENT
    bad = str(e)
print(json.dumps({{"flights": len(flights), "rows": rows, "bad": bad}}))
"#
    );
    let out = Command::new("python3").arg("-c").arg(&script).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let got: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((got["flights"].as_u64(), got["rows"].as_u64()), (Some(1), Some(250)));
    assert!(
        got["bad"].as_str().unwrap().contains("the ticket must be JSON"),
        "{got}"
    );

    // A client still connected (its runtime no longer polled) must not hold the exit.
    let stopped = Instant::now();
    let _ = Command::new("kill").arg("-TERM").arg(server.id().to_string()).status();
    assert!(server.wait().unwrap().success());
    assert!(
        stopped.elapsed() < Duration::from_secs(15),
        "shutdown took {:?}",
        stopped.elapsed()
    );
    drop(rt);
}
