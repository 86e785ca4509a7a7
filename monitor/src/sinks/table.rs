//! A `[[sinks]]` table as the configuration wrote it, handed over by the configuration layer:
//! each key with its value and where it was written. Each sink type reads its own keys from it
//! (and nothing else does), so a sink owns its settings, defaults and checks; errors keep the
//! key and the place in the file.

use std::{collections::BTreeMap, ops::Range, time::Duration};

use crate::record::Severity;

/// Where a value was written: a byte range of the configuration file.
pub type Span = Range<usize>;

/// A value as written.
#[derive(Debug, Clone, PartialEq)]
pub enum Field {
    Text(String),
    Integer(i64),
    Float(f64),
    Bool(bool),
    /// Items carry the span of the whole list.
    List(Vec<Field>),
    Table(BTreeMap<String, Field>),
}

impl Field {
    /// What was written, as serde's errors name it (`integer \`5\``, `string "x"`).
    pub fn unexpected(&self) -> String {
        match self {
            Field::Text(s) => format!("string {s:?}"),
            Field::Integer(n) => format!("integer `{n}`"),
            Field::Float(f) => format!("floating point `{f}`"),
            Field::Bool(b) => format!("boolean `{b}`"),
            Field::List(_) => "sequence".into(),
            Field::Table(_) => "map".into(),
        }
    }
}

/// A problem with one key of a sink: where, which key (relative to the sink), what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub span: Span,
    pub key: String,
    pub message: String,
}

/// One `[[sinks]]` table.
#[derive(Debug, Clone, Default)]
pub struct SinkTable {
    /// The value of `type`, and where it was written.
    pub kind: String,
    pub kind_span: Span,
    /// Every other key.
    pub entries: BTreeMap<String, (Field, Span)>,
}

impl SinkTable {
    pub fn error(&self, key: &str, span: Span, message: impl Into<String>) -> FieldError {
        FieldError { span, key: key.to_owned(), message: message.into() }
    }

    /// The error for a key this sink type needs and the table lacks.
    pub fn missing(&self, key: &str, example: &str) -> FieldError {
        self.error(
            key,
            self.kind_span.clone(),
            format!("a {} sink needs `{key}`, like {key} = {example:?}", self.kind),
        )
    }

    fn wrong_type(&self, key: &str, span: &Span, f: &Field, expected: &str) -> FieldError {
        self.error(key, span.clone(), format!("invalid type: {}, expected {expected}", f.unexpected()))
    }

    /// A string value, and its span.
    pub fn text(&self, key: &str) -> Result<Option<(String, Span)>, FieldError> {
        match self.entries.get(key) {
            None => Ok(None),
            Some((Field::Text(s), span)) => Ok(Some((s.clone(), span.clone()))),
            Some((f, span)) => Err(self.wrong_type(key, span, f, "a string")),
        }
    }

    /// A string value read by `parse`; its error message is the error's.
    pub fn parsed<T>(
        &self,
        key: &str,
        parse: impl Fn(&str) -> Result<T, String>,
    ) -> Result<Option<T>, FieldError> {
        match self.text(key)? {
            None => Ok(None),
            Some((s, span)) => parse(&s).map(Some).map_err(|m| self.error(key, span, m)),
        }
    }

    /// A duration written like "10s", "500ms", "2m"; greater than zero.
    pub fn duration(&self, key: &str) -> Result<Option<Duration>, FieldError> {
        self.parsed(key, parse_duration)
    }

    /// One of `choices`.
    pub fn choice(&self, key: &str, choices: &[&'static str]) -> Result<Option<&'static str>, FieldError> {
        self.parsed(key, |s| {
            choices.iter().find(|c| **c == s).copied().ok_or_else(|| {
                format!("unknown {key} {s:?} for a {} sink: expected {}", self.kind, choices.join(" or "))
            })
        })
    }

    pub fn severity(&self, key: &str) -> Result<Option<Severity>, FieldError> {
        self.parsed(key, |s| {
            [Severity::Low, Severity::Medium, Severity::High, Severity::Critical]
                .into_iter()
                .find(|v| v.name() == s)
                .ok_or_else(|| {
                    format!("unknown variant `{s}`, expected one of `low`, `medium`, `high`, `critical`")
                })
        })
    }

    /// A list of strings (each with the list's span).
    pub fn strings(&self, key: &str) -> Result<Vec<(String, Span)>, FieldError> {
        match self.entries.get(key) {
            None => Ok(Vec::new()),
            Some((Field::List(items), span)) => items
                .iter()
                .map(|f| match f {
                    Field::Text(s) => Ok((s.clone(), span.clone())),
                    other => Err(self.wrong_type(key, span, other, "a string")),
                })
                .collect(),
            Some((f, span)) => Err(self.wrong_type(key, span, f, "an array of strings")),
        }
    }

    /// An inline table of strings (`headers = { "X-Team" = "secops" }`).
    pub fn string_table(&self, key: &str) -> Result<BTreeMap<String, String>, FieldError> {
        match self.entries.get(key) {
            None => Ok(BTreeMap::new()),
            Some((Field::Table(t), span)) => t
                .iter()
                .map(|(k, v)| match v {
                    Field::Text(s) => Ok((k.clone(), s.clone())),
                    other => Err(self.wrong_type(key, span, other, "a string")),
                })
                .collect(),
            Some((f, span)) => Err(self.wrong_type(key, span, f, "a table of strings")),
        }
    }

    /// Refuses keys that `allowed` does not list: a key of another sink type is named as such
    /// (with what this type takes), any other as an unknown field (with every key there is).
    pub fn only(&self, allowed: &[&str], known: &[&str]) -> Result<(), FieldError> {
        // In the order written, so the first stray key is the one reported. An empty `classes`
        // says nothing and is taken by every type.
        let mut present: Vec<(&String, &Span)> = self
            .entries
            .iter()
            .filter(|(k, (v, _))| !(k.as_str() == "classes" && *v == Field::List(Vec::new())))
            .map(|(k, (_, s))| (k, s))
            .collect();
        present.sort_by_key(|(_, s)| s.start);
        for (key, span) in present {
            if !known.contains(&key.as_str()) {
                let all: Vec<String> = known.iter().map(|k| format!("`{k}`")).collect();
                return Err(self.error(
                    key,
                    span.clone(),
                    format!("unknown field `{key}`, expected one of {}", all.join(", ")),
                ));
            }
            if !allowed.contains(&key.as_str()) {
                let kind = &self.kind;
                let takes = if allowed.is_empty() { "no other keys".to_owned() } else { allowed.join(", ") };
                return Err(self.error(
                    key,
                    span.clone(),
                    format!("`{key}` is not a key of a {kind} sink ({kind} sinks take {takes})"),
                ));
            }
        }
        Ok(())
    }
}

/// A duration like "10s", "500ms", "2m", "1h"; zero is refused.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let parsed = humantime::parse_duration(text).map_err(|e| {
        format!(
            "invalid duration {text:?} ({e}): expected a number and a unit, like \"500ms\", \"10s\", \"5m\""
        )
    })?;
    if parsed.is_zero() {
        return Err(format!("invalid duration {text:?}: must be greater than zero"));
    }
    Ok(parsed)
}
