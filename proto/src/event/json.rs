//! Events as stored and routed in JSON (DESIGN.md "Event, as stored and routed").

use super::incoming::is_json;
use super::time::write_micros;
use super::wire::EventView;

/// Appends `n` in decimal.
fn write_u32(out: &mut Vec<u8>, mut n: u32) {
    let mut buf = [0u8; 10];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&buf[i..]);
}

impl EventView<'_> {
    /// Appends the event's stored JSON form (DESIGN.md "Event, as stored and routed"):
    /// `id, event, version, env, received_at, client_ts, collector, fields, valid, errors`,
    /// plus `context` when present and `raw` for an event kept invalid whose body was not
    /// an object. Times are RFC 3339 with microseconds, UTC.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        fn string(out: &mut Vec<u8>, s: &str) {
            // Writing into a Vec cannot fail.
            let _ = serde_json::to_writer(&mut *out, s);
        }
        out.extend_from_slice(b"{\"id\":");
        string(out, self.id);
        out.extend_from_slice(b",\"event\":");
        string(out, self.event);
        out.extend_from_slice(b",\"version\":");
        write_u32(out, self.version);
        out.extend_from_slice(b",\"env\":");
        string(out, self.env);
        out.extend_from_slice(b",\"received_at\":\"");
        write_micros(out, self.received_at);
        out.extend_from_slice(b"\",\"client_ts\":");
        match self.client_ts {
            Some(ts) => {
                out.push(b'"');
                write_micros(out, ts);
                out.push(b'"');
            }
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(b",\"collector\":");
        string(out, self.collector);
        out.extend_from_slice(b",\"fields\":");
        // `fields` is the object exactly as the sender wrote it (validated JSON); an
        // event kept invalid may carry something else, which is then sent as a string.
        match std::str::from_utf8(self.fields) {
            Ok(text) if !text.is_empty() && is_json(text) => out.extend_from_slice(self.fields),
            Ok(text) if !text.is_empty() => string(out, text),
            _ => out.extend_from_slice(b"{}"),
        }
        out.extend_from_slice(if self.valid {
            b",\"valid\":true"
        } else {
            b",\"valid\":false"
        });
        out.extend_from_slice(b",\"errors\":[");
        for (i, e) in self.errors.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            string(out, e);
        }
        out.push(b']');
        if !self.context.is_empty() {
            out.extend_from_slice(b",\"context\":{");
            for (i, (k, v)) in self.context.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                string(out, k);
                out.push(b':');
                string(out, v);
            }
            out.push(b'}');
        }
        if !self.raw.is_empty() {
            out.extend_from_slice(b",\"raw\":");
            string(out, &String::from_utf8_lossy(self.raw));
        }
        out.push(b'}');
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::format_micros;
    use crate::event::wire::tests::sample;
    use prost::Message;
    #[test]
    fn stored_json_form_round_trips_through_serde() {
        let ev = sample();
        let bytes = ev.encode_to_vec();
        let view = EventView::decode(&bytes).unwrap();
        let mut out = Vec::new();
        view.write_json(&mut out);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["id"], ev.id.as_str());
        assert_eq!(v["event"], ev.event.as_str());
        assert_eq!(v["version"], ev.version);
        assert_eq!(v["received_at"], format_micros(ev.received_at));
        assert_eq!(v["valid"], ev.valid);
        let fields: serde_json::Value = serde_json::from_slice(&ev.fields).unwrap();
        assert_eq!(v["fields"], fields);
        assert_eq!(v["errors"].as_array().unwrap().len(), ev.errors.len());
        let weird = EventView {
            id: "q\"uote",
            fields: b"not json",
            ..Default::default()
        };
        out.clear();
        weird.write_json(&mut out);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["id"], "q\"uote");
        assert_eq!(v["fields"], "not json");
        assert_eq!(v["client_ts"], serde_json::Value::Null);
        for n in [0, 7, 10, 4_294_967_295] {
            let mut out = Vec::new();
            write_u32(&mut out, n);
            assert_eq!(out, n.to_string().as_bytes());
        }
    }
}
