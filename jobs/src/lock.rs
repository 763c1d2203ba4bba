//! One run at a time per job and table: a lock file under `<lake>/_sluice/locks`, created
//! exclusively and removed when the run ends. A lock whose process is gone (a crash, a
//! killed pod on the same volume) is taken over.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// A held lock; released on drop.
#[derive(Debug)]
pub struct Lock {
    path: PathBuf,
}

impl Lock {
    /// Take the lock `name` of `lake`, or fail naming the process holding it.
    pub fn acquire(lake: &Path, name: &str) -> Result<Self> {
        let dir = crate::runs::locks_dir(lake);
        std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        let path = dir.join(format!("{}.lock", name.replace(['/', '.'], "_")));
        for _ in 0..2 {
            match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)
            {
                Ok(mut f) => {
                    writeln!(f, "{}", std::process::id()).map_err(|e| Error::io(&path, e))?;
                    return Ok(Self { path });
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    let holder = std::fs::read_to_string(&path).unwrap_or_default();
                    let pid = holder.trim().parse::<u32>().ok();
                    let alive = pid.is_some_and(|p| Path::new(&format!("/proc/{p}")).exists());
                    if alive {
                        return Err(Error::Locked {
                            name: name.to_string(),
                            holder: holder.trim().to_string(),
                        });
                    }
                    // The holder is gone: take the lock over.
                    let _ = std::fs::remove_file(&path);
                }
                Err(e) => return Err(Error::io(&path, e)),
            }
        }
        Err(Error::Locked {
            name: name.to_string(),
            holder: "unknown".into(),
        })
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_run_is_refused_while_the_first_holds_the_lock() {
        let lake = tempfile::tempdir().expect("tmp");
        let first = Lock::acquire(lake.path(), "maintain.bronze.t").expect("first");
        let second = Lock::acquire(lake.path(), "maintain.bronze.t").expect_err("held");
        assert!(second.to_string().contains(&std::process::id().to_string()));
        drop(first);
        Lock::acquire(lake.path(), "maintain.bronze.t").expect("released");
        // A lock left by a process that is gone is taken over.
        let dir = crate::runs::locks_dir(lake.path());
        std::fs::write(dir.join("maintain_bronze_t.lock"), "4000000000\n").expect("stale");
        Lock::acquire(lake.path(), "maintain.bronze.t").expect("stale lock taken over");
    }
}
