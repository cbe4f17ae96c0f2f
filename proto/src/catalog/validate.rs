//! Checking one event against the catalog, by every rule of DESIGN.md.

use serde_json::value::RawValue;

use super::{Catalog, EnumValue, EnvKind, Environment, EventDef, FieldDef, FieldType, Scalar};
use crate::event::{CowStr, Incoming};

/// The outcome of validating one event.
#[derive(Debug)]
pub struct Checked<'c> {
    /// The sender's environment, when it is known to the catalog.
    pub env: Option<(&'c str, &'c Environment)>,
    /// The event's definition, when it is known.
    pub def: Option<&'c EventDef>,
    /// The version the event is stored as (the latest allowed one when it gave none; 0
    /// when unknown).
    pub version: u32,
    /// Every problem found, each naming the field or key.
    pub errors: Vec<String>,
}

impl Checked<'_> {
    /// No problem was found.
    pub fn is_valid(&self) -> bool {
        self.errors.is_empty()
    }

    /// The event must be refused: its environment is unknown, or it is invalid and its
    /// environment is a backend.
    pub fn is_rejected(&self) -> bool {
        match self.env {
            None => true,
            Some((_, env)) => !self.errors.is_empty() && env.kind == EnvKind::Backend,
        }
    }

    /// The operator switched this event off (`drop = true`).
    pub fn is_dropped(&self) -> bool {
        self.def.is_some_and(|d| d.drop)
    }
}

impl Catalog {
    /// Validates `ev` as sent from `env` (the event's own `env`, or the one its listener
    /// binds).
    pub fn validate<'c>(&'c self, ev: &Incoming<'_>, env: Option<&str>) -> Checked<'c> {
        let mut errors: Vec<String> = ev.problems.clone();
        let env = match env {
            None => {
                errors.push("env: missing (say which environment sent the event, e.g. \"web\")".into());
                None
            }
            Some(name) => match self.environments.get_key_value(name) {
                Some((k, e)) => Some((k.as_str(), e)),
                None => {
                    errors.push(format!("env: unknown environment {name:?}"));
                    None
                }
            },
        };
        let mut checked = Checked {
            env,
            def: None,
            version: ev.version.unwrap_or(0),
            errors,
        };
        let Some(name) = ev.event.as_deref() else {
            if !checked.errors.iter().any(|e| e.starts_with("event:")) {
                checked.errors.push("event: missing".into());
            }
            return checked;
        };
        let Some(def) = self.events.get(name) else {
            let hint = crate::text::closest(name, self.events.keys().map(String::as_str))
                .map(|c| format!("; did you mean {c:?}?"))
                .unwrap_or_default();
            checked.errors.push(format!("event: unknown event {name:?}{hint}"));
            return checked;
        };
        checked.def = Some(def);
        let env_name = checked.env.map(|(n, _)| n);
        let version = match ev.version {
            Some(v) => v,
            None => self.default_version(def, env_name.unwrap_or("")).unwrap_or(0),
        };
        checked.version = version;
        let Some(vdef) = def.version(version) else {
            let latest = def.versions.last().map_or(0, |v| v.version);
            checked.errors.push(format!(
                "version: event {name:?} has no version {version} (latest is {latest})"
            ));
            return checked;
        };
        let Some((env_name, env_def)) = checked.env else {
            return checked;
        };
        if !vdef.environments.iter().any(|e| e == env_name) {
            checked.errors.push(format!(
                "env: environment {env_name:?} may not send {name} version {version} (allowed: {})",
                vdef.environments.join(", ")
            ));
        }
        let errors = &mut checked.errors;
        // One pass over the sent fields against the version's table: a slot's bits say
        // it was given (so again is "given twice") and given non-null (present).
        let slots = vdef.required.len() + vdef.optional.len();
        let mut given = Bits::new(slots);
        let mut present = Bits::new(slots);
        // The environment's own fields given (again is "given twice") and given non-null,
        // by their place in its list.
        let mut env_given = Bits::new(env_def.fields.len());
        let mut env_present = Bits::new(env_def.fields.len());
        let mut field_errors = Vec::new();
        let mut others = None;
        for (i, (key, value)) in ev.fields.iter().enumerate() {
            let key = key.as_ref();
            let def = match vdef.slot_near(key, i) {
                Some(slot) => {
                    if note(&mut given, &mut present, slot, value) {
                        field_errors.push(format!("{key}: given twice"));
                        continue;
                    }
                    vdef.slot_def(slot)
                }
                // Not the version's own: an environment's field (its own bits say
                // whether it came before), or unknown. A repeat of an unknown key is
                // found by a scan of the keys before it (the few fields a sender gets
                // wrong), or a set when it sent thousands.
                None => match env_def.fields.iter().position(|f| f == key) {
                    Some(e) => {
                        if note(&mut env_given, &mut env_present, e, value) {
                            field_errors.push(format!("{key}: given twice"));
                            continue;
                        }
                        env_def.field_def(e)
                    }
                    None => {
                        if repeated(&ev.fields, i, &mut others, vdef) {
                            field_errors.push(format!("{key}: given twice"));
                        } else {
                            field_errors.push(format!("{key}: unknown field for {name} version {version}"));
                        }
                        continue;
                    }
                },
            };
            if let Some(fdef) = def {
                if let Err(e) = check_value(fdef, value) {
                    field_errors.push(format!("{key}: {e}"));
                }
            }
        }
        for (slot, f) in vdef.required.iter().enumerate() {
            if !present.get(slot) {
                errors.push(format!("{f}: missing required field"));
            }
        }
        for (e, f) in env_def.fields.iter().enumerate() {
            let present = match vdef.slot(f) {
                Some(slot) => present.get(slot),
                None => env_present.get(e),
            };
            if !present {
                errors.push(format!("{f}: missing required field"));
            }
        }
        errors.append(&mut field_errors);
        checked
    }
}

/// Notes a sent field at its `place`: given, and present unless its value is `null`.
/// True when it was given before.
fn note(given: &mut Bits, present: &mut Bits, place: usize, value: &str) -> bool {
    if value != "null" {
        present.set(place);
    }
    given.set(place)
}

/// Whether the key at `i`, which is not one of the version's own, was sent before it:
/// a scan of the keys before it for the few a sender gets wrong, a set (`others`, built
/// on first need) when it sent thousands.
fn repeated<'k>(
    fields: &'k [(std::borrow::Cow<'_, str>, &str)],
    i: usize,
    others: &mut Option<std::collections::HashSet<&'k str>>,
    vdef: &super::VersionDef,
) -> bool {
    let key = fields[i].0.as_ref();
    if i <= 32 && others.is_none() {
        return fields[..i].iter().any(|(k, _)| k == key);
    }
    let seen = others.get_or_insert_with(|| {
        fields[..i]
            .iter()
            .map(|(k, _)| k.as_ref())
            .filter(|k| vdef.slot(k).is_none())
            .collect()
    });
    !seen.insert(key)
}

/// A set of slots: one word for the usual few fields, more for a big version.
struct Bits {
    small: u64,
    big: Vec<u64>,
}

impl Bits {
    fn new(slots: usize) -> Bits {
        Bits {
            small: 0,
            big: if slots > 64 {
                vec![0; slots.div_ceil(64)]
            } else {
                Vec::new()
            },
        }
    }

    /// Sets `slot`; returns whether it was set already.
    fn set(&mut self, slot: usize) -> bool {
        let (word, bit) = (slot / 64, 1u64 << (slot % 64));
        let w = if self.big.is_empty() {
            &mut self.small
        } else {
            &mut self.big[word]
        };
        let was = *w & bit != 0;
        *w |= bit;
        was
    }

    fn get(&self, slot: usize) -> bool {
        let (word, bit) = (slot / 64, 1u64 << (slot % 64));
        let w = if self.big.is_empty() {
            self.small
        } else {
            self.big[word]
        };
        w & bit != 0
    }
}

fn json_kind(text: &str) -> &'static str {
    match text.as_bytes().first() {
        Some(b'"') => "string",
        Some(b'{') => "object",
        Some(b'[') => "array",
        Some(b't' | b'f') => "bool",
        Some(b'n') => "null",
        _ if is_integer_literal(text) => "int",
        _ => "float",
    }
}

fn is_integer_literal(text: &str) -> bool {
    !text.is_empty() && !text.contains(['.', 'e', 'E']) && !text.starts_with('"')
}

/// Checks one raw JSON value (valid JSON) against a field definition. `null` is
/// accepted (it means absent; required fields are checked separately).
pub(crate) fn check_value(def: &FieldDef, text: &str) -> Result<(), String> {
    if text == "null" {
        return Ok(());
    }
    match def.ty {
        FieldType::Scalar(s) => check_scalar(s, def, text),
        FieldType::Array(s) => {
            if !text.starts_with('[') {
                return Err(format!("expected {}, got {}", def.ty, json_kind(text)));
            }
            let items: Vec<&RawValue> = serde_json::from_str(text).map_err(|e| format!("not a valid array: {e}"))?;
            if let Some(max) = def.max_length {
                if items.len() as u64 > max {
                    return Err(format!("has {} elements, at most {max} allowed", items.len()));
                }
            }
            for (i, item) in items.iter().enumerate() {
                let plain = FieldDef {
                    ty: FieldType::Scalar(s),
                    description: String::new(),
                    enum_values: def.enum_values.clone(),
                    max_length: None,
                };
                check_scalar(s, &plain, item.get()).map_err(|e| format!("element {i}: {e}"))?;
            }
            Ok(())
        }
    }
}

fn check_scalar(s: Scalar, def: &FieldDef, text: &str) -> Result<(), String> {
    let wrong = || format!("expected {s}, got {}", json_kind(text));
    match s {
        Scalar::String => {
            if !text.starts_with('"') {
                return Err(wrong());
            }
            if def.enum_values.is_some() || def.max_length.is_some() {
                // `text` is valid JSON: without a backslash its value is what the quotes hold.
                let v = match text.get(1..text.len() - 1) {
                    Some(inner) if !text.as_bytes().contains(&b'\\') => CowStr(inner.into()),
                    _ => serde_json::from_str(text).map_err(|e| e.to_string())?,
                };
                if let Some(max) = def.max_length {
                    let n = v.0.chars().count() as u64;
                    if n > max {
                        return Err(format!("is {n} characters long, at most {max} allowed"));
                    }
                }
                if let Some(values) = &def.enum_values {
                    if !values.iter().any(|e| matches!(e, EnumValue::Str(x) if *x == v.0)) {
                        return Err(format!("{:?} is not one of {}", v.0, list(values)));
                    }
                }
            }
            Ok(())
        }
        Scalar::Int => {
            if !is_integer_literal(text) || text.starts_with(['[', '{', 't', 'f', 'n']) {
                return Err(wrong());
            }
            let v: i64 = text.parse().map_err(|_| "out of range for a 64-bit int".to_string())?;
            if let Some(values) = &def.enum_values {
                if !values.iter().any(|e| matches!(e, EnumValue::Int(x) if *x == v)) {
                    return Err(format!("{v} is not one of {}", list(values)));
                }
            }
            Ok(())
        }
        Scalar::Float => {
            if text.starts_with(['"', '[', '{', 't', 'f', 'n']) {
                return Err(wrong());
            }
            match text.parse::<f64>() {
                Ok(v) if v.is_finite() => Ok(()),
                _ => Err("out of range for a 64-bit float".into()),
            }
        }
        Scalar::Bool => match text {
            "true" | "false" => Ok(()),
            _ => Err(wrong()),
        },
        Scalar::Timestamp => {
            if !(text.starts_with('"') || is_integer_literal(text)) || text.starts_with(['[', '{', 't', 'f']) {
                return Err(wrong());
            }
            crate::event::parse_timestamp(text).map(|_| ())
        }
    }
}

fn list(values: &[EnumValue]) -> String {
    values.iter().map(|v| v.to_string()).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use crate::catalog::Catalog;
    use crate::event::Incoming;
    use serde_json::value::RawValue;

    fn check(json: &str) -> (bool, bool, u32, Vec<String>) {
        let c = Catalog::demo();
        let raw = RawValue::from_string(json.to_string()).unwrap();
        let ev = Incoming::parse(&raw).unwrap();
        let r = c.validate(&ev, ev.env.as_deref());
        (r.is_valid(), r.is_rejected(), r.version, r.errors)
    }

    #[test]
    fn repeated_and_unknown_keys_are_named_among_many_fields() {
        // More keys than the scan handles: the set finds the repeat, and every stranger.
        let mut fields: Vec<String> = (0..40).map(|i| format!(r#""x{i}":1"#)).collect();
        fields.push(r#""item_id":1,"source":"feed","session_id":"s","x7":2"#.into());
        let (ok, _, _, e) = check(&format!(
            r#"{{"event":"item.viewed","env":"web","fields":{{{}}}}}"#,
            fields.join(",")
        ));
        assert!(!ok);
        assert!(e.contains(&"x7: given twice".to_string()), "{e:?}");
        assert_eq!(e.iter().filter(|m| m.contains("unknown field")).count(), 40, "{e:?}");
    }

    #[test]
    fn an_environment_field_counts_as_given_when_any_of_its_copies_is_not_null() {
        let (ok, _, _, e) = check(
            r#"{"event":"item.viewed","env":"web","fields":{"item_id":1,"source":"feed","session_id":null,"session_id":"s"}}"#,
        );
        assert!(!ok);
        assert_eq!(e, vec!["session_id: given twice".to_string()], "not missing as well");
        let (_, _, _, e) =
            check(r#"{"event":"item.viewed","env":"web","fields":{"source":"feed","item_id":1,"session_id":null}}"#);
        assert_eq!(
            e,
            vec!["session_id: missing required field".to_string()],
            "fields out of order"
        );
    }

    #[test]
    fn a_version_with_many_fields_checks_each_by_its_table() {
        // 100 fields: the table is hashed and the slots need more than one word.
        let mut text = String::from("[environments.web]\nkind = \"frontend\"\n");
        for f in 0..100 {
            text.push_str(&format!("[fields.f{f}]\ntype = \"int\"\n"));
        }
        let optional: Vec<String> = (1..100).map(|f| format!("\"f{f}\"")).collect();
        text.push_str(&format!(
            "[events.\"a.b\"]\nowner = \"t\"\n[[events.\"a.b\".versions]]\nversion = 1\nenvironments = [\"web\"]\nrequired = [\"f0\"]\noptional = [{}]\n",
            optional.join(", ")
        ));
        let c = Catalog::from_files(vec![("c.toml".into(), text)]).unwrap();
        let run = |fields: &str| {
            let raw = RawValue::from_string(format!(r#"{{"event":"a.b","env":"web","fields":{{{fields}}}}}"#)).unwrap();
            let ev = Incoming::parse(&raw).unwrap();
            c.validate(&ev, Some("web")).errors
        };
        assert!(run(r#""f0":1,"f99":2,"f70":3"#).is_empty());
        assert_eq!(
            run(r#""f99":"x","f70":1,"f70":null,"nope":1"#),
            vec![
                "f0: missing required field",
                "f99: expected int, got string",
                "f70: given twice",
                "nope: unknown field for a.b version 1",
            ]
        );
        // A required field given twice counts as present, even when the repeat is null.
        assert_eq!(run(r#""f0":1,"f0":null"#), vec!["f0: given twice"]);
    }

    #[test]
    fn valid_events_pass() {
        let (ok, _, v, e) = check(
            r#"{"event":"item.viewed","env":"web","fields":{"item_id":1,"source":"feed","session_id":"s","price":3}}"#,
        );
        assert!(ok, "{e:?}");
        assert_eq!(v, 2, "latest version when none given");
        let (ok, _, v, e) = check(
            r#"{"event":"item.viewed","version":1,"env":"ios","fields":{"item_id":1,"device_id":"d","app_version":"1.0"}}"#,
        );
        assert!(ok, "{e:?}");
        assert_eq!(v, 1);
        let (ok, _, _, e) = check(
            r#"{"event":"user.registered","env":"backend","fields":{"user_id":"u","method":"email","registered_at":"2026-11-22T10:00:00Z"}}"#,
        );
        assert!(ok, "{e:?}");
        let (ok, _, _, e) = check(
            r#"{"event":"search.performed","env":"backend","fields":{"query":"bike","filters":["a","b"],"results_count":0}}"#,
        );
        assert!(ok, "{e:?}");
    }

    /// Every rule of DESIGN.md, each with the error it must give.
    #[test]
    fn each_rule_names_the_field() {
        let cases = [
            (
                r#"{"event":"item.viewed","env":"mars","fields":{}}"#,
                "env: unknown environment \"mars\"",
                true,
            ),
            (r#"{"event":"item.viewed","fields":{}}"#, "env: missing", true),
            (
                r#"{"event":"nope.seen","env":"web","fields":{}}"#,
                "event: unknown event \"nope.seen\"",
                false,
            ),
            (
                r#"{"event":"item.veiwed","env":"web","fields":{}}"#,
                "event: unknown event \"item.veiwed\"; did you mean \"item.viewed\"?",
                false,
            ),
            (
                r#"{"event":"item.viewed","version":9,"env":"web","fields":{}}"#,
                "version: event \"item.viewed\" has no version 9 (latest is 2)",
                false,
            ),
            (
                r#"{"event":"user.registered","env":"web","fields":{"user_id":"u","method":"email","session_id":"s"}}"#,
                "env: environment \"web\" may not send user.registered version 1",
                false,
            ),
            (
                r#"{"event":"item.viewed","env":"web","fields":{"source":"feed","session_id":"s"}}"#,
                "item_id: missing required field",
                false,
            ),
            (
                r#"{"event":"item.viewed","env":"web","fields":{"item_id":1,"source":"feed"}}"#,
                "session_id: missing required field",
                false,
            ),
            (
                r#"{"event":"item.viewed","env":"web","fields":{"item_id":1,"source":"feed","session_id":"s","colour":"red"}}"#,
                "colour: unknown field for item.viewed version 2",
                false,
            ),
            (
                r#"{"event":"item.viewed","env":"web","fields":{"item_id":"1","source":"feed","session_id":"s"}}"#,
                "item_id: expected int, got string",
                false,
            ),
            (
                r#"{"event":"item.viewed","env":"web","fields":{"item_id":1.5,"source":"feed","session_id":"s"}}"#,
                "item_id: expected int, got float",
                false,
            ),
            (
                r#"{"event":"item.viewed","env":"web","fields":{"item_id":1,"source":"tv","session_id":"s"}}"#,
                "source: \"tv\" is not one of \"search\", \"feed\", \"recommendations\", \"direct\"",
                false,
            ),
            (
                r#"{"event":"item.viewed","env":"web","fields":{"item_id":1,"source":"feed","session_id":"s","is_promoted":1}}"#,
                "is_promoted: expected bool, got int",
                false,
            ),
            (
                r#"{"event":"item.viewed","env":"web","fields":{"item_id":1,"source":"feed","session_id":"s","price":"9"}}"#,
                "price: expected float, got string",
                false,
            ),
            (
                r#"{"event":"search.performed","env":"backend","fields":{"query":"q","filters":"a"}}"#,
                "filters: expected array<string>, got string",
                true,
            ),
            (
                r#"{"event":"search.performed","env":"backend","fields":{"query":"q","filters":["a",1]}}"#,
                "filters: element 1: expected string, got int",
                true,
            ),
            (
                r#"{"event":"user.registered","env":"backend","fields":{"user_id":"u","method":"email","registered_at":"monday"}}"#,
                "registered_at: \"monday\" is not RFC 3339",
                true,
            ),
            (
                r#"{"event":"item.viewed","env":"web","fields":{"item_id":99999999999999999999,"source":"feed","session_id":"s"}}"#,
                "item_id: out of range",
                false,
            ),
        ];
        for (json, want, rejected) in cases {
            let (ok, rej, _, errors) = check(json);
            assert!(!ok, "{json} should be invalid");
            assert!(
                errors.iter().any(|e| e.starts_with(want)),
                "{json}: want {want:?}, got {errors:?}"
            );
            assert_eq!(rej, rejected, "{json}: rejected? {errors:?}");
        }
        let long = "x".repeat(257);
        let (_, rej, _, errors) = check(&format!(
            r#"{{"event":"search.performed","env":"backend","fields":{{"query":"{long}"}}}}"#
        ));
        assert!(rej);
        assert_eq!(errors, vec!["query: is 257 characters long, at most 256 allowed"]);
    }

    #[test]
    fn ints_are_accepted_as_floats_and_nulls_as_absent() {
        let (ok, _, _, e) = check(
            r#"{"event":"item.viewed","env":"web","fields":{"item_id":1,"source":"feed","session_id":"s","price":10,"position":null}}"#,
        );
        assert!(ok, "{e:?}");
        let (ok, _, _, e) =
            check(r#"{"event":"item.viewed","env":"web","fields":{"item_id":null,"source":"feed","session_id":"s"}}"#);
        assert!(!ok);
        assert_eq!(e, vec!["item_id: missing required field"]);
    }
}
