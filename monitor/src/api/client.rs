//! The API's client, as the CLI uses it: over the agent's unix socket, or over TCP with a
//! bearer token. Errors say what to check (is the agent running, the token, the parameter).

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::answers::ApiError;

pub struct ApiClient {
    client: reqwest::Client,
    base: reqwest::Url,
    token: Option<String>,
    /// For messages: where the agent was looked for.
    target: String,
    /// The unix socket, when that is how the agent is reached.
    socket: Option<PathBuf>,
}

impl ApiClient {
    /// Over the agent's unix socket.
    pub fn unix(socket: &Path) -> anyhow::Result<ApiClient> {
        crate::install_crypto();
        let client = reqwest::Client::builder().unix_socket(PathBuf::from(socket)).build()?;
        Ok(ApiClient {
            client,
            base: reqwest::Url::parse("http://egress-monitor/").expect("valid base URL"),
            token: None,
            target: format!("the agent's socket {}", socket.display()),
            socket: Some(socket.to_owned()),
        })
    }

    /// Over TCP (`--api URL`), with the token read from `token_file`.
    pub fn tcp(url: &str, token_file: Option<&Path>) -> anyhow::Result<ApiClient> {
        let base = reqwest::Url::parse(url)
            .with_context(|| format!("--api {url:?} is not a URL (like http://127.0.0.1:9850)"))?;
        let token = match token_file {
            Some(p) => Some(
                std::fs::read_to_string(p)
                    .with_context(|| format!("reading --token-file {}", p.display()))?
                    .trim()
                    .to_owned(),
            ),
            None => None,
        };
        crate::install_crypto();
        let client = reqwest::Client::builder().tls_backend_rustls().build()?;
        Ok(ApiClient { client, base, token, target: url.to_owned(), socket: None })
    }

    /// GETs `path` with `params`: the answer decoded as `T`, and as JSON (for `-o json`, which
    /// prints it as sent); or an error that explains.
    pub async fn get<T: DeserializeOwned>(
        &self,
        path: &str,
        params: &[(&str, String)],
    ) -> anyhow::Result<(T, Value)> {
        let mut url = self.base.join(path)?;
        url.query_pairs_mut().extend_pairs(params.iter().map(|(k, v)| (*k, v.as_str())));
        let mut req = self.client.get(url);
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        let resp = match req.send().await {
            Ok(r) => r,
            Err(e) => {
                if let Some(s) = &self.socket {
                    // Nothing there, or nothing listening: a stopped agent removes its socket.
                    use std::os::unix::fs::FileTypeExt;
                    let there = std::fs::symlink_metadata(s).is_ok_and(|m| m.file_type().is_socket());
                    if !there || e.is_connect() {
                        bail!(
                            "no agent is running at {} (start one with `egress-monitor run`, or pass the --config of the agent you mean)",
                            s.display()
                        );
                    }
                }
                return Err(anyhow::Error::new(e).context(format!(
                    "cannot reach the egress-monitor API at {} (is `egress-monitor run` running?)",
                    self.target
                )));
            }
        };
        let code = resp.status();
        let text = resp.text().await?;
        if code.is_success() {
            let body: Value = serde_json::from_str(&text).context("the API's answer is not JSON")?;
            let typed = T::deserialize(&body)
                .with_context(|| format!("the API's answer to {path} is not what this CLI expects"))?;
            return Ok((typed, body));
        }
        if code == reqwest::StatusCode::UNAUTHORIZED {
            bail!(
                "the API refused the request (401): pass --token-file with the token of the agent's api.token_file"
            );
        }
        let err: ApiError =
            serde_json::from_str(&text).unwrap_or(ApiError { error: text, ..Default::default() });
        if let (Some(p), Some(e)) = (&err.parameter, &err.expected) {
            bail!("invalid {p}={:?}: expected {e}", err.value.as_deref().unwrap_or(""));
        }
        bail!("the API answered {code}: {}", err.error)
    }
}
