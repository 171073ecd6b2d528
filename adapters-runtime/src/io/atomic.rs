//! Atomic writes: a file or a folder is written under a hidden name beside its target, which it
//! then replaces by `rename`. An interrupted write leaves the previous target intact (and at worst
//! a hidden `.<name>.*` file or folder beside it).

use crate::error::{AdapterError, Result};
use std::io::Write;
use std::path::{Path, PathBuf};
use tempfile::TempDir;

/// A staging folder next to `target`, removed on drop unless [`Staging::commit`]ted.
#[derive(Debug)]
pub struct Staging {
    dir: TempDir,
    target: PathBuf,
}

/// The folder a path lives in (`.` for a bare name).
pub fn parent_of(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

fn hidden_prefix(target: &Path) -> String {
    let name = target
        .file_name()
        .map_or_else(|| "out".into(), |n| n.to_string_lossy().into_owned());
    format!(".{name}.")
}

impl Staging {
    /// Creates the staging folder beside `target` (its parent folder must exist).
    pub fn new(target: &Path) -> Result<Self> {
        let parent = parent_of(target);
        let dir = tempfile::Builder::new()
            .prefix(&hidden_prefix(target))
            .suffix(".partial")
            .tempdir_in(&parent)
            .map_err(|e| AdapterError::io("creating a staging folder in", &parent, e))?;
        Ok(Staging {
            dir,
            target: target.to_path_buf(),
        })
    }

    /// The staging folder, to write into.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Replaces `target` with the staged folder. With `keep_others`, entries of the previous target
    /// that were not staged (files the user keeps beside the adapter) are moved into the new one.
    pub fn commit(self, keep_others: bool) -> Result<()> {
        let target = self.target.clone();
        let meta = std::fs::symlink_metadata(&target);
        if let Ok(m) = &meta {
            if !m.is_dir() {
                return Err(AdapterError::Output {
                    path: target,
                    reason: "exists and is not a folder".into(),
                });
            }
        }
        if meta.is_err() {
            let staged = self.dir.keep();
            return std::fs::rename(&staged, &target).map_err(|e| {
                let _ = std::fs::remove_dir_all(&staged);
                AdapterError::io("moving the staged folder to", &target, e)
            });
        }
        // rename() may replace an empty folder: park the old target in one, then swap in the new.
        let backup = tempfile::Builder::new()
            .prefix(&hidden_prefix(&target))
            .suffix(".old")
            .tempdir_in(parent_of(&target))
            .map_err(|e| AdapterError::io("creating a backup folder beside", &target, e))?;
        std::fs::rename(&target, backup.path())
            .map_err(|e| AdapterError::io("moving aside", &target, e))?;
        let staged = self.dir.keep();
        if let Err(e) = std::fs::rename(&staged, &target) {
            let _ = std::fs::rename(backup.path(), &target);
            let _ = std::fs::remove_dir_all(&staged);
            return Err(AdapterError::io("moving the staged folder to", &target, e));
        }
        if keep_others {
            if let Err(e) = move_unstaged(backup.path(), &target) {
                // Keep what could not be moved back rather than deleting it.
                let _ = backup.keep();
                return Err(e);
            }
        }
        drop(backup);
        Ok(())
    }
}

/// Moves every entry of `from` that `to` does not have into `to`.
fn move_unstaged(from: &Path, to: &Path) -> Result<()> {
    let entries = std::fs::read_dir(from).map_err(|e| AdapterError::io("listing", from, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| AdapterError::io("listing", from, e))?;
        let dest = to.join(entry.file_name());
        if std::fs::symlink_metadata(&dest).is_err() {
            std::fs::rename(entry.path(), &dest)
                .map_err(|e| AdapterError::io("moving", entry.path(), e))?;
        }
    }
    Ok(())
}

/// A hidden temporary file beside `path` (`.<name>.XXXX.partial`), deleted on drop unless
/// persisted.
pub fn temp_beside(path: &Path) -> Result<tempfile::NamedTempFile> {
    let dir = parent_of(path);
    tempfile::Builder::new()
        .prefix(&hidden_prefix(path))
        .suffix(".partial")
        .tempfile_in(&dir)
        .map_err(|e| AdapterError::io("creating a temporary file in", &dir, e))
}

/// Writes `bytes` to `path` atomically: a hidden temporary file beside it, synced, then renamed.
pub fn write_file_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut tmp = temp_beside(path)?;
    tmp.write_all(bytes)
        .map_err(|e| AdapterError::io("writing", tmp.path().to_path_buf(), e))?;
    tmp.as_file()
        .sync_all()
        .map_err(|e| AdapterError::io("syncing", tmp.path().to_path_buf(), e))?;
    publish_mode(tmp.path())?;
    tmp.persist(path)
        .map_err(|e| AdapterError::io("renaming into", path, e.error))?;
    Ok(())
}

/// Gives a published file the usual `rw-r--r--` mode: files written through a temporary file
/// (`tempfile`, and `safetensors::serialize_to_file`, which uses one) are created private (0600).
pub fn publish_mode(path: &Path) -> Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644))
            .map_err(|e| AdapterError::io("setting permissions of", path, e))?;
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_and_keeps_other_files() {
        let root = tempfile::tempdir().unwrap();
        let target = root.path().join("adapter");
        std::fs::create_dir(&target).unwrap();
        std::fs::write(target.join("a.txt"), "old").unwrap();
        std::fs::write(target.join("notes.md"), "keep").unwrap();
        let s = Staging::new(&target).unwrap();
        std::fs::write(s.path().join("a.txt"), "new").unwrap();
        s.commit(true).unwrap();
        assert_eq!(
            std::fs::read_to_string(target.join("a.txt")).unwrap(),
            "new"
        );
        assert_eq!(
            std::fs::read_to_string(target.join("notes.md")).unwrap(),
            "keep"
        );
        let left: Vec<_> = std::fs::read_dir(root.path()).unwrap().collect();
        assert_eq!(left.len(), 1, "no staging or backup folder remains");
    }

    #[test]
    fn dropped_staging_leaves_target_alone() {
        let root = tempfile::tempdir().unwrap();
        let target = root.path().join("out");
        let s = Staging::new(&target).unwrap();
        std::fs::write(s.path().join("x"), "x").unwrap();
        drop(s);
        assert!(!target.exists());
        assert_eq!(std::fs::read_dir(root.path()).unwrap().count(), 0);
    }
}
