//! Atomic writes: a file or a folder is written under a hidden name beside its target,
//! `.<name>.XXXXXX.partial`, which then replaces the target by `rename`. An interrupted write
//! leaves the previous target intact and at worst that hidden file or folder beside it. A writer
//! holds an exclusive lock on its `.partial` while it works, so the next write of the same target
//! removes the partials that no live writer holds (left by a killed run) and nothing else.

use crate::error::{AdapterError, Result};
use std::io::Write;
use std::path::{Path, PathBuf};
use tempfile::TempDir;

/// A staging folder next to `target`, removed on drop unless [`Staging::commit`]ted.
#[derive(Debug)]
pub struct Staging {
    dir: TempDir,
    target: PathBuf,
    /// The folder opened and locked while staging (see the module docs).
    _lock: std::fs::File,
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

/// Removes the `.<name>.*.partial` files and folders beside `target` that no live writer holds
/// (a writer keeps an exclusive lock on its partial), e.g. those left by a killed run. Anything
/// else is left alone; a partial that cannot be examined or removed is skipped.
pub fn remove_stale_partials(target: &Path) {
    let parent = parent_of(target);
    let prefix = hidden_prefix(target);
    let Ok(entries) = std::fs::read_dir(&parent) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !(name.starts_with(&prefix) && name.ends_with(".partial")) {
            continue;
        }
        let path = entry.path();
        let Ok(kind) = entry.file_type() else {
            continue;
        };
        if kind.is_symlink() {
            continue;
        }
        let Ok(file) = std::fs::File::open(&path) else {
            continue;
        };
        if file.try_lock().is_err() {
            continue; // a live writer holds it
        }
        let _ = if kind.is_dir() {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
    }
}

/// Opens `path` (a file or a folder) and takes an exclusive lock on it.
fn lock(path: &Path) -> Result<std::fs::File> {
    let file = std::fs::File::open(path).map_err(|e| AdapterError::io("opening", path, e))?;
    file.lock()
        .map_err(|e| AdapterError::io("locking", path, e))?;
    Ok(file)
}

impl Staging {
    /// Creates the staging folder beside `target` (its parent folder must exist), after removing
    /// stale partials of earlier, killed writes of `target`.
    pub fn new(target: &Path) -> Result<Self> {
        let parent = parent_of(target);
        remove_stale_partials(target);
        let dir = tempfile::Builder::new()
            .prefix(&hidden_prefix(target))
            .suffix(".partial")
            .tempdir_in(&parent)
            .map_err(|e| AdapterError::io("creating a staging folder in", &parent, e))?;
        let lock = lock(dir.path())?;
        Ok(Staging {
            dir,
            target: target.to_path_buf(),
            _lock: lock,
        })
    }

    /// The staging folder, to write into.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Replaces `target` with the staged folder. With `keep_others`, entries of the previous target
    /// that were not staged (files the user keeps beside the adapter) are linked into the new one
    /// before it goes live.
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
        if keep_others {
            // Into the staged folder before it goes live, so the published folder has them from
            // the first instant (moving them over afterwards lost them to a kill in between).
            link_unstaged(&target, self.dir.path())?;
        }
        #[cfg(target_os = "linux")]
        match exchange(self.dir.path(), &target) {
            // The staging path now holds the previous folder; dropping `self` removes it (a kill
            // first leaves it as an unlocked `.partial`, removed by the next write).
            Ok(()) => return Ok(()),
            // A filesystem without RENAME_EXCHANGE: two renames below.
            Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL | libc::ENOSYS)) => {}
            Err(e) => {
                return Err(AdapterError::io(
                    "swapping the staged folder with",
                    &target,
                    e,
                ))
            }
        }
        // rename() may replace an empty folder: park the old target in one, then swap in the new.
        // (A kill between the two renames leaves the previous folder only in the `.old` one.)
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
        // The staged folder already had the kept entries (`link_unstaged` above).
        drop(backup);
        Ok(())
    }
}

/// Swaps two paths atomically (`renameat2` with `RENAME_EXCHANGE`): at every instant `b` is
/// either the old or the new folder, never missing.
#[cfg(target_os = "linux")]
fn exchange(a: &Path, b: &Path) -> std::io::Result<()> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let ca = CString::new(a.as_os_str().as_bytes())?;
    let cb = CString::new(b.as_os_str().as_bytes())?;
    // SAFETY: two valid NUL-terminated paths; the syscall only reads them.
    let r = unsafe {
        libc::syscall(
            libc::SYS_renameat2,
            libc::AT_FDCWD,
            ca.as_ptr(),
            libc::AT_FDCWD,
            cb.as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Gives `to` every entry of `from` that it lacks, as hard links (copies where linking fails);
/// folders are recreated and filled the same way, symlinks recreated.
fn link_unstaged(from: &Path, to: &Path) -> Result<()> {
    let entries = std::fs::read_dir(from).map_err(|e| AdapterError::io("listing", from, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| AdapterError::io("listing", from, e))?;
        let src = entry.path();
        let dest = to.join(entry.file_name());
        if std::fs::symlink_metadata(&dest).is_ok() {
            continue;
        }
        let kind = entry
            .file_type()
            .map_err(|e| AdapterError::io("examining", &src, e))?;
        if kind.is_dir() {
            std::fs::create_dir(&dest).map_err(|e| AdapterError::io("creating", &dest, e))?;
            link_unstaged(&src, &dest)?;
        } else if kind.is_symlink() {
            #[cfg(unix)]
            {
                let link =
                    std::fs::read_link(&src).map_err(|e| AdapterError::io("reading", &src, e))?;
                std::os::unix::fs::symlink(link, &dest)
                    .map_err(|e| AdapterError::io("creating", &dest, e))?;
            }
        } else if std::fs::hard_link(&src, &dest).is_err() {
            std::fs::copy(&src, &dest).map_err(|e| AdapterError::io("copying", &src, e))?;
        }
    }
    Ok(())
}

/// A hidden temporary file beside `path` (`.<name>.XXXXXX.partial`), locked while it lives and
/// deleted on drop unless persisted; stale partials of `path` are removed first.
pub fn temp_beside(path: &Path) -> Result<tempfile::NamedTempFile> {
    let dir = parent_of(path);
    remove_stale_partials(path);
    let tmp = tempfile::Builder::new()
        .prefix(&hidden_prefix(path))
        .suffix(".partial")
        .tempfile_in(&dir)
        .map_err(|e| AdapterError::io("creating a temporary file in", &dir, e))?;
    tmp.as_file()
        .lock()
        .map_err(|e| AdapterError::io("locking", tmp.path().to_path_buf(), e))?;
    Ok(tmp)
}

/// Writes `bytes` to `path` atomically: a hidden temporary file beside it, synced, then renamed.
pub fn write_file_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut tmp = temp_beside(path)?;
    tmp.write_all(bytes)
        .map_err(|e| AdapterError::io("writing", tmp.path().to_path_buf(), e))?;
    publish(tmp, path)
}

/// Publishes a completely written temporary file from [`temp_beside`] as `path`: synced, given
/// the usual mode, renamed over `path`. On error nothing is published and the temporary goes.
pub fn publish(tmp: tempfile::NamedTempFile, path: &Path) -> Result<()> {
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
    fn stale_partials_are_removed_and_live_ones_kept() {
        let root = tempfile::tempdir().unwrap();
        let target = root.path().join("out.safetensors");
        let stale_file = root.path().join(".out.safetensors.abc123.partial");
        let stale_dir = root.path().join(".out.safetensors.def456.partial");
        let other = root.path().join(".other.safetensors.abc123.partial");
        let backup = root.path().join(".out.safetensors.ghi789.old");
        std::fs::write(&stale_file, "killed").unwrap();
        std::fs::create_dir(&stale_dir).unwrap();
        std::fs::write(stale_dir.join("x"), "killed").unwrap();
        std::fs::write(&other, "not ours").unwrap();
        std::fs::create_dir(&backup).unwrap();
        // A live writer of the same target.
        let live = temp_beside(&target).unwrap();
        write_file_atomic(&target, b"new").unwrap();
        assert!(
            !stale_file.exists() && !stale_dir.exists(),
            "stale partials removed"
        );
        assert!(live.path().exists(), "a live writer's partial is kept");
        assert!(other.exists() && backup.exists(), "nothing else is touched");
        assert_eq!(std::fs::read(&target).unwrap(), b"new");
        drop(live);
        // A staging folder locks itself too.
        let staged = Staging::new(&root.path().join("adapter")).unwrap();
        remove_stale_partials(&root.path().join("adapter"));
        assert!(staged.path().exists(), "a live staging folder is kept");
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
