//! Checks one output line against the schema generated from the event types ([`validate_line`],
//! [`validate`]).

use super::schema::{event_schema, header_fields, Field, FieldType};
use super::SCHEMA_VERSION;
use std::net::SocketAddr;

/// Parse one output line and [`validate`] it.
pub fn validate_line(line: &str) -> Result<(), String> {
    let v: serde_json::Value =
        serde_json::from_str(line).map_err(|e| format!("not valid JSON: {e}"))?;
    validate(&v)
}

/// Check one parsed line against the documented schema: `schema` is [`SCHEMA_VERSION`], the
/// event type is known, `ts` is RFC 3339 UTC with milliseconds, every documented field is
/// present with the documented type (recursively), and no undocumented field appears.
pub fn validate(v: &serde_json::Value) -> Result<(), String> {
    let obj = v
        .as_object()
        .ok_or_else(|| format!("line is {}, expected an object", json_kind(v)))?;
    match obj.get("schema") {
        Some(s) if s.as_u64() == Some(u64::from(SCHEMA_VERSION)) => {}
        Some(s) => return Err(format!("schema is {s}, expected {SCHEMA_VERSION}")),
        None => return Err("missing field `schema`".into()),
    }
    let event = match obj.get("event") {
        Some(serde_json::Value::String(e)) => e.as_str(),
        Some(other) => return Err(format!("event is {}, expected a string", json_kind(other))),
        None => return Err("missing field `event`".into()),
    };
    let es = event_schema(event).ok_or_else(|| format!("unknown event type {event:?}"))?;
    let ts = obj.get("ts").ok_or("missing field `ts`")?;
    check(ts, &FieldType::Timestamp).map_err(|e| format!("{event}: ts: {e}"))?;

    let fields: Vec<&Field> = header_fields().iter().chain(es.all_fields()).collect();
    check_object(obj, &fields).map_err(|e| format!("{event}: {e}"))
}

fn check_object(
    obj: &serde_json::Map<String, serde_json::Value>,
    fields: &[&Field],
) -> Result<(), String> {
    for field in fields {
        let value = obj
            .get(&field.name)
            .ok_or_else(|| format!("missing field `{}`", field.name))?;
        check(value, &field.ty).map_err(|e| format!("{}: {e}", field.name))?;
    }
    if let Some(extra) = obj.keys().find(|k| !fields.iter().any(|f| f.name == **k)) {
        return Err(format!("undocumented field `{extra}`"));
    }
    Ok(())
}

fn check(v: &serde_json::Value, ty: &FieldType) -> Result<(), String> {
    use serde_json::Value;
    let mismatch = || format!("expected {}, found {}", ty.describe(), json_kind(v));
    match ty {
        FieldType::U32 => match v.as_u64() {
            Some(n) if n <= u64::from(u32::MAX) => Ok(()),
            Some(n) => Err(format!("{n} does not fit in u32")),
            None => Err(mismatch()),
        },
        FieldType::U64 => v.as_u64().map(|_| ()).ok_or_else(mismatch),
        FieldType::I32 => match v.as_i64() {
            Some(n) if i32::try_from(n).is_ok() => Ok(()),
            Some(n) => Err(format!("{n} does not fit in i32")),
            None => Err(mismatch()),
        },
        FieldType::Bool => v.as_bool().map(|_| ()).ok_or_else(mismatch),
        FieldType::Str => v.as_str().map(|_| ()).ok_or_else(mismatch),
        FieldType::Addr => {
            let s = v.as_str().ok_or_else(mismatch)?;
            s.parse::<SocketAddr>()
                .map(|_| ())
                .map_err(|_| format!("{s:?} is not an `ip:port` / `[v6]:port` address"))
        }
        FieldType::Timestamp => {
            let s = v.as_str().ok_or_else(mismatch)?;
            check_timestamp(s)
        }
        FieldType::Enum(values) => {
            let s = v.as_str().ok_or_else(mismatch)?;
            if values.iter().any(|v| v == s) {
                Ok(())
            } else {
                Err(format!("{s:?} is not one of {}", ty.describe()))
            }
        }
        FieldType::Object(fields) => {
            let obj = v.as_object().ok_or_else(mismatch)?;
            let fields: Vec<&Field> = fields.iter().collect();
            check_object(obj, &fields)
        }
        FieldType::Array(inner) => {
            let items = v.as_array().ok_or_else(mismatch)?;
            for (i, item) in items.iter().enumerate() {
                check(item, inner).map_err(|e| format!("[{i}]: {e}"))?;
            }
            Ok(())
        }
        FieldType::Nullable(inner) => match v {
            Value::Null => Ok(()),
            other => check(other, inner).map_err(|e| format!("{e} (null also allowed)")),
        },
    }
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ`, and a real instant.
fn check_timestamp(s: &str) -> Result<(), String> {
    let b = s.as_bytes();
    let shape_ok = b.len() == 24
        && b.iter().enumerate().all(|(i, c)| match i {
            4 | 7 => *c == b'-',
            10 => *c == b'T',
            13 | 16 => *c == b':',
            19 => *c == b'.',
            23 => *c == b'Z',
            _ => c.is_ascii_digit(),
        });
    if !shape_ok {
        return Err(format!(
            "{s:?} is not RFC 3339 UTC with milliseconds (YYYY-MM-DDTHH:MM:SS.mmmZ)"
        ));
    }
    humantime::parse_rfc3339(s)
        .map(|_| ())
        .map_err(|e| format!("{s:?} is not a valid timestamp: {e}"))
}

fn json_kind(v: &serde_json::Value) -> &'static str {
    use serde_json::Value;
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a bool",
        Value::Number(n) if n.is_u64() => "an unsigned integer",
        Value::Number(n) if n.is_i64() => "a negative integer",
        Value::Number(_) => "a non-integer number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}
