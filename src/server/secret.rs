//! The key behind buyers' `resume` secrets.
//!
//! A secret is HMAC-SHA256(key, shop NUL conversation) in hex, so it can be
//! computed again after a restart instead of being stored: the event log,
//! which supervisors export, never holds one. The key lives in the data
//! directory (`resume.key`, 32 random bytes, mode 0600), created on the
//! first start; without a data directory (tests, embedding) it is random
//! per process and secrets die with it, as conversations do.
//!
//! A key made at this start ([`ResumeKey::is_new`]: the upgrade from a kefu
//! that kept secrets in memory, or a damaged key deleted) verifies no
//! secret handed out before: the restore marks the conversations it brings
//! back as having lost their secret, so that their buyers start anew
//! instead of being refused as someone else (see `Hub::buyer_hello`).

use std::io::Write;
use std::path::{Path, PathBuf};

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The key file's name in the data directory.
pub const KEY_FILE: &str = "resume.key";

const KEY_LEN: usize = 32;

/// Why the resume key cannot be had.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot {what} the resume key {}: {source} (check the data directory's permissions)", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the resume key {} holds {len} bytes, not {KEY_LEN}; it is damaged: delete it to make a new one (buyers of conversations open before then start new ones)", path.display())]
    BadLength { path: PathBuf, len: usize },
}

/// The server's key for resume secrets.
#[derive(Clone)]
pub struct ResumeKey {
    bytes: [u8; KEY_LEN],
    /// Made by this process (no key file before it, or no file at all):
    /// no secret in a buyer's hands can verify under it.
    new: bool,
}

impl std::fmt::Debug for ResumeKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ResumeKey(..)")
    }
}

impl ResumeKey {
    /// A key for this process only.
    pub fn random() -> ResumeKey {
        ResumeKey {
            bytes: rand::random(),
            new: true,
        }
    }

    /// Whether this key was made by this process rather than read from a
    /// key file: then no secret handed out before can verify under it, and
    /// the conversations a restore brings back have lost theirs. A key
    /// another process created at the same moment counts as old (it may
    /// have handed out secrets), which keeps their buyers protected.
    pub fn is_new(&self) -> bool {
        self.new
    }

    /// The key of data directory `dir`, created (0600) if it has none. A
    /// damaged key file (not 32 bytes: a truncated copy, a disk fault) is
    /// set aside as `resume.key.damaged-<unix seconds>` and a new key made,
    /// with a warning: refusing to start was an outage until someone
    /// deleted the file (found by review), and a new key costs only the
    /// open conversations' resumes, whose buyers then start anew (see
    /// [`ResumeKey::is_new`]).
    pub fn load_or_create(dir: &Path) -> Result<ResumeKey, KeyError> {
        let path = dir.join(KEY_FILE);
        match std::fs::read(&path) {
            Ok(bytes) if bytes.len() != KEY_LEN => {
                let secs = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs());
                let aside = dir.join(format!("{KEY_FILE}.damaged-{secs}"));
                std::fs::rename(&path, &aside).map_err(|source| KeyError::Io {
                    what: "set aside the damaged",
                    path: path.clone(),
                    source,
                })?;
                tracing::warn!(
                    path = %path.display(),
                    len = bytes.len(),
                    aside = %aside.display(),
                    "the resume key was damaged (not {KEY_LEN} bytes): set aside, a new one is made; \
                     buyers of the open conversations start new ones"
                );
            }
            Ok(bytes) => return ResumeKey::from_file(&path, &bytes),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(KeyError::Io {
                    what: "read",
                    path,
                    source,
                })
            }
        }
        let key = ResumeKey::random();
        // Written whole under another name, then linked into place: a crash
        // midway leaves no short key file, and linking never replaces a key
        // another process created meanwhile (that one wins, and is read).
        let tmp = dir.join(format!("{KEY_FILE}.{:08x}.tmp", rand::random::<u32>()));
        let io = |what, source| KeyError::Io {
            what,
            path: path.clone(),
            source,
        };
        let written = (|| {
            let mut f = new_private_file(&tmp)?;
            f.write_all(&key.bytes)?;
            f.sync_all()
        })();
        if let Err(e) = written {
            let _ = std::fs::remove_file(&tmp);
            return Err(io("write", e));
        }
        let linked = std::fs::hard_link(&tmp, &path);
        let _ = std::fs::remove_file(&tmp);
        match linked {
            Ok(()) => {
                tracing::info!(path = %path.display(), "created the resume key");
                Ok(key)
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                let bytes = std::fs::read(&path).map_err(|e| io("read", e))?;
                ResumeKey::from_file(&path, &bytes)
            }
            Err(e) => Err(io("create", e)),
        }
    }

    fn from_file(path: &Path, bytes: &[u8]) -> Result<ResumeKey, KeyError> {
        let key: [u8; KEY_LEN] = bytes.try_into().map_err(|_| KeyError::BadLength {
            path: path.to_path_buf(),
            len: bytes.len(),
        })?;
        Ok(ResumeKey {
            bytes: key,
            new: false,
        })
    }

    /// The resume secret of conversation `conv` of `shop`, in hex.
    pub fn secret(&self, shop: &str, conv: &str) -> String {
        let mut mac =
            Hmac::<Sha256>::new_from_slice(&self.bytes).expect("HMAC takes any key length");
        mac.update(shop.as_bytes());
        mac.update(&[0]);
        mac.update(conv.as_bytes());
        let tag = mac.finalize().into_bytes();
        let mut hex = String::with_capacity(tag.len() * 2);
        for b in tag {
            hex.push_str(&format!("{b:02x}"));
        }
        hex
    }
}

#[cfg(unix)]
fn new_private_file(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
}

#[cfg(not(unix))]
fn new_private_file(path: &Path) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The key is made once, private, and read back the same; a secret
    /// depends on the key, the shop and the conversation, with the NUL
    /// keeping `s1`+`2c` apart from `s12`+`c`.
    #[test]
    fn the_key_is_made_once_and_secrets_follow_it() {
        let dir = tempfile::tempdir().unwrap();
        let a = ResumeKey::load_or_create(dir.path()).unwrap();
        let b = ResumeKey::load_or_create(dir.path()).unwrap();
        assert_eq!(a.secret("s1", "c1"), b.secret("s1", "c1"));
        assert_eq!(
            (a.is_new(), b.is_new()),
            (true, false),
            "made once, then read"
        );
        assert!(ResumeKey::random().is_new());
        assert_eq!(a.secret("s1", "c1").len(), 64);
        assert_ne!(a.secret("s1", "c1"), a.secret("s1", "c2"));
        assert_ne!(a.secret("s1", "2c"), a.secret("s12", "c"));
        assert_ne!(a.secret("s1", "c1"), ResumeKey::random().secret("s1", "c1"));
        let path = dir.path().join(KEY_FILE);
        assert_eq!(std::fs::read(&path).unwrap().len(), KEY_LEN);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(left.len(), 1, "no temporary file left behind");
    }

    /// A damaged key (empty, short, long) is set aside, not lost, and a new
    /// one made in its place; the service starts.
    #[test]
    fn a_damaged_key_is_set_aside_and_replaced() {
        for damaged in [&b""[..], b"short", &[7u8; KEY_LEN + 1]] {
            let dir = tempfile::tempdir().unwrap();
            std::fs::write(dir.path().join(KEY_FILE), damaged).unwrap();
            let key = ResumeKey::load_or_create(dir.path()).unwrap();
            assert!(key.is_new(), "{} bytes", damaged.len());
            assert_eq!(std::fs::read(dir.path().join(KEY_FILE)).unwrap(), key.bytes);
            let aside: Vec<_> = std::fs::read_dir(dir.path())
                .unwrap()
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .filter(|n| n.starts_with("resume.key.damaged-"))
                .collect();
            assert_eq!(aside.len(), 1, "{aside:?}");
            let kept = std::fs::read(dir.path().join(&aside[0])).unwrap();
            assert_eq!(kept, damaged, "the damaged key is kept as it was");
        }
    }
}
