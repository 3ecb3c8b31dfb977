//! The documented event schema, generated from the event types: [`json_schema`] is the JSON
//! Schema `schemars` derives from [`Event`] (field docs are the types' `///` comments), and
//! [`schema`] reads it into [`EventSchema`] / [`Field`] / [`FieldType`], which the README section
//! and [`validate`](super::validate) use.

use super::Event;
use schemars::generate::SchemaSettings;
use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};
use serde_json::{Map, Value};
use std::sync::OnceLock;

/// JSON type of a documented field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FieldType {
    /// Integer in 0..=u32::MAX (`"format": "uint32"`).
    U32,
    /// Integer in 0..=u64::MAX (`"format": "uint64"`).
    U64,
    /// Integer in i32::MIN..=i32::MAX (`"format": "int32"`).
    I32,
    /// `true` or `false`.
    Bool,
    /// Any string.
    Str,
    /// Socket address string: `ip:port` or `[v6]:port` (`"format": "socket-address"`).
    Addr,
    /// RFC 3339 UTC timestamp with millisecond precision (`2026-11-23T11:02:03.123Z`;
    /// `"format": "date-time"`).
    Timestamp,
    /// One of the listed strings.
    Enum(Vec<String>),
    /// Object with exactly these fields.
    Object(Vec<Field>),
    /// Array whose elements all have this type.
    Array(Box<FieldType>),
    /// The inner type or `null`.
    Nullable(Box<FieldType>),
}

impl FieldType {
    /// Short human-readable type, as shown in the README tables.
    pub fn describe(&self) -> String {
        match self {
            FieldType::U32 => "u32".into(),
            FieldType::U64 => "u64".into(),
            FieldType::I32 => "i32".into(),
            FieldType::Bool => "bool".into(),
            FieldType::Str => "string".into(),
            FieldType::Addr => "string `ip:port` / `[v6]:port`".into(),
            FieldType::Timestamp => "string, RFC 3339 UTC ms".into(),
            FieldType::Enum(values) => values
                .iter()
                .map(|v| format!("`\"{v}\"`"))
                .collect::<Vec<_>>()
                .join(" \\| "),
            FieldType::Object(_) => "object".into(),
            FieldType::Array(inner) => match &**inner {
                FieldType::Object(_) => "array of objects".into(),
                other => format!("array of {}", other.describe()),
            },
            FieldType::Nullable(inner) => format!("{} or null", inner.describe()),
        }
    }
}

/// One documented field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Field {
    /// JSON key.
    pub name: String,
    /// JSON type.
    pub ty: FieldType,
    /// Meaning, one line (the field's `///` comment).
    pub doc: String,
}

/// Documentation of one event type.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventSchema {
    /// The `"event"` value.
    pub event: String,
    /// When the agent emits it (the variant's `///` comment).
    pub doc: String,
    /// Whether the [`socket_fields`] are part of this event (before `fields`).
    pub socket: bool,
    /// Fields specific to this event type.
    pub fields: Vec<Field>,
}

impl EventSchema {
    /// Every required field of this event type besides the header: the socket fields (for
    /// socket events) followed by the type's own fields.
    pub fn all_fields(&self) -> impl Iterator<Item = &Field> {
        let socket = if self.socket { socket_fields() } else { &[] };
        socket.iter().chain(self.fields.iter())
    }
}

/// The common header of every line, for the schema only: [`Event::to_json_line`] writes
/// `schema` and `ts`, and `event` is [`Event`]'s serde tag.
#[derive(JsonSchema)]
#[allow(dead_code)] // never built: it documents what `Line` and the tag produce
struct Header {
    /// Format version, always 1 for this document
    schema: u32,
    /// Event type (see below)
    event: String,
    /// When the agent wrote the event, e.g. `2026-11-23T11:02:03.123Z`
    #[schemars(extend("format" = "date-time"))]
    ts: String,
}

/// `schema_with` of `hooks[].hook`: one of the hook names the agent knows.
pub(super) fn hook_name(_: &mut SchemaGenerator) -> Schema {
    json_schema!({ "type": "string", "enum": crate::attach::HOOK_NAMES })
}

fn generator() -> SchemaGenerator {
    // Serialize contract: `Option` fields are required (written as `null`), as the agent writes
    // them. Inlined: no `$ref`s to follow.
    SchemaSettings::draft2020_12()
        .for_serialize()
        .with(|s| s.inline_subschemas = true)
        .into_generator()
}

/// The JSON Schema of the event body (a `oneOf` over the event types, each tagged by `event`),
/// generated from [`Event`].
pub fn json_schema() -> Schema {
    generator().into_root_schema_for::<Event>()
}

/// The documented schema, read once from the generated JSON Schemas.
struct Documented {
    header: Vec<Field>,
    socket: Vec<Field>,
    events: Vec<EventSchema>,
}

fn documented() -> &'static Documented {
    static DOC: OnceLock<Documented> = OnceLock::new();
    DOC.get_or_init(|| {
        let header = fields(generator().into_root_schema_for::<Header>().as_value());
        let socket = fields(
            generator()
                .into_root_schema_for::<super::SocketFields>()
                .as_value(),
        );
        let root = json_schema();
        let variants = root
            .get("oneOf")
            .and_then(Value::as_array)
            .expect("Event's schema is a oneOf over its variants");
        let events = variants.iter().map(|v| event(v, &socket)).collect();
        Documented {
            header,
            socket,
            events,
        }
    })
}

/// One variant of the `oneOf`: its tag, doc and fields (less the socket fields it starts with).
fn event(variant: &Value, socket: &[Field]) -> EventSchema {
    let mut fields = fields(variant);
    let tag = fields.remove(0);
    let event = match (&*tag.name, &tag.ty) {
        ("event", FieldType::Enum(names)) if names.len() == 1 => names[0].clone(),
        _ => panic!("event variant without an `event` tag first: {variant}"),
    };
    let is_socket = fields.len() >= socket.len() && fields[..socket.len()] == *socket;
    if is_socket {
        fields.drain(..socket.len());
    }
    EventSchema {
        event,
        doc: doc(variant),
        socket: is_socket,
        fields,
    }
}

/// The `description`, with the doc comment's line breaks joined into one line.
fn doc(schema: &Value) -> String {
    let text = schema
        .get("description")
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("undocumented schema (add a `///` comment): {schema}"));
    text.lines().map(str::trim).collect::<Vec<_>>().join(" ")
}

/// An object schema's fields, in declaration order (the order of `required`: every field is
/// always present).
fn fields(schema: &Value) -> Vec<Field> {
    let props = schema
        .get("properties")
        .and_then(Value::as_object)
        .unwrap_or_else(|| panic!("object schema without properties: {schema}"));
    let required: Vec<&str> = schema
        .get("required")
        .and_then(Value::as_array)
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    assert_eq!(
        required.len(),
        props.len(),
        "every field is always present: {schema}"
    );
    required
        .iter()
        .map(|name| {
            let prop = props
                .get(*name)
                .unwrap_or_else(|| panic!("required `{name}` without a property: {schema}"));
            Field {
                name: (*name).to_string(),
                ty: field_type(prop),
                doc: if *name == "event" && prop.get("const").is_some() {
                    String::new() // the variant tag, documented by the variant
                } else {
                    doc(prop)
                },
            }
        })
        .collect()
}

/// The [`FieldType`] a (generated) property schema describes.
fn field_type(schema: &Value) -> FieldType {
    let obj = schema
        .as_object()
        .unwrap_or_else(|| panic!("unexpected schema {schema}"));
    if let Some(inner) = nullable_inner(obj) {
        return FieldType::Nullable(Box::new(field_type(&inner)));
    }
    if let Some(values) = string_values(obj) {
        return FieldType::Enum(values);
    }
    let format = obj.get("format").and_then(Value::as_str);
    match (obj.get("type").and_then(Value::as_str), format) {
        (Some("integer"), Some("uint32")) => FieldType::U32,
        (Some("integer"), Some("uint64")) => FieldType::U64,
        (Some("integer"), Some("int32")) => FieldType::I32,
        (Some("boolean"), None) => FieldType::Bool,
        (Some("string"), None) => FieldType::Str,
        (Some("string"), Some("socket-address")) => FieldType::Addr,
        (Some("string"), Some("date-time")) => FieldType::Timestamp,
        (Some("object"), None) => FieldType::Object(fields(schema)),
        (Some("array"), None) => FieldType::Array(Box::new(field_type(
            obj.get("items")
                .unwrap_or_else(|| panic!("array without items: {schema}")),
        ))),
        _ => panic!("no documented type for schema {schema}"),
    }
}

/// `{"type": [T, "null"], ...}` or `{"anyOf": [S, {"type": "null"}]}`: the schema of T or S.
fn nullable_inner(obj: &Map<String, Value>) -> Option<Value> {
    if let Some(Value::Array(types)) = obj.get("type") {
        let null = Value::from("null");
        let rest: Vec<&Value> = types.iter().filter(|t| **t != null).collect();
        if rest.len() + 1 == types.len() && rest.len() == 1 {
            let mut inner = obj.clone();
            inner.insert("type".into(), rest[0].clone());
            return Some(Value::Object(inner));
        }
        panic!("unsupported type list {types:?}");
    }
    match obj
        .get("anyOf")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
    {
        Some([inner, null]) if null.get("type") == Some(&Value::from("null")) => {
            Some(inner.clone())
        }
        _ => None,
    }
}

/// The strings of an `enum`, a `const`, or a `oneOf` of (documented) constants.
fn string_values(obj: &Map<String, Value>) -> Option<Vec<String>> {
    let strings = |values: &Vec<Value>| -> Vec<String> {
        values
            .iter()
            .map(|v| v.as_str().expect("string enum").to_string())
            .collect()
    };
    if let Some(Value::Array(values)) = obj.get("enum") {
        return Some(strings(values));
    }
    if let Some(Value::String(value)) = obj.get("const") {
        return Some(vec![value.clone()]);
    }
    let one_of = obj.get("oneOf").and_then(Value::as_array)?;
    let mut values = Vec::new();
    for variant in one_of {
        match (variant.get("const"), variant.get("enum")) {
            (Some(Value::String(v)), _) => values.push(v.clone()),
            (_, Some(Value::Array(vs))) => values.extend(strings(vs)),
            _ => return None,
        }
    }
    Some(values)
}

/// The documented schema: for each event type, its required fields and JSON types.
pub fn schema() -> &'static [EventSchema] {
    &documented().events
}

/// Documentation of event type `event`, if it exists.
pub fn event_schema(event: &str) -> Option<&'static EventSchema> {
    schema().iter().find(|s| s.event == event)
}

/// Fields on every line.
pub fn header_fields() -> &'static [Field] {
    &documented().header
}

/// The socket object shared by all socket events, at the top level of the line.
pub fn socket_fields() -> &'static [Field] {
    &documented().socket
}
