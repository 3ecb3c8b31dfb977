//! The README's "Event format" section, rendered from the schema generated from the event types
//! ([`schema_markdown`]).

use super::schema::{header_fields, schema, socket_fields, Field, FieldType};
use super::SCHEMA_VERSION;
use std::fmt::Write as _;

fn table_rows(out: &mut String, prefix: &str, fields: &[Field]) {
    for field in fields {
        let name = format!("{prefix}{}", field.name);
        let _ = writeln!(
            out,
            "| `{name}` | {} | {} |",
            field.ty.describe(),
            field.doc
        );
        let nested = match &field.ty {
            FieldType::Object(inner) => Some((format!("{name}."), inner)),
            FieldType::Array(item) => match &**item {
                FieldType::Object(inner) => Some((format!("{name}[]."), inner)),
                _ => None,
            },
            _ => None,
        };
        if let Some((prefix, inner)) = nested {
            table_rows(out, &prefix, inner);
        }
    }
}

fn table(out: &mut String, fields: &[Field]) {
    out.push_str("| field | type | meaning |\n|---|---|---|\n");
    table_rows(out, "", fields);
    out.push('\n');
}

/// Markdown description of the event format (header, socket object, one section per event
/// type), for the README. Generated from [`schema()`], so it is what
/// [`validate`](super::validate) enforces.
pub fn schema_markdown() -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "## Event format (schema {SCHEMA_VERSION})\n\n\
         `tcpstall run` writes NDJSON: one JSON object per line, on stdout or appended to \
         `--output FILE`. All fields listed are always present (nullable ones as `null`); \
         no other fields appear. Integers are unsigned unless typed `i32`.\n\n\
         ### Common header (every line)\n"
    );
    table(&mut out, header_fields());
    out.push_str(
        "### Socket object\n\nSocket events (`stall_started`, `stall_cleared`, `stall_closed`, \
         `socket_reset`, `reset_failed`, `reset_skipped`) carry these fields at the top level \
         of the line:\n\n",
    );
    table(&mut out, socket_fields());
    for es in schema() {
        let _ = writeln!(out, "### `{}`\n\n{}\n", es.event, es.doc);
        match (es.socket, es.fields.is_empty()) {
            (true, true) => out.push_str("Fields: the socket object only.\n\n"),
            (true, false) => {
                out.push_str("Fields: the socket object, plus:\n\n");
                table(&mut out, &es.fields);
            }
            (false, _) => table(&mut out, &es.fields),
        }
    }
    out.truncate(out.trim_end().len());
    out.push('\n');
    out
}

#[cfg(test)]
mod readme_sync {
    /// The README documents the event schema verbatim; regenerate it with
    /// `TCPSTALL_WRITE_SCHEMA=1 cargo test -p monitor --lib readme_sync` and paste.
    #[test]
    fn readme_documents_the_schema_verbatim() {
        let md = super::schema_markdown();
        if std::env::var_os("TCPSTALL_WRITE_SCHEMA").is_some() {
            std::fs::write(
                concat!(env!("CARGO_MANIFEST_DIR"), "/../target/EVENTS.md"),
                &md,
            )
            .unwrap();
        }
        let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"))
            .expect("README.md at the workspace root");
        assert!(
            readme.contains(md.trim()),
            "README.md's event schema section is out of date: regenerate it (see this test's doc)"
        );
    }
}
