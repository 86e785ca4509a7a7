//! The host key that signs residency reports: Ed25519, generated at the agent's first start,
//! its private half in `state_dir/host.key` (mode 0600, readable by root alone), its public half
//! printed by `egress-monitor key` as one line, `ed25519:<base64>`, which `verify --key` reads.

use std::{
    io::Write,
    os::unix::fs::{OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
};

use anyhow::{Context, bail};
use base64::{Engine, engine::general_purpose::STANDARD};
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};

/// File name of the private key in the state directory.
pub const FILE: &str = "host.key";
const PRIVATE: &str = "ed25519-private:";
const PUBLIC: &str = "ed25519:";

pub struct HostKey {
    key: SigningKey,
}

/// Shows the public half only.
impl std::fmt::Debug for HostKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "HostKey({})", self.public())
    }
}

pub fn path(state_dir: &Path) -> PathBuf {
    state_dir.join(FILE)
}

impl HostKey {
    /// The key in `state_dir`, created (from the kernel's random numbers) when there is none.
    pub fn load_or_create(state_dir: &Path) -> anyhow::Result<HostKey> {
        let p = path(state_dir);
        if p.exists() {
            return HostKey::load(state_dir);
        }
        std::fs::create_dir_all(state_dir).with_context(|| format!("creating {}", state_dir.display()))?;
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed)
            .map_err(|e| anyhow::anyhow!("reading random numbers for the host key: {e}"))?;
        let text = format!("{PRIVATE}{}\n", STANDARD.encode(seed));
        // Written whole under a name of its own, then linked into place: a crash leaves no
        // empty key, and of two processes creating it at once both end up with the one linked.
        let unique = getrandom::u64().map_err(|e| anyhow::anyhow!("reading random numbers: {e}"))?;
        let tmp = state_dir.join(format!("{FILE}.{unique:016x}.tmp"));
        let written = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .and_then(|mut f| f.write_all(text.as_bytes()).and_then(|()| f.sync_all()));
        let linked = written.and_then(|()| std::fs::hard_link(&tmp, &p));
        let _ = std::fs::remove_file(&tmp);
        match linked {
            Ok(()) => {
                tracing::info!(path = %p.display(), "created the host key that signs residency reports")
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e).with_context(|| format!("creating the host key {}", p.display())),
        }
        HostKey::load(state_dir)
    }

    /// The key in `state_dir`; refused when anyone but its owner may read it.
    pub fn load(state_dir: &Path) -> anyhow::Result<HostKey> {
        let p = path(state_dir);
        let meta = std::fs::metadata(&p).with_context(|| format!("reading the host key {}", p.display()))?;
        if meta.permissions().mode() & 0o077 != 0 {
            bail!(
                "{}: the host key is readable by others (mode {:o}); it must be 0600",
                p.display(),
                meta.permissions().mode() & 0o777
            );
        }
        let text =
            std::fs::read_to_string(&p).with_context(|| format!("reading the host key {}", p.display()))?;
        let seed = decode32(&text, PRIVATE).with_context(|| {
            format!("{}: not an egress-monitor host key ({PRIVATE}<base64 of 32 bytes>)", p.display())
        })?;
        Ok(HostKey { key: SigningKey::from_bytes(&seed) })
    }

    /// The public key as `egress-monitor key` prints it.
    pub fn public(&self) -> String {
        public_text(&self.key.verifying_key())
    }

    pub fn sign(&self, message: &[u8]) -> String {
        STANDARD.encode(self.key.sign(message).to_bytes())
    }
}

/// The 32 bytes of `<prefix><base64>`.
fn decode32(text: &str, prefix: &str) -> Option<[u8; 32]> {
    let b = STANDARD.decode(text.trim().strip_prefix(prefix)?).ok()?;
    <[u8; 32]>::try_from(b).ok()
}

fn public_text(k: &VerifyingKey) -> String {
    format!("{PUBLIC}{}", STANDARD.encode(k.to_bytes()))
}

/// A public key, as `egress-monitor key` prints it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicKey(VerifyingKey);

impl PublicKey {
    pub fn parse(text: &str) -> Result<PublicKey, String> {
        let bytes = decode32(text, PUBLIC).ok_or_else(|| {
            format!("not a public key: expected {PUBLIC}<base64 of 32 bytes>, as `egress-monitor key` prints")
        })?;
        VerifyingKey::from_bytes(&bytes)
            .map(PublicKey)
            .map_err(|e| format!("not a valid Ed25519 public key: {e}"))
    }

    pub fn text(&self) -> String {
        public_text(&self.0)
    }

    /// Whether `signature` (base64) is this key's over `message`.
    pub fn verifies(&self, message: &[u8], signature: &str) -> bool {
        let Some(sig) = STANDARD.decode(signature).ok().and_then(|b| <[u8; 64]>::try_from(b).ok()) else {
            return false;
        };
        self.0.verify(message, &Signature::from_bytes(&sig)).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_once_private_and_verifiable() {
        let dir = tempfile::tempdir().unwrap();
        let k = HostKey::load_or_create(dir.path()).unwrap();
        let mode = std::fs::metadata(path(dir.path())).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let again = HostKey::load_or_create(dir.path()).unwrap();
        assert_eq!(k.public(), again.public());
        let public = PublicKey::parse(&k.public()).unwrap();
        let sig = k.sign(b"report");
        assert!(public.verifies(b"report", &sig));
        assert!(!public.verifies(b"repors", &sig));
        let other = HostKey::load_or_create(tempfile::tempdir().unwrap().path()).unwrap();
        assert!(!PublicKey::parse(&other.public()).unwrap().verifies(b"report", &sig));
        std::fs::set_permissions(path(dir.path()), std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(HostKey::load(dir.path()).unwrap_err().to_string().contains("0600"));
    }

    #[test]
    fn created_at_once_by_two_is_one_key() {
        for _ in 0..20 {
            let dir = tempfile::tempdir().unwrap();
            let keys: Vec<String> = std::thread::scope(|s| {
                let made: Vec<_> = (0..2)
                    .map(|_| s.spawn(|| HostKey::load_or_create(dir.path()).unwrap().public()))
                    .collect();
                made.into_iter().map(|h| h.join().unwrap()).collect()
            });
            assert_eq!(keys[0], keys[1]);
            // Nothing left beside the key.
            assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        }
    }
}
