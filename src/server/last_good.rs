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
//! `phrases.last-good.old` is a complete copy, and [`find`] takes the
//! first that exists.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::phrases::LoadedFile;

/// The copy's directory, in the data directory.
pub const LAST_GOOD_DIR: &str = "phrases.last-good";
const OLD_SUFFIX: &str = ".old";
const TMP_SUFFIX: &str = ".tmp";

fn sibling(data: &Path, suffix: &str) -> PathBuf {
    data.join(format!("{LAST_GOOD_DIR}{suffix}"))
}

/// The last-good copy of data directory `data`, if it has one.
pub(crate) fn find(data: &Path) -> Option<PathBuf> {
    [data.join(LAST_GOOD_DIR), sibling(data, OLD_SUFFIX)]
        .into_iter()
        .find(|d| d.is_dir())
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
    let dest = data.join(LAST_GOOD_DIR);
    if dest.is_dir() && holds(&dest, files) {
        return Ok(());
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
    if dest.is_dir() {
        remove_dir_if_any(&old)?;
        std::fs::rename(&dest, &old)?;
    }
    std::fs::rename(&tmp, &dest)?;
    sync_dir(data);
    remove_dir_if_any(&old)?;
    Ok(())
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
        assert_eq!(find(data.path()), None);
        save(data.path(), &[file("a.yaml", "1"), file("b.yaml", "2")]).unwrap();
        let copy = find(data.path()).expect("saved");
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
        assert_eq!(find(data.path()), Some(sibling(data.path(), OLD_SUFFIX)));
        save(data.path(), &[file("a.yaml", "4")]).unwrap();
        assert_eq!(find(data.path()), Some(copy.clone()));
        assert_eq!(std::fs::read_to_string(copy.join("a.yaml")).unwrap(), "4");
        assert!(!sibling(data.path(), OLD_SUFFIX).exists());
    }
}
