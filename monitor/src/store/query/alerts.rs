//! `GET /v1/alerts`: the stored alerts in a window, shaped like the alert records.

use chrono::{DateTime, Utc};
use rusqlite::{Connection, types::Value as SqlValue};
use serde_json::{Map, Value};

use super::{Common, ParamError, bad, in_list, list, parse_common, sql_to_json, unknown};
use crate::record::fields;

const SEVERITIES: [&str; 4] = ["critical", "high", "medium", "low"];

/// `GET /v1/alerts`.
#[derive(Debug, Clone)]
pub struct AlertQuery {
    pub since: DateTime<Utc>,
    pub until: DateTime<Utc>,
    pub limit: usize,
    filters: Vec<(String, Vec<SqlValue>)>,
}

impl AlertQuery {
    pub const PARAMETERS: [&'static str; 5] = ["since", "until", "class", "severity", "limit"];

    pub fn parse(params: &[(String, String)], now: DateTime<Utc>) -> Result<AlertQuery, ParamError> {
        unknown(params, &Self::PARAMETERS)?;
        let Common { since, until, limit } = parse_common(params, now)?;
        let mut filters = Vec::new();
        for (k, v) in params {
            match k.as_str() {
                "class" => filters.push(in_list("class", list(v))),
                "severity" => {
                    let values = list(v);
                    if values.is_empty()
                        || values
                            .iter()
                            .any(|x| !matches!(x, SqlValue::Text(t) if SEVERITIES.contains(&t.as_str())))
                    {
                        return Err(bad("severity", v, "critical, high, medium or low (comma-separated)"));
                    }
                    filters.push(in_list("severity", values));
                }
                _ => {}
            }
        }
        Ok(AlertQuery { since, until, limit, filters })
    }

    /// Alerts in the window, newest first, shaped like the alert records.
    pub fn run(&self, conn: &Connection) -> rusqlite::Result<Vec<Value>> {
        let mut conds = vec!["time_unix >= ?".to_owned(), "time_unix <= ?".to_owned()];
        let mut values =
            vec![SqlValue::Integer(self.since.timestamp()), SqlValue::Integer(self.until.timestamp())];
        for (c, v) in &self.filters {
            conds.push(format!("({c})"));
            values.extend(v.iter().cloned());
        }
        let shown: Vec<_> = fields::stored(fields::ALERT).filter(|(_, f)| f.api).collect();
        let columns: Vec<&str> = shown.iter().map(|(c, _)| *c).collect();
        let sql = format!(
            "SELECT {} FROM alerts WHERE {} ORDER BY time_unix DESC, id LIMIT {}",
            columns.join(", "),
            conds.join(" AND "),
            self.limit
        );
        let mut stmt = conn.prepare(&sql)?;
        let rows = stmt.query_map(rusqlite::params_from_iter(values), |r| {
            // Shaped like the alert records: each column at its field's place.
            let mut alert = Map::new();
            alert.insert("type".into(), "alert".into());
            for (i, (_, f)) in shown.iter().enumerate() {
                let v = match (f.kind, r.get::<_, SqlValue>(i)?) {
                    (fields::Kind::Bool, SqlValue::Integer(n)) => Value::Bool(n != 0),
                    (fields::Kind::List, v) => super::names_to_json(v),
                    (_, v) => sql_to_json(v),
                };
                match f.path.split_once('.') {
                    Some((outer, inner)) => {
                        let o = alert.entry(outer).or_insert_with(|| Value::Object(Map::new()));
                        if let Value::Object(o) = o {
                            o.insert(inner.into(), v);
                        }
                    }
                    None => {
                        alert.insert(f.path.into(), v);
                    }
                }
            }
            Ok(Value::Object(alert))
        })?;
        rows.collect()
    }
}
