//! Hot reload of the phrase directory.
//!
//! The directory is polled (every second by default): the names, sizes and
//! modification times of its `*.yaml` files (hidden ones, named `.…`, left
//! out as the load leaves them out) form a fingerprint, and a
//! changed fingerprint that stays the same for one more poll triggers a
//! reload, so an editor's save-in-several-writes is read once, whole.
//! Polling rather than inotify: it works the same on every file system
//! (network mounts, containers, editors that replace files) and costs one
//! `stat` per file a second.
//!
//! A reload that fails keeps the libraries in force, logs every problem
//! with file, line and column, and tells the connected agents
//! (`{"type":"reload","ok":false,"errors":[...]}`); a good one swaps them
//! in at once and says `ok: true`. The problems also stay in the service's
//! phrase status ([`App::phrase_status`]: later agents' `welcome`,
//! `/healthz`) until a good reload clears them.
//!
//! A reload that would lose a stage library file of the libraries in
//! force, or every intent of a stage, fails the same way
//! ([`LoadedDir::losses`]): a stray `rm` or a half-finished sync must not
//! silently stop a stage's suggestions. Removing a library on purpose takes
//! a restart.
//!
//! A good reload also becomes the data directory's last-good copy
//! ([`super::last_good`]) when the service keeps one.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use tracing::{error, info, warn};

use super::{last_good, App, Phrases};
use crate::phrases::{LoadedDir, LoadedFile, Problem};
use crate::protocol::{to_json, PhraseSource, ServerMsg};

/// What a directory looked like: its YAML files' names, sizes, times and
/// who may read them ([`Access`]).
pub(crate) type Fingerprint = Vec<(PathBuf, u64, Option<SystemTime>, Access)>;

/// A file's permission bits and status-change time (Unix; nothing
/// elsewhere): a `chmod` or `chown` that makes an unreadable file readable
/// changes neither its size nor its modification time, and the service
/// stayed on its old libraries until some edit came (found by review).
pub(crate) type Access = (u32, i64, i64);

#[cfg(unix)]
fn access(meta: &std::fs::Metadata) -> Access {
    use std::os::unix::fs::MetadataExt;
    (meta.mode(), meta.ctime(), meta.ctime_nsec())
}

#[cfg(not(unix))]
fn access(_: &std::fs::Metadata) -> Access {
    (0, 0, 0)
}

/// `None` when the directory cannot be read for a passing reason (out of
/// file descriptors, say): that is no edit, and treating it as one sent
/// every agent a failed reload and then a good one. A directory that is
/// gone is an edit (the reload then says so and keeps the libraries).
pub(crate) fn fingerprint(dir: &Path) -> Option<Fingerprint> {
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Some(Vec::new()),
        Err(e) => {
            warn!(dir = %dir.display(), "phrase directory not checked this time: {e}");
            return None;
        }
    };
    let mut fp: Fingerprint = rd
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| crate::phrases::is_library_file(p))
        .map(|p| {
            let meta = std::fs::metadata(&p).ok();
            let len = meta.as_ref().map_or(0, |m| m.len());
            let acc = meta.as_ref().map_or((0, 0, 0), access);
            let mtime = meta.and_then(|m| m.modified().ok());
            (p, len, mtime, acc)
        })
        .collect();
    fp.sort();
    Some(fp)
}

async fn fingerprint_async(dir: &Path) -> Option<Fingerprint> {
    let dir = dir.to_path_buf();
    tokio::task::spawn_blocking(move || fingerprint(&dir))
        .await
        .ok()
        .flatten()
}

pub(crate) async fn watch(app: App, every: Duration) {
    let dir = app.config().phrases.clone();
    // What the directory looked like when the libraries in force were
    // loaded, so an edit made since then is not missed.
    let initial = app
        .shared
        .loaded_fingerprint
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take();
    let mut seen = match initial {
        Some(fp) => fp,
        None => fingerprint_async(&dir).await.unwrap_or_default(),
    };
    let mut candidate: Option<Fingerprint> = None;
    let mut shutdown = app.shutdown_rx();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = super::stopping(&mut shutdown) => return,
        }
        let Some(now) = fingerprint_async(&dir).await else {
            continue;
        };
        if now == seen {
            candidate = None;
            continue;
        }
        if candidate.as_ref() != Some(&now) {
            candidate = Some(now); // wait for the edit to settle
            continue;
        }
        seen = now;
        candidate = None;
        reload(&app).await;
    }
}

/// Loads the phrase directory again and tells the agents how it went.
pub(crate) async fn reload(app: &App) {
    let dir = app.config().phrases.clone();
    let shown = dir.display().to_string();
    let in_force = app.files_in_force();
    let keep = app.shared.last_good.clone();
    let result = tokio::task::spawn_blocking(move || load(&dir, &in_force, keep.as_deref()))
        .await
        .unwrap_or_else(|e| Err(vec![format!("the reload task failed: {e}")]));
    let frame = match result {
        Ok((phrases, files)) => {
            let intents = phrases.matcher.intent_count();
            app.set_phrases(phrases);
            app.libraries_in_use(files, PhraseSource::Directory);
            info!(dir = %shown, intents, "phrase libraries reloaded");
            to_json(&ServerMsg::Reload {
                ok: true,
                intents: Some(intents),
                errors: &[],
            })
        }
        Err(errors) => {
            for e in &errors {
                error!(dir = %shown, "phrase library problem: {e}");
            }
            warn!(dir = %shown, problems = errors.len(), "reload failed: keeping the libraries in force");
            app.phrase_problems(errors.clone());
            to_json(&ServerMsg::Reload {
                ok: false,
                intents: None,
                errors: &errors,
            })
        }
    };
    let agents = app.hub().agent_outboxes();
    for out in agents {
        out.push(frame.clone().into());
    }
}

/// Loads `dir` for a reload: refused when it has problems or would lose
/// something of the libraries in force (`in_force`); when good, kept as
/// the last-good copy of data directory `keep`, if any.
fn load(
    dir: &Path,
    in_force: &[LoadedFile],
    keep: Option<&Path>,
) -> Result<(Phrases, Vec<LoadedFile>), Vec<String>> {
    let strings = |problems: &[Problem]| problems.iter().map(ToString::to_string).collect();
    let loaded = LoadedDir::load(dir).map_err(|e| strings(&e.0))?;
    let lost = loaded.losses(in_force, dir);
    if !lost.is_empty() {
        return Err(strings(&lost));
    }
    let phrases = Phrases::from_library(&loaded.library)
        .map_err(|e| vec![format!("{}: {e}", dir.display())])?;
    crate::server::warn_missing_required(dir, &loaded.library);
    if let Some(data) = keep {
        if let Err(e) = last_good::save(data, &loaded.files) {
            warn!(data = %data.display(), "cannot keep a copy of the phrase libraries: {e}");
        }
    }
    Ok((phrases, loaded.files))
}

#[cfg(test)]
mod tests {
    use super::fingerprint;

    #[test]
    fn a_missing_directory_is_an_edit_and_a_readable_one_is_listed() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.yaml"), "x").unwrap();
        std::fs::write(dir.path().join("notes.txt"), "x").unwrap();
        let fp = fingerprint(dir.path()).expect("readable");
        assert_eq!(fp.len(), 1);
        assert_eq!(fp[0].1, 1);
        assert_eq!(fingerprint(&dir.path().join("gone")), Some(Vec::new()));
    }

    /// Hidden files (`._a.yaml` from macOS, `.#a.yaml` from emacs) are
    /// not libraries: not in the fingerprint, so they trigger no reload.
    #[test]
    fn hidden_files_are_not_in_the_fingerprint() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.yaml"), "x").unwrap();
        let before = fingerprint(dir.path()).expect("readable");
        std::fs::write(dir.path().join("._a.yaml"), b"\x00\x05\x16\x07").unwrap();
        std::fs::write(dir.path().join(".#a.yaml"), "x").unwrap();
        assert_eq!(fingerprint(dir.path()), Some(before));
    }

    /// A file made readable (`chmod`) is a change, though its size and
    /// modification time are not.
    #[cfg(unix)]
    #[test]
    fn a_permission_change_is_a_change() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("a.yaml");
        std::fs::write(&file, "x").unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o000)).unwrap();
        let before = fingerprint(dir.path()).expect("readable");
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        let after = fingerprint(dir.path()).expect("readable");
        assert_eq!(
            (before[0].1, before[0].2),
            (after[0].1, after[0].2),
            "size and time alike"
        );
        assert_ne!(before, after);
    }
}
