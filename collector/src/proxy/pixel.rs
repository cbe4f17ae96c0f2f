//! `GET /v1/p.gif`: one event in query parameters, answered with a 1x1 GIF.

use std::net::SocketAddr;

use hyper::body::Incoming;
use hyper::header::HeaderValue;
use hyper::{Request, StatusCode};
use weir_proto::runtime::http::{self as h, Response};

use super::keys::head_key;
use super::limits::limit_ip;
use super::{authorized, client_of, Proxy};
use crate::http::State;

/// A transparent 1x1 GIF.
pub(super) const GIF: &[u8] = &[
    0x47, 0x49, 0x46, 0x38, 0x39, 0x61, 0x01, 0x00, 0x01, 0x00, 0x80, 0x00, 0x00, 0x00, 0x00, 0x00, 0xff, 0xff, 0xff,
    0x21, 0xf9, 0x04, 0x01, 0x00, 0x00, 0x00, 0x00, 0x2c, 0x00, 0x00, 0x00, 0x00, 0x01, 0x00, 0x01, 0x00, 0x00, 0x02,
    0x02, 0x44, 0x01, 0x00, 0x3b,
];

/// Builds the JSON event a pixel's query describes; field values are typed by the
/// catalog (numbers and booleans for int, float and bool fields).
pub fn pixel_event(query: &str, catalog: &weir_proto::Catalog) -> Result<String, String> {
    use weir_proto::catalog::{FieldType, Scalar};
    let mut ev = serde_json::Map::new();
    let mut fields = serde_json::Map::new();
    for (k, v) in form_urlencoded::parse(query.as_bytes()) {
        match k.as_ref() {
            "key" => {}
            "event" | "env" | "id" => {
                ev.insert(k.into_owned(), v.into_owned().into());
            }
            "version" | "ts" => {
                let value = serde_json::from_str::<serde_json::Value>(&v)
                    .ok()
                    .filter(|x| x.is_number())
                    .unwrap_or_else(|| v.clone().into_owned().into());
                ev.insert(k.into_owned(), value);
            }
            "fields" => match serde_json::from_str::<serde_json::Value>(&v) {
                Ok(serde_json::Value::Object(m)) => fields.extend(m),
                _ => return Err("fields: must be a JSON object".into()),
            },
            name => {
                let Some(field) = name.strip_prefix("f.") else {
                    return Err(format!(
                        "{name}: unknown parameter (use event, version, env, id, ts, f.<field> or fields)"
                    ));
                };
                let typed = match catalog.fields.get(field).map(|d| d.ty) {
                    Some(FieldType::Scalar(Scalar::Int | Scalar::Float | Scalar::Bool)) | Some(FieldType::Array(_)) => {
                        serde_json::from_str::<serde_json::Value>(&v).unwrap_or_else(|_| v.clone().into_owned().into())
                    }
                    _ => v.clone().into_owned().into(),
                };
                fields.insert(field.to_string(), typed);
            }
        }
    }
    ev.insert("fields".into(), fields.into());
    serde_json::to_string(&ev).map_err(|e| e.to_string())
}

pub(super) async fn pixel(state: &State, proxy: &Proxy, peer: SocketAddr, req: Request<Incoming>) -> Response {
    let client = client_of(proxy, peer, req.headers());
    if let Some(r) = limit_ip(proxy, client) {
        return r;
    }
    let (parts, _) = req.into_parts();
    let query = parts.uri.query().unwrap_or("");
    let body = match pixel_event(query, &state.catalog.load()) {
        Ok(b) => b,
        Err(e) => return h::error(StatusCode::BAD_REQUEST, e),
    };
    let ua = parts
        .headers
        .get(hyper::header::USER_AGENT)
        .and_then(|v| v.to_str().ok());
    let r = authorized(
        state,
        proxy,
        client,
        head_key(&parts),
        ua,
        Some("application/json"),
        None,
        bytes::Bytes::from(body),
    )
    .await;
    if r.status() != StatusCode::ACCEPTED {
        return r;
    }
    let mut gif = h::bytes(StatusCode::OK, "image/gif", bytes::Bytes::from_static(GIF));
    gif.headers_mut().insert(
        hyper::header::CACHE_CONTROL,
        HeaderValue::from_static("no-store, max-age=0"),
    );
    gif
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    #[test]
    fn pixel_query_becomes_a_typed_event() {
        let c = weir_proto::Catalog::demo();
        let ev = pixel_event("key=k&event=item.viewed&version=2&id=p1&f.item_id=7&f.source=search&f.price=9.5&f.is_promoted=true&f.session_id=007", &c).unwrap();
        let v: serde_json::Value = serde_json::from_str(&ev).unwrap();
        assert_eq!(v["event"], "item.viewed");
        assert_eq!(v["version"], 2);
        assert_eq!(v["fields"]["item_id"], 7);
        assert_eq!(v["fields"]["price"], 9.5);
        assert_eq!(v["fields"]["is_promoted"], true);
        assert_eq!(v["fields"]["session_id"], "007", "string fields stay strings");
        assert!(v.get("key").is_none());
        let j = pixel_event("event=page.viewed&fields=%7B%22url%22%3A%22u%22%7D", &c).unwrap();
        assert!(j.contains(r#""url":"u""#), "{j}");
        assert!(pixel_event("bogus=1", &c).unwrap_err().contains("bogus"));
        assert!(pixel_event("fields=nope", &c).is_err());
    }
}
