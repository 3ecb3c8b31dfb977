//! The policy file as a tree of TOML values, each with the byte span it was written at, so
//! that every unknown key and bad value can be reported with its position, not just the
//! first. Parsed by `toml_edit`, whose document keeps the spans of keys, values and table
//! headers.

use std::ops::Range;
use toml_edit::{ImDocument, Item, Table, TomlError, Value};

/// Byte offsets into the policy text.
pub(super) type Span = Range<usize>;

/// A value with the byte span it was written at (inherited from what contains it where the
/// parser recorded none: the root, implicit tables).
#[derive(Debug)]
pub(super) struct Node {
    pub(super) span: Span,
    pub(super) kind: Kind,
}

#[derive(Debug)]
pub(super) enum Kind {
    Str(String),
    Int(i64),
    Float(f64),
    Bool(bool),
    Datetime,
    Array(Vec<Node>),
    Table(Vec<(Key, Node)>),
}

/// A table key with its span (the value's, or the table's, where the key has none).
#[derive(Debug)]
pub(super) struct Key {
    pub(super) span: Span,
    pub(super) name: String,
}

impl Kind {
    pub(super) fn type_name(&self) -> &'static str {
        match self {
            Kind::Str(_) => "a string",
            Kind::Int(_) => "an integer",
            Kind::Float(_) => "a float",
            Kind::Bool(_) => "a boolean",
            Kind::Datetime => "a date/time",
            Kind::Array(_) => "an array",
            Kind::Table(_) => "a table",
        }
    }
}

/// Parse policy text into its tree; a syntax error is the parser's, with its span.
pub(super) fn parse(src: &str) -> Result<Node, TomlError> {
    let doc = ImDocument::parse(src)?;
    Ok(item_node(doc.as_item(), &(0..0)))
}

fn item_node(item: &Item, parent: &Span) -> Node {
    let span = item.span().unwrap_or_else(|| parent.clone());
    let kind = match item {
        Item::Value(v) => return value_node(v, parent),
        Item::Table(t) => table(t, &span),
        Item::ArrayOfTables(a) => Kind::Array(
            a.iter()
                .map(|t| {
                    let span = t.span().unwrap_or_else(|| span.clone());
                    Node {
                        kind: table(t, &span),
                        span,
                    }
                })
                .collect(),
        ),
        // The parser leaves no empty items in a document.
        Item::None => Kind::Table(Vec::new()),
    };
    Node { span, kind }
}

fn value_node(value: &Value, parent: &Span) -> Node {
    let span = value.span().unwrap_or_else(|| parent.clone());
    let kind = match value {
        Value::String(s) => Kind::Str(s.value().clone()),
        Value::Integer(n) => Kind::Int(*n.value()),
        Value::Float(x) => Kind::Float(*x.value()),
        Value::Boolean(b) => Kind::Bool(*b.value()),
        Value::Datetime(_) => Kind::Datetime,
        Value::Array(items) => Kind::Array(items.iter().map(|v| value_node(v, &span)).collect()),
        Value::InlineTable(t) => Kind::Table(
            t.iter()
                .map(|(name, v)| {
                    let key = key(name, t.key(name), v.span(), &span);
                    let node = value_node(v, &key.span);
                    (key, node)
                })
                .collect(),
        ),
    };
    Node { span, kind }
}

/// A table's entries in file order.
fn table(t: &Table, span: &Span) -> Kind {
    Kind::Table(
        t.iter()
            .map(|(name, item)| {
                let key = key(name, t.key(name), item.span(), span);
                let node = item_node(item, &key.span);
                (key, node)
            })
            .collect(),
    )
}

/// A key without a span takes its value's, else its table's; a value without a span then
/// takes its key's.
fn key(name: &str, key: Option<&toml_edit::Key>, value_span: Option<Span>, table: &Span) -> Key {
    Key {
        span: key
            .and_then(|k| k.span())
            .or(value_span)
            .unwrap_or_else(|| table.clone()),
        name: name.to_string(),
    }
}
