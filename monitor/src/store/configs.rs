//! The configurations the agent counted under, for residency reports: a row each time the
//! agent starts, reloads its configuration (SIGHUP), or reopens a database or range file that
//! was replaced on disk. A report names every configuration in force over its period, not the
//! one of whoever makes the report.

use std::path::Path;

use rusqlite::{Connection, params};
use serde::{Deserialize, Serialize};

/// What a configuration row says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Configuration {
    /// When it was put in force, Unix milliseconds.
    pub at_ms: i64,
    /// `start`, `reload` (SIGHUP) or `sources` (a replaced database or range file reopened).
    pub cause: String,
    /// SHA-256 of the configuration file's text.
    pub digest: String,
    /// Class names in class-id order.
    pub classes: Vec<String>,
    /// The places' sources: (kind, description with build date or published version).
    pub sources: Vec<(String, String)>,
}

impl Configuration {
    /// Whether two rows describe the same configuration (an agent restarted on the same file
    /// and databases changes nothing a report states).
    pub fn same_as(&self, other: &Configuration) -> bool {
        (&self.digest, &self.classes, &self.sources) == (&other.digest, &other.classes, &other.sources)
    }
}

/// Records a configuration in the store at `dir`.
pub fn record(dir: &Path, c: &Configuration) -> anyhow::Result<()> {
    let conn = super::open_for_writing(dir)?;
    conn.execute(
        "INSERT INTO configurations (at_ms, cause, digest, classes, sources) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![
            c.at_ms,
            c.cause,
            c.digest,
            serde_json::to_string(&c.classes)?,
            serde_json::to_string(&c.sources)?
        ],
    )?;
    Ok(())
}

/// The configurations in force over [from_ms, until_ms): the last one put in force at or
/// before `from_ms`, then each put in force before `until_ms`, in order; a row that repeats
/// the one before it (a restart on the same configuration) is left out.
pub fn in_force(conn: &Connection, from_ms: i64, until_ms: i64) -> anyhow::Result<Vec<Configuration>> {
    let mut stmt = conn.prepare(
        "SELECT at_ms, cause, digest, classes, sources FROM configurations
         WHERE id >= IFNULL((SELECT MAX(id) FROM configurations WHERE at_ms <= ?1), 0) AND at_ms < ?2
         ORDER BY id",
    )?;
    let mut rows = stmt.query(params![from_ms, until_ms])?;
    let mut out: Vec<Configuration> = Vec::new();
    while let Some(r) = rows.next()? {
        let (classes, sources): (String, String) = (r.get(3)?, r.get(4)?);
        let c = Configuration {
            at_ms: r.get(0)?,
            cause: r.get(1)?,
            digest: r.get(2)?,
            classes: serde_json::from_str(&classes)?,
            sources: serde_json::from_str(&sources)?,
        };
        if out.last().is_none_or(|last| !last.same_as(&c)) {
            out.push(c);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(at_ms: i64, cause: &str, digest: &str) -> Configuration {
        Configuration {
            at_ms,
            cause: cause.into(),
            digest: digest.into(),
            classes: vec!["us".into()],
            sources: vec![("mmdb".into(), "embedded".into())],
        }
    }

    #[test]
    fn a_period_has_the_configuration_it_began_with_and_each_one_after() {
        let dir = tempfile::tempdir().unwrap();
        for c in [
            config(1_000, "start", "a"),
            config(2_000, "reload", "b"),
            config(3_000, "start", "b"),
            config(4_000, "reload", "c"),
            config(9_000, "reload", "d"),
        ] {
            record(dir.path(), &c).unwrap();
        }
        let conn = super::super::open_for_writing(dir.path()).unwrap();
        let digests = |from, until| -> Vec<String> {
            in_force(&conn, from, until).unwrap().into_iter().map(|c| c.digest).collect()
        };
        // b was in force at 2500; the restart on b at 3000 is no change.
        assert_eq!(digests(2_500, 5_000), ["b", "c"]);
        assert_eq!(in_force(&conn, 2_500, 5_000).unwrap()[0].at_ms, 2_000);
        assert_eq!(digests(4_000, 9_000), ["c"]);
        assert_eq!(digests(0, 1_500), ["a"]);
        // Before any agent ran: none.
        assert!(digests(0, 500).is_empty());
    }
}
