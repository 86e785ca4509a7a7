//! Identical questions share one answer while the store stays the same: a dashboard polled by
//! fifty people costs one query per store commit, not fifty, and the store's writer keeps its
//! core. Answers are keyed by the question's identity and the store's version (its commit
//! count); a question asked while the same one is being answered waits for that answer. Only
//! a store whose writer runs in this process has a version; without one nothing is shared.
//! Answers are remembered as their JSON text; a large one (a long list of single flows) is
//! shared only with the requests that waited for it, not kept.

use std::{collections::HashMap, future::Future, sync::Arc};

use tokio::sync::OnceCell;

/// Questions remembered at most (answers at older versions are forgotten first).
const MAX_QUESTIONS: usize = 64;
/// Larger answers are not remembered: at most this much text per question.
const MAX_KEPT_BYTES: usize = 256 * 1024;

/// An answer at a store version: given, or being computed.
type Answer = (u64, Arc<OnceCell<Arc<String>>>);

#[derive(Default)]
pub struct SharedAnswers {
    answers: std::sync::Mutex<HashMap<String, Answer>>,
}

impl SharedAnswers {
    /// The answer to the question `identity` at store `version`: remembered, being computed by
    /// another request (then awaited), or computed by `answer`. Errors are not remembered.
    pub async fn get<E, F, Fut>(
        &self,
        identity: String,
        version: Option<u64>,
        answer: F,
    ) -> Result<Arc<String>, E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<String, E>>,
    {
        let Some(version) = version else { return answer().await.map(Arc::new) };
        let cell = {
            let mut answers = self.lock();
            answers.retain(|_, (v, _)| *v >= version);
            if answers.len() >= MAX_QUESTIONS && !answers.contains_key(&identity) {
                answers.clear();
            }
            let entry = answers.entry(identity.clone()).or_insert_with(|| (version, Arc::default()));
            // A request that read the version just before a commit uses a newer answer if one is
            // there: it is at least as recent as the one it asked for.
            if entry.0 < version {
                *entry = (version, Arc::default());
            }
            entry.1.clone()
        };
        let text = cell.get_or_try_init(|| async { answer().await.map(Arc::new) }).await?.clone();
        if text.len() > MAX_KEPT_BYTES {
            let mut answers = self.lock();
            if answers.get(&identity).is_some_and(|(_, c)| Arc::ptr_eq(c, &cell)) {
                answers.remove(&identity);
            }
        }
        Ok(text)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Answer>> {
        self.answers.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    #[tokio::test]
    async fn one_computation_per_question_and_version() {
        let shared = SharedAnswers::default();
        let computed = AtomicU32::new(0);
        let ask = |q: &'static str, v: Option<u64>| {
            let (shared, computed) = (&shared, &computed);
            async move {
                shared
                    .get(q.to_owned(), v, || async {
                        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                        Ok::<_, ()>(computed.fetch_add(1, Ordering::SeqCst).to_string())
                    })
                    .await
                    .unwrap()
                    .parse::<u32>()
                    .unwrap()
            }
        };
        // Three at once: one computation, the same answer for all.
        let answers = tokio::join!(ask("a", Some(1)), ask("a", Some(1)), ask("a", Some(1)));
        assert_eq!(answers, (0, 0, 0));
        assert_eq!(ask("a", Some(1)).await, 0, "remembered at the same version");
        assert_eq!(ask("b", Some(1)).await, 1, "another question is answered on its own");
        assert_eq!(ask("a", Some(2)).await, 2, "a commit makes the answer new");
        assert_eq!(ask("a", Some(1)).await, 2, "a late request takes the newer answer");
        assert_eq!(ask("a", None).await, 3, "no version: never shared");
        assert_eq!(ask("a", None).await, 4);
    }

    #[tokio::test]
    async fn large_answers_are_not_kept() {
        let shared = SharedAnswers::default();
        let big = "x".repeat(MAX_KEPT_BYTES + 1);
        let computed = AtomicU32::new(0);
        for _ in 0..2 {
            let text = shared
                .get("q".into(), Some(1), || async {
                    computed.fetch_add(1, Ordering::SeqCst);
                    Ok::<_, ()>(big.clone())
                })
                .await
                .unwrap();
            assert_eq!(text.len(), big.len());
        }
        assert_eq!(computed.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn errors_are_not_remembered() {
        let shared = SharedAnswers::default();
        let r: Result<_, &str> = shared.get("q".into(), Some(1), || async { Err("busy") }).await;
        assert_eq!(r.unwrap_err(), "busy");
        let r: Result<_, &str> = shared.get("q".into(), Some(1), || async { Ok("7".to_owned()) }).await;
        assert_eq!(r.unwrap().as_str(), "7");
    }
}
