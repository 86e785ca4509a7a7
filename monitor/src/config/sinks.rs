//! The `[[sinks]]` tables: read as written (every key, its value and its place in the file)
//! and handed to the sink type their `type` names, which reads and checks its own keys. Only
//! this file knows they were TOML.

use std::{collections::BTreeMap, ops::Range};

use toml::Spanned;

use crate::sinks::{self, Field, SinkTable};
pub use crate::sinks::{
    AlertFilter, RetryPolicy, SinkConfig,
    syslog::{Facility, SyslogAddress, SyslogFormat, SyslogOptions},
    webhook::{WebhookFormat, WebhookOptions},
};

/// A `[[sinks]]` table as written.
pub type SinkEntry = BTreeMap<Spanned<String>, Spanned<toml::Value>>;

/// A configuration error inside one sink: where, which key (relative to the sink), what.
pub type SinkError = (Range<usize>, String, String);

/// The span of a sink table's `type` value, or of its first key when it has none.
pub fn type_span(entry: &SinkEntry) -> Range<usize> {
    match entry.iter().find(|(k, _)| k.get_ref() == "type") {
        Some((_, v)) => v.span(),
        None => entry.iter().next().map_or(0..0, |(k, _)| k.span()),
    }
}

/// Reads one table through the sink type it names.
pub fn check(entry: &SinkEntry) -> Result<SinkConfig, SinkError> {
    let mut table = SinkTable::default();
    let mut kind = None;
    for (k, v) in entry {
        if k.get_ref() == "type" {
            kind = Some(v);
        } else {
            table.entries.insert(k.get_ref().clone(), (field(v.get_ref()), v.span()));
        }
    }
    let Some(kind) = kind else {
        return Err((type_span(entry), String::new(), "missing field `type`".into()));
    };
    let toml::Value::String(name) = kind.get_ref() else {
        let what = field(kind.get_ref()).unexpected();
        return Err((kind.span(), "type".into(), format!("invalid type: {what}, expected a string")));
    };
    table.kind = name.clone();
    table.kind_span = kind.span();
    sinks::read(&table).map_err(|e| (e.span, e.key, e.message))
}

/// Where the string `item` is written inside an array at `span` of `text` (the array's span
/// when it cannot be found): errors then point at the item, not the whole list.
pub fn item_span(text: &str, span: Range<usize>, item: &str) -> Range<usize> {
    let Some(array) = text.get(span.clone()) else { return span };
    let quoted = format!("{item:?}");
    match array.find(&quoted) {
        Some(i) => span.start + i..span.start + i + quoted.len(),
        None => span,
    }
}

fn field(v: &toml::Value) -> Field {
    match v {
        toml::Value::String(s) => Field::Text(s.clone()),
        toml::Value::Integer(n) => Field::Integer(*n),
        toml::Value::Float(f) => Field::Float(*f),
        toml::Value::Boolean(b) => Field::Bool(*b),
        toml::Value::Datetime(d) => Field::Text(d.to_string()),
        toml::Value::Array(a) => Field::List(a.iter().map(field).collect()),
        toml::Value::Table(t) => Field::Table(t.iter().map(|(k, v)| (k.clone(), field(v))).collect()),
    }
}
