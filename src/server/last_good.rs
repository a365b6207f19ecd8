//! The last phrase libraries that loaded, kept in the data directory.
//!
//! Every load or reload that succeeds keeps the files it read, byte for
//! byte, in `<data>/phrases.last-good/`. A start whose phrase directory
//! does not load serves that copy instead of refusing: a broken edit that
//! hot reload survived (the old libraries stayed in use) must not become
//! an outage at the next restart.
//!
//! The copy is replaced whole: the new files are written and synced in
//! `phrases.last-good.tmp`, the old copy is renamed to
//! `phrases.last-good.old`, the new one renamed into place and the old one
//! removed. At every moment one of `phrases.last-good` and
//! `phrases.last-good.old` is a complete copy, and [`candidates`] lists
//! both, in that order: a start serves the first that loads, so a damaged
//! `phrases.last-good` (emptied or edited by hand) falls back on an intact
//! `phrases.last-good.old` (found by review: only the first that existed
//! was tried, and the start refused).
//!
//! A start whose directory lacks a stage library the copy has (removed on
//! purpose, or a stray `rm` that a reload refused, then a restart) replaces
//! the copy but keeps the one before as `phrases.last-good.old`
//! ([`save_keeping_previous`]), so the missing file can be copied back from
//! it; the next save that changes the copy (a good reload of an edit)
//! removes it.

use std::io::Write;
use std::path::{Path, PathBuf};

use tracing::warn;

use crate::phrases::{LoadErrors, LoadedDir, LoadedFile};

/// The copy's directory, in the data directory.
pub const LAST_GOOD_DIR: &str = "phrases.last-good";
const OLD_SUFFIX: &str = ".old";
const TMP_SUFFIX: &str = ".tmp";

fn sibling(data: &Path, suffix: &str) -> PathBuf {
    data.join(format!("{LAST_GOOD_DIR}{suffix}"))
}

/// The last-good copies of data directory `data` that exist, the one to
/// serve first: `phrases.last-good`, then `phrases.last-good.old`.
pub(crate) fn candidates(data: &Path) -> Vec<PathBuf> {
    [data.join(LAST_GOOD_DIR), sibling(data, OLD_SUFFIX)]
        .into_iter()
        .filter(|d| d.is_dir())
        .collect()
}

/// The first of the [`candidates`] that loads, with where it is; when
/// none loads, the first one's problems; `None` without a copy. A
/// `phrases.last-good` that does not load while the `.old` copy does is
/// logged.
pub(crate) fn load(data: &Path) -> Option<Result<(PathBuf, LoadedDir), (PathBuf, LoadErrors)>> {
    let mut first: Option<(PathBuf, LoadErrors)> = None;
    for copy in candidates(data) {
        match LoadedDir::load(&copy) {
            Ok(loaded) => {
                if let Some((bad, errors)) = &first {
                    warn!(
                        copy = %bad.display(),
                        problems = errors.0.len(),
                        "the last good copy of the phrase libraries does not load ({}): using the \
                         copy before it, {}",
                        errors.0.first().map(ToString::to_string).unwrap_or_default(),
                        copy.display()
                    );
                }
                return Some(Ok((copy, loaded)));
            }
            Err(errors) => {
                first.get_or_insert((copy, errors));
            }
        }
    }
    first.map(Err)
}

/// Whether the copy at `dir` holds exactly `files` (nothing to write).
fn holds(dir: &Path, files: &[LoadedFile]) -> bool {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return false;
    };
    let count = rd.filter_map(|e| e.ok()).count();
    count == files.len()
        && files
            .iter()
            .all(|f| std::fs::read(dir.join(&f.name)).is_ok_and(|b| b == f.bytes))
}

/// Makes `files` the last-good copy of data directory `data`.
pub(crate) fn save(data: &Path, files: &[LoadedFile]) -> std::io::Result<()> {
    replace(data, files, false).map(drop)
}

/// [`save`], keeping the copy it replaces as `phrases.last-good.old`
/// (until the next save that changes the copy). Returns where the kept
/// copy is, or `None` when there was nothing to replace.
pub(crate) fn save_keeping_previous(
    data: &Path,
    files: &[LoadedFile],
) -> std::io::Result<Option<PathBuf>> {
    replace(data, files, true)
}

fn replace(data: &Path, files: &[LoadedFile], keep: bool) -> std::io::Result<Option<PathBuf>> {
    let dest = data.join(LAST_GOOD_DIR);
    if dest.is_dir() && holds(&dest, files) {
        return Ok(None);
    }
    let tmp = sibling(data, TMP_SUFFIX);
    let old = sibling(data, OLD_SUFFIX);
    // Leftovers of a save that did not finish.
    remove_dir_if_any(&tmp)?;
    std::fs::create_dir(&tmp)?;
    for f in files {
        let mut out = std::fs::File::create(tmp.join(&f.name))?;
        out.write_all(&f.bytes)?;
        out.sync_all()?;
    }
    sync_dir(&tmp);
    let replaced = dest.is_dir();
    if replaced {
        remove_dir_if_any(&old)?;
        std::fs::rename(&dest, &old)?;
    }
    std::fs::rename(&tmp, &dest)?;
    sync_dir(data);
    if keep && replaced {
        return Ok(Some(old));
    }
    remove_dir_if_any(&old)?;
    Ok(None)
}

fn remove_dir_if_any(dir: &Path) -> std::io::Result<()> {
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Makes a directory's renames durable where the platform allows it.
fn sync_dir(dir: &Path) {
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(name: &str, text: &str) -> LoadedFile {
        LoadedFile {
            name: name.into(),
            stage: None,
            intents: 0,
            bytes: text.as_bytes().to_vec(),
        }
    }

    #[test]
    fn a_save_replaces_the_copy_whole_and_an_old_copy_is_found() {
        let data = tempfile::tempdir().unwrap();
        assert_eq!(candidates(data.path()), Vec::<PathBuf>::new());
        save(data.path(), &[file("a.yaml", "1"), file("b.yaml", "2")]).unwrap();
        let copy = candidates(data.path()).remove(0);
        assert_eq!(copy, data.path().join(LAST_GOOD_DIR));
        save(data.path(), &[file("a.yaml", "3")]).unwrap();
        assert_eq!(std::fs::read_to_string(copy.join("a.yaml")).unwrap(), "3");
        assert!(
            !copy.join("b.yaml").exists(),
            "a file no longer loaded goes"
        );
        assert!(!sibling(data.path(), OLD_SUFFIX).exists());
        assert!(!sibling(data.path(), TMP_SUFFIX).exists());
        // A crash between the two renames leaves only the old copy.
        std::fs::rename(&copy, sibling(data.path(), OLD_SUFFIX)).unwrap();
        assert_eq!(candidates(data.path()), [sibling(data.path(), OLD_SUFFIX)]);
        save(data.path(), &[file("a.yaml", "4")]).unwrap();
        assert_eq!(candidates(data.path()), std::slice::from_ref(&copy));
        assert_eq!(std::fs::read_to_string(copy.join("a.yaml")).unwrap(), "4");
        assert!(!sibling(data.path(), OLD_SUFFIX).exists());
    }

    /// A damaged `phrases.last-good` (emptied by hand) beside an intact
    /// `.old` copy: the `.old` one loads. Before, only the first copy that
    /// existed was tried and the start refused (found by review).
    #[test]
    fn a_damaged_copy_falls_back_on_the_old_one() {
        let data = tempfile::tempdir().unwrap();
        let old = sibling(data.path(), OLD_SUFFIX);
        assert!(load(data.path()).is_none(), "no copy");
        std::fs::create_dir(data.path().join(LAST_GOOD_DIR)).unwrap();
        match load(data.path()) {
            Some(Err((copy, _))) => assert_eq!(copy, data.path().join(LAST_GOOD_DIR)),
            _ => panic!("an empty copy does not load"),
        }
        std::fs::create_dir(&old).unwrap();
        let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/phrases");
        for e in std::fs::read_dir(fixture).unwrap() {
            let p = e.unwrap().path();
            std::fs::copy(&p, old.join(p.file_name().unwrap())).unwrap();
        }
        match load(data.path()) {
            Some(Ok((copy, loaded))) => {
                assert_eq!(copy, old);
                assert!(!loaded.library.intents.is_empty());
            }
            Some(Err((_, e))) => panic!("the old copy does not load: {e}"),
            None => panic!("no copy found"),
        }
    }

    /// A save that keeps the previous copy leaves it as the `.old` copy,
    /// listed after the new one; the next save that changes the copy
    /// removes it, one that changes nothing keeps it.
    #[test]
    fn a_save_keeping_the_previous_copy_lists_both() {
        let data = tempfile::tempdir().unwrap();
        let old = sibling(data.path(), OLD_SUFFIX);
        assert_eq!(
            save_keeping_previous(data.path(), &[file("a.yaml", "1")]).unwrap(),
            None,
            "nothing to keep"
        );
        let kept = save_keeping_previous(data.path(), &[file("b.yaml", "2")]).unwrap();
        assert_eq!(kept, Some(old.clone()));
        assert_eq!(std::fs::read_to_string(old.join("a.yaml")).unwrap(), "1");
        assert_eq!(
            candidates(data.path()),
            [data.path().join(LAST_GOOD_DIR), old.clone()]
        );
        save(data.path(), &[file("b.yaml", "2")]).unwrap();
        assert!(old.is_dir(), "an unchanged copy keeps it");
        save(data.path(), &[file("b.yaml", "3")]).unwrap();
        assert!(!old.exists());
    }
}
