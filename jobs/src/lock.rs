//! One run at a time per job and table: a lock file under `<lake>/_sluice/locks`, created
//! exclusively and removed when the run ends. A lock whose process is gone (a crash, a
//! killed pod on the same volume) is taken over.
//!
//! In an object-store lake the lock is an object written with a conditional put (created
//! only if absent, as Delta commits are), holding the holder's host, process and start
//! time; one older than [`LEASE`] (its holder died without releasing it) is taken over.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use object_store::{ObjectStore, ObjectStoreExt as _, PutMode, PutOptions};
use sluice_pipeline::lake::Lake;

use crate::error::{Error, Result};

/// How long an object-store lock is honoured without its holder releasing it.
pub const LEASE: Duration = Duration::from_secs(6 * 3600);

/// A held lock; released on drop.
#[derive(Debug)]
pub struct Lock(Held);

#[derive(Debug)]
enum Held {
    File(PathBuf),
    Object {
        store: Arc<dyn ObjectStore>,
        path: object_store::path::Path,
    },
    Released,
}

impl Lock {
    /// Take the lock `name` of `lake` (local or object store).
    pub async fn acquire_in(lake: &Lake, name: &str) -> Result<Self> {
        let root = match lake {
            Lake::Local(dir) => return Self::acquire_file(dir, name),
            Lake::ObjectStore(root) => root,
        };
        let store = sluice_connectors::delta::table::lake_store(root)?;
        let path = object_store::path::Path::from(format!(
            "_sluice/locks/{}.lock",
            name.replace(['/', '.'], "_")
        ));
        let now = chrono::Utc::now();
        let holder = format!(
            "{}:{} since {}",
            std::env::var("HOSTNAME").unwrap_or_else(|_| "?".into()),
            std::process::id(),
            now.to_rfc3339()
        );
        let object_error = |e: object_store::Error| Error::Other(format!("lock {name}: {e}"));
        for _ in 0..2 {
            let put = store
                .put_opts(
                    &path,
                    holder.clone().into_bytes().into(),
                    object_store_create(),
                )
                .await;
            match put {
                Ok(_) => return Ok(Lock(Held::Object { store, path })),
                Err(object_store::Error::AlreadyExists { .. })
                | Err(object_store::Error::Precondition { .. }) => {
                    let meta = match store.head(&path).await {
                        Ok(m) => m,
                        // Released meanwhile: try again.
                        Err(object_store::Error::NotFound { .. }) => continue,
                        Err(e) => return Err(object_error(e)),
                    };
                    let age = (now - meta.last_modified).to_std().unwrap_or_default();
                    if age < LEASE {
                        let held = match store.get(&path).await {
                            Ok(r) => r
                                .bytes()
                                .await
                                .map(|b| String::from_utf8_lossy(&b).into_owned())
                                .unwrap_or_default(),
                            Err(_) => String::new(),
                        };
                        return Err(Error::Locked {
                            name: name.to_string(),
                            holder: held,
                        });
                    }
                    // The lease ran out: the holder is gone.
                    store.delete(&path).await.map_err(object_error)?;
                }
                Err(e) => return Err(object_error(e)),
            }
        }
        Err(Error::Locked {
            name: name.to_string(),
            holder: "unknown".into(),
        })
    }

    /// Release the lock now, without blocking a thread on an object store.
    pub async fn release(mut self) {
        match std::mem::replace(&mut self.0, Held::Released) {
            Held::Object { store, path } => {
                let _ = store.delete(&path).await;
            }
            Held::File(path) => {
                let _ = std::fs::remove_file(path);
            }
            Held::Released => {}
        }
    }

    /// Take the lock file `name` of the local `lake`, or fail naming the process holding it.
    fn acquire_file(lake: &Path, name: &str) -> Result<Self> {
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
                    return Ok(Lock(Held::File(path)));
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

/// Put only if absent.
fn object_store_create() -> PutOptions {
    PutOptions {
        mode: PutMode::Create,
        ..Default::default()
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        match std::mem::replace(&mut self.0, Held::Released) {
            Held::File(path) => {
                let _ = std::fs::remove_file(path);
            }
            // Dropped on an early return (a failed run): the delete must happen before the
            // process exits, or the next run waits out the lease.
            Held::Object { store, path } => {
                let delete = async move {
                    let _ = store.delete(&path).await;
                };
                match tokio::runtime::Handle::try_current() {
                    Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
                        tokio::task::block_in_place(|| h.block_on(delete));
                    }
                    Ok(h) => {
                        h.spawn(delete);
                    }
                    Err(_) => {}
                }
            }
            Held::Released => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_run_is_refused_while_the_first_holds_the_lock() {
        let lake = tempfile::tempdir().expect("tmp");
        let first = Lock::acquire_file(lake.path(), "maintain.bronze.t").expect("first");
        let second = Lock::acquire_file(lake.path(), "maintain.bronze.t").expect_err("held");
        assert!(second.to_string().contains(&std::process::id().to_string()));
        drop(first);
        Lock::acquire_file(lake.path(), "maintain.bronze.t").expect("released");
        // A lock left by a process that is gone is taken over.
        let dir = crate::runs::locks_dir(lake.path());
        std::fs::write(dir.join("maintain_bronze_t.lock"), "4000000000\n").expect("stale");
        Lock::acquire_file(lake.path(), "maintain.bronze.t").expect("stale lock taken over");
    }
}
