//! Identical questions share one answer while the store stays the same: a dashboard polled by
//! fifty people costs one query per store commit, not fifty, and the store's writer keeps its
//! core. Answers are keyed by the question's identity and the store's version (its commit
//! count); a question asked while the same one is being answered waits for that answer. Only
//! a store whose writer runs in this process has a version; without one nothing is shared.

use std::{collections::HashMap, future::Future, sync::Arc};

use tokio::sync::OnceCell;

/// Questions remembered at most, across versions (older versions are forgotten first).
const MAX_QUESTIONS: usize = 256;

/// An answer at a store version: given, or being computed.
type Answer<T> = (u64, Arc<OnceCell<Arc<T>>>);

pub struct SharedAnswers<T> {
    answers: std::sync::Mutex<HashMap<String, Answer<T>>>,
}

impl<T> Default for SharedAnswers<T> {
    fn default() -> Self {
        SharedAnswers { answers: Default::default() }
    }
}

impl<T> SharedAnswers<T> {
    /// The answer to the question `identity` at store `version`: remembered, being computed by
    /// another request (then awaited), or computed by `answer`. Errors are not remembered.
    pub async fn get<E, F, Fut>(&self, identity: String, version: Option<u64>, answer: F) -> Result<Arc<T>, E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let Some(version) = version else { return answer().await.map(Arc::new) };
        let cell = {
            let mut answers = self.answers.lock().unwrap_or_else(|e| e.into_inner());
            answers.retain(|_, (v, _)| *v >= version);
            if answers.len() >= MAX_QUESTIONS && !answers.contains_key(&identity) {
                answers.clear();
            }
            let entry = answers.entry(identity).or_insert_with(|| (version, Arc::default()));
            if entry.0 != version {
                *entry = (version, Arc::default());
            }
            entry.1.clone()
        };
        cell.get_or_try_init(|| async { answer().await.map(Arc::new) }).await.cloned()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    #[tokio::test]
    async fn one_computation_per_question_and_version() {
        let shared = SharedAnswers::<u32>::default();
        let computed = AtomicU32::new(0);
        let ask = |q: &'static str, v: Option<u64>| {
            let (shared, computed) = (&shared, &computed);
            async move {
                *shared
                    .get(q.to_owned(), v, || async {
                        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                        Ok::<_, ()>(computed.fetch_add(1, Ordering::SeqCst))
                    })
                    .await
                    .unwrap()
            }
        };
        // Three at once: one computation, the same answer for all.
        let answers = tokio::join!(ask("a", Some(1)), ask("a", Some(1)), ask("a", Some(1)));
        assert_eq!(answers, (0, 0, 0));
        assert_eq!(ask("a", Some(1)).await, 0, "remembered at the same version");
        assert_eq!(ask("b", Some(1)).await, 1, "another question is answered on its own");
        assert_eq!(ask("a", Some(2)).await, 2, "a commit makes the answer new");
        assert_eq!(ask("a", None).await, 3, "no version: never shared");
        assert_eq!(ask("a", None).await, 4);
    }

    #[tokio::test]
    async fn errors_are_not_remembered() {
        let shared = SharedAnswers::<u32>::default();
        let r: Result<_, &str> = shared.get("q".into(), Some(1), || async { Err("busy") }).await;
        assert_eq!(r.unwrap_err(), "busy");
        let r: Result<_, &str> = shared.get("q".into(), Some(1), || async { Ok(7) }).await;
        assert_eq!(*r.unwrap(), 7);
    }
}
