//! [`RunnerLock`]: at most one runner per database file. The lock is an OS file lock on
//! `<db>.lock`, so it is released when the holder drops it or its process dies for any reason,
//! and a rerun after `kill -9` takes it at once. The holder's pid is written into the file so a
//! second runner can say who holds it.

use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, Write};
use std::path::{Path, PathBuf};

/// Why the lock could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another runner holds it.
    #[error("another taskexec runner ({}) holds {}; stop it or use another database", holder(*pid), path.display())]
    Held {
        /// The lock file.
        path: PathBuf,
        /// The holder's pid, when it has written it.
        pid: Option<u32>,
    },
    /// The lock file could not be opened or written.
    #[error("cannot use lock file {}", path.display())]
    Io {
        /// The lock file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

fn holder(pid: Option<u32>) -> String {
    pid.map_or_else(|| "pid unknown".to_owned(), |pid| format!("pid {pid}"))
}

/// An exclusive claim on a database file for one runner, held until dropped.
#[derive(Debug)]
pub struct RunnerLock {
    // Held for its lock; closing the file releases it.
    _file: File,
    path: PathBuf,
}

impl RunnerLock {
    /// Take the lock of the database at `db_path` (the file `<db_path>.lock`), writing this
    /// process's pid into it.
    ///
    /// # Errors
    /// [`LockError::Held`] when another runner holds it, naming the lock file and its pid.
    pub fn acquire(db_path: impl AsRef<Path>) -> Result<Self, LockError> {
        let path = lock_path(db_path.as_ref());
        let io_error = |source| LockError::Io { path: path.clone(), source };
        // Not truncated on open: the holder's pid must survive a failed attempt.
        let mut file =
            OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&path).map_err(io_error)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => return Err(LockError::Held { pid: read_pid(&mut file), path }),
            Err(std::fs::TryLockError::Error(e)) => return Err(io_error(e)),
        }
        write_pid(&mut file).map_err(io_error)?;
        Ok(Self { _file: file, path })
    }

    /// The lock file.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// `<db_path>.lock`.
fn lock_path(db_path: &Path) -> PathBuf {
    let mut name = OsString::from(db_path.as_os_str());
    name.push(".lock");
    PathBuf::from(name)
}

fn read_pid(file: &mut File) -> Option<u32> {
    let mut text = String::new();
    file.read_to_string(&mut text).ok()?;
    text.trim().parse().ok()
}

fn write_pid(file: &mut File) -> io::Result<()> {
    file.set_len(0)?;
    file.rewind()?;
    writeln!(file, "{}", std::process::id())?;
    file.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_acquire_fails_while_held_and_succeeds_after_drop() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("tasks.db");
        let first = RunnerLock::acquire(&db).unwrap();
        assert_eq!(first.path(), dir.path().join("tasks.db.lock"));

        let err = RunnerLock::acquire(&db).unwrap_err();
        let LockError::Held { path, pid } = &err else { panic!("expected Held, got {err:?}") };
        assert_eq!((path.as_path(), *pid), (first.path(), Some(std::process::id())));
        let message = err.to_string();
        assert!(
            message.contains("tasks.db.lock") && message.contains(&format!("pid {}", std::process::id())),
            "{message}"
        );

        drop(first);
        let again = RunnerLock::acquire(&db).unwrap();
        let written = std::fs::read_to_string(again.path()).unwrap();
        assert_eq!(written.trim(), std::process::id().to_string());
    }

    #[test]
    fn unusable_location_is_an_io_error() {
        let dir = tempfile::tempdir().unwrap();
        let err = RunnerLock::acquire(dir.path().join("missing/tasks.db")).unwrap_err();
        assert!(matches!(err, LockError::Io { .. }), "{err:?}");
        assert!(std::error::Error::source(&err).is_some());
    }
}
