//! One run at a time per job and table, across processes and hosts: a lock object under
//! `<lake>/_sluice/locks` (a file in a local lake), created only if absent — the same
//! conditional put Delta commits rely on.
//!
//! The lock names its holder: a host id (`SLUICE_HOST_ID`, else the machine id, else the
//! host name), the process id and the process's start time (so a recycled process id is
//! not taken for the holder), a random nonce, and a lease expiry. While the run lasts a
//! task renews the lease every [`LEASE`] / 4. A lock is taken over when its holder is
//! known dead (same host, process gone or started at another time) or its lease ran out
//! more than [`SKEW`] ago (another host's clock may be behind ours).
//!
//! Take-over is a conditional delete built from conditional creates, so that of several
//! processes finding the same stale lock exactly one wins: each first creates a marker
//! named after the stale lock's nonce (`<lock>.takeover-<digest>`, create-if-absent: one
//! creator), and only the marker's creator, after checking the lock still carries that
//! nonce, deletes it and creates its own. Markers stay (a few bytes each), so a slow
//! taker that read the same stale lock finds it taken however late it comes.
//!
//! Leases are written and judged by the job's [`Clock`]; only the waiting (for a lock
//! held, between renewals) goes by tokio's timer.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::Duration;

use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt as _, PutMode, PutOptions, UpdateVersion};
use serde::{Deserialize, Serialize};
use sluice_pipeline::lake::Lake;

use crate::JobContext;
use crate::clock::Clock;
use crate::error::{Error, Result};

/// The lock every job rewriting the files of table `name` (erase, maintain, anonymise)
/// holds while it does: such jobs wait for each other. Each also holds a lock of its own
/// (`maintain.<name>`, …), so that two runs of the same job are refused instead.
pub fn table_lock(name: &str) -> String {
    format!("table.{name}")
}

/// How long a lock is honoured without renewal.
pub const LEASE: Duration = Duration::from_secs(120);

/// Allowance for clock differences between hosts before an expired lease counts.
pub const SKEW: Duration = Duration::from_secs(60);

/// How long a lock written by an older version (no lease in it) is honoured, from the
/// time the store last wrote it.
pub const LEGACY_LEASE: Duration = Duration::from_secs(6 * 3600);

/// What a lock object holds.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
struct Holder {
    host: String,
    pid: u32,
    /// The process's start time (clock ticks since boot, from `/proc/<pid>/stat`).
    started: Option<u64>,
    nonce: String,
    acquired_at: String,
    expires_at: String,
}

impl Holder {
    fn describe(&self) -> String {
        format!("{}:{} until {}", self.host, self.pid, self.expires_at)
    }

    fn expires(&self) -> Option<chrono::DateTime<chrono::Utc>> {
        chrono::DateTime::parse_from_rfc3339(&self.expires_at)
            .ok()
            .map(|t| t.with_timezone(&chrono::Utc))
    }

    /// Whether the holder is gone: known dead on this host, or its lease long expired.
    fn is_stale(&self, now: chrono::DateTime<chrono::Utc>) -> bool {
        if self.host == host_id() {
            match process_start(self.pid) {
                None => return true,
                Some(started) if self.started.is_some_and(|s| s != started) => return true,
                Some(_) if self.pid == std::process::id() => {}
                Some(_) => {}
            }
        }
        match self.expires() {
            Some(at) => now > at + chrono::Duration::from_std(SKEW).unwrap_or_default(),
            None => true,
        }
    }
}

/// This host's id in locks: `SLUICE_HOST_ID`, else the machine id, else the host name.
pub fn host_id() -> String {
    if let Ok(id) = std::env::var("SLUICE_HOST_ID")
        && !id.trim().is_empty()
    {
        return id.trim().to_string();
    }
    for f in ["/etc/machine-id", "/proc/sys/kernel/hostname"] {
        if let Ok(id) = std::fs::read_to_string(f)
            && !id.trim().is_empty()
        {
            return id.trim().to_string();
        }
    }
    std::env::var("HOSTNAME").unwrap_or_else(|_| "unknown".into())
}

/// When process `pid` of this host started (clock ticks since boot), if it runs.
fn process_start(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces: fields after its closing parenthesis.
    let rest = stat.rsplit_once(')')?.1;
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// A held lock: renewed while held, released on [`Lock::release`] or drop.
#[derive(Debug)]
pub struct Lock(Option<Held>);

#[derive(Debug)]
struct Held {
    name: String,
    store: Arc<dyn ObjectStore>,
    path: ObjectPath,
    nonce: String,
    renewal: tokio::task::JoinHandle<()>,
    /// Set when another process took the lock over (our lease was not renewed in time).
    lost: Arc<AtomicBool>,
    /// When the lease was last written (microseconds, the job clock): a lease older than
    /// [`LEASE`] may have been taken over before the renewal task noticed.
    renewed: Arc<AtomicI64>,
    clock: Arc<dyn Clock>,
}

fn object_error(name: &str) -> impl FnOnce(object_store::Error) -> Error {
    Error::object_store(format!("lock {name}"))
}

/// Put only if absent.
fn create_only() -> PutOptions {
    PutOptions {
        mode: PutMode::Create,
        ..Default::default()
    }
}

/// Where lock objects live, under the lake's root.
pub const LOCKS: &str = "_sluice/locks";

/// The name of lock `name`'s object (without its extension): names that differ only in
/// dots, slashes and underscores are one lock.
pub fn lock_key(name: &str) -> String {
    name.replace(['/', '.'], "_")
}

/// The lock object `name` of a lake whose root store is `store`.
fn lock_path(name: &str) -> ObjectPath {
    ObjectPath::from(format!("{LOCKS}/{}.lock", lock_key(name)))
}

/// The root store of the context's lake (created when local).
fn store_of(cx: &JobContext, name: &str) -> Result<Arc<dyn ObjectStore>> {
    Ok(match &cx.lake {
        Lake::Local(dir) => {
            std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
            let root = std::path::absolute(dir).map_err(|e| Error::io(dir, e))?;
            let fs = object_store::local::LocalFileSystem::new_with_prefix(&root)
                .map_err(object_error(name))?;
            Arc::new(fs) as Arc<dyn ObjectStore>
        }
        Lake::ObjectStore(root) => sluice_connectors::delta::table::lake_store(root)?,
    })
}

/// The keys ([`lock_key`]) of the locks of the context's lake whose name starts with
/// `prefix`, held now (or left behind by a run that stopped).
pub async fn held_with_prefix(cx: &JobContext, prefix: &str) -> Result<Vec<String>> {
    use futures::TryStreamExt as _;
    let store = store_of(cx, prefix)?;
    let wanted = lock_key(prefix);
    let listed: Vec<object_store::ObjectMeta> = store
        .list(Some(&ObjectPath::from(LOCKS)))
        .try_collect()
        .await
        .map_err(object_error(prefix))?;
    let mut out: Vec<String> = listed
        .iter()
        .filter_map(|m| {
            m.location
                .filename()?
                .strip_suffix(".lock")
                .map(str::to_string)
        })
        .filter(|key| key.starts_with(&wanted))
        .collect();
    out.sort();
    Ok(out)
}

/// What a lock object says, with its store metadata.
struct Found {
    holder: Option<Holder>,
    text: String,
    e_tag: Option<String>,
    version: Option<String>,
    last_modified: chrono::DateTime<chrono::Utc>,
}

async fn read(store: &dyn ObjectStore, path: &ObjectPath, name: &str) -> Result<Option<Found>> {
    let got = match store.get(path).await {
        Ok(g) => g,
        Err(object_store::Error::NotFound { .. }) => return Ok(None),
        Err(e) => return Err(object_error(name)(e)),
    };
    let meta = got.meta.clone();
    let bytes = got.bytes().await.map_err(object_error(name))?;
    let text = String::from_utf8_lossy(&bytes).trim().to_string();
    Ok(Some(Found {
        holder: serde_json::from_str(&text).ok(),
        text,
        e_tag: meta.e_tag,
        version: meta.version,
        last_modified: meta.last_modified,
    }))
}

impl Found {
    fn describe(&self) -> String {
        match &self.holder {
            Some(h) => h.describe(),
            None => self.text.clone(),
        }
    }

    /// Whether the lock's holder is gone.
    fn is_stale(&self, now: chrono::DateTime<chrono::Utc>) -> bool {
        if let Some(h) = &self.holder {
            return h.is_stale(now);
        }
        // Written by an older version: a bare process id (local lakes) …
        if let Ok(pid) = self.text.parse::<u32>() {
            return process_start(pid).is_none();
        }
        // … or `host:pid since …` with a fixed lease from the last write.
        let age = (now - self.last_modified).to_std().unwrap_or_default();
        age >= LEGACY_LEASE
    }

    /// What identifies this lock instance (a lock of an older version: its text and
    /// when it was written).
    fn nonce(&self) -> String {
        self.holder.as_ref().map_or_else(
            || format!("{}@{}", self.text, self.last_modified.to_rfc3339()),
            |h| h.nonce.clone(),
        )
    }
}

/// This process's claim, its lease running from `now`.
fn holder(
    nonce: &str,
    acquired_at: chrono::DateTime<chrono::Utc>,
    now: chrono::DateTime<chrono::Utc>,
) -> Holder {
    Holder {
        host: host_id(),
        pid: std::process::id(),
        started: process_start(std::process::id()),
        nonce: nonce.to_string(),
        acquired_at: acquired_at.to_rfc3339(),
        expires_at: (now + chrono::Duration::from_std(LEASE).unwrap_or_default()).to_rfc3339(),
    }
}

fn test_delay(var: &str) -> Option<Duration> {
    std::env::var(var)
        .ok()?
        .parse()
        .ok()
        .map(Duration::from_millis)
}

impl Lock {
    /// Take the lock `name` of the context's lake (local or object store), or fail naming
    /// its holder.
    pub async fn acquire_in(cx: &JobContext, name: &str) -> Result<Self> {
        let store = store_of(cx, name)?;
        Self::acquire(store, Arc::clone(&cx.clock), name).await
    }

    /// Like [`Lock::acquire_in`], waiting up to `wait` for a run holding it to finish.
    pub async fn acquire_waiting(cx: &JobContext, name: &str, wait: Duration) -> Result<Self> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            match Self::acquire_in(cx, name).await {
                Err(Error::Locked { .. }) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                other => return other,
            }
        }
    }

    async fn acquire(
        store: Arc<dyn ObjectStore>,
        clock: Arc<dyn Clock>,
        name: &str,
    ) -> Result<Self> {
        Self::acquire_renewing(store, clock, name, LEASE / 4).await
    }

    /// Take the lock, renewing its lease every `every` while held.
    async fn acquire_renewing(
        store: Arc<dyn ObjectStore>,
        clock: Arc<dyn Clock>,
        name: &str,
        every: Duration,
    ) -> Result<Self> {
        let path = lock_path(name);
        let mut nonce_bytes = [0u8; 16];
        getrandom::fill(&mut nonce_bytes).map_err(Error::random(format!("lock {name}")))?;
        let nonce = hex::encode(nonce_bytes);
        let acquired_at = clock.now();
        for _ in 0..3 {
            let mine = serde_json::to_vec(&holder(&nonce, acquired_at, clock.now()))
                .map_err(Error::json(format!("lock {name}")))?;
            match store.put_opts(&path, mine.into(), create_only()).await {
                Ok(_) => return Ok(Self::held(store, clock, name, path, nonce, every)),
                Err(object_store::Error::AlreadyExists { .. })
                | Err(object_store::Error::Precondition { .. }) => {}
                Err(e) => return Err(object_error(name)(e)),
            }
            let Some(found) = read(store.as_ref(), &path, name).await? else {
                // Released meanwhile: try again.
                continue;
            };
            if !found.is_stale(clock.now()) {
                return Err(Error::Locked {
                    name: name.to_string(),
                    holder: found.describe(),
                });
            }
            if let Some(d) = test_delay("SLUICE_TEST_LOCK_TAKEOVER_DELAY_MS") {
                tokio::time::sleep(d).await;
            }
            // The holder is gone. One taker only: whoever creates the marker of this
            // lock instance.
            let stale = found.nonce();
            let marker = ObjectPath::from(format!(
                "{path}.takeover-{}",
                hex::encode(sha2_short(stale.as_bytes()))
            ));
            match store
                .put_opts(&marker, nonce.clone().into_bytes().into(), create_only())
                .await
            {
                Ok(_) => {}
                Err(object_store::Error::AlreadyExists { .. })
                | Err(object_store::Error::Precondition { .. }) => {
                    return Err(Error::Locked {
                        name: name.to_string(),
                        holder: format!("{} (being taken over by another run)", found.describe()),
                    });
                }
                Err(e) => return Err(object_error(name)(e)),
            }
            // Still the same stale instance? Then it is ours to delete.
            let again = read(store.as_ref(), &path, name).await?;
            if again.as_ref().is_some_and(|a| a.nonce() == stale) {
                match store.delete(&path).await {
                    Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                    Err(e) => return Err(object_error(name)(e)),
                }
            }
            let mine = serde_json::to_vec(&holder(&nonce, acquired_at, clock.now()))
                .map_err(Error::json(format!("lock {name}")))?;
            // The marker stays: a slower taker that read the same stale lock must still
            // find it taken (markers are a few bytes, one per take-over).
            let created = store.put_opts(&path, mine.into(), create_only()).await;
            match created {
                Ok(_) => return Ok(Self::held(store, clock, name, path, nonce, every)),
                Err(object_store::Error::AlreadyExists { .. })
                | Err(object_store::Error::Precondition { .. }) => {
                    let holder = read(store.as_ref(), &path, name)
                        .await?
                        .map_or_else(|| "unknown".to_string(), |f| f.describe());
                    return Err(Error::Locked {
                        name: name.to_string(),
                        holder,
                    });
                }
                Err(e) => return Err(object_error(name)(e)),
            }
        }
        Err(Error::Locked {
            name: name.to_string(),
            holder: "unknown".into(),
        })
    }

    fn held(
        store: Arc<dyn ObjectStore>,
        clock: Arc<dyn Clock>,
        name: &str,
        path: ObjectPath,
        nonce: String,
        every: Duration,
    ) -> Self {
        let lost = Arc::new(AtomicBool::new(false));
        let renewed = Arc::new(AtomicI64::new(clock.now().timestamp_micros()));
        let renewal = tokio::spawn(renew(
            Arc::clone(&store),
            Arc::clone(&clock),
            name.to_string(),
            path.clone(),
            nonce.clone(),
            (Arc::clone(&lost), Arc::clone(&renewed)),
            every,
        ));
        Lock(Some(Held {
            name: name.to_string(),
            store,
            path,
            nonce,
            renewal,
            lost,
            renewed,
            clock,
        }))
    }

    /// `Err` when another process took any of `locks` over while this run held it, or
    /// may have (a lease not renewed for longer than it lasts: the run stalled, or the
    /// store refused the renewals), so that `what` (a table, a step) stops before
    /// changing anything more.
    pub fn all_held(locks: &[&Lock], what: &str) -> Result<()> {
        let expired = |l: &Lock| {
            l.0.as_ref().is_some_and(|h| {
                let age = h.clock.now().timestamp_micros() - h.renewed.load(Ordering::Relaxed);
                age > LEASE.as_micros() as i64
            })
        };
        if locks.iter().any(|l| l.lost() || expired(l)) {
            return Err(crate::Error::LockLost {
                what: what.to_string(),
            });
        }
        Ok(())
    }

    /// Whether another process took the lock over while this run held it.
    pub fn lost(&self) -> bool {
        self.0
            .as_ref()
            .is_some_and(|h| h.lost.load(Ordering::Relaxed))
    }

    /// Release the lock now (if it is still ours).
    pub async fn release(mut self) {
        if let Some(held) = self.0.take() {
            release(held).await;
        }
    }
}

async fn release(held: Held) {
    held.renewal.abort();
    if let Ok(Some(found)) = read(held.store.as_ref(), &held.path, &held.name).await
        && found.nonce() == held.nonce
    {
        let _ = held.store.delete(&held.path).await;
    }
}

/// A short digest naming a take-over marker.
fn sha2_short(bytes: &[u8]) -> [u8; 8] {
    use sha2::Digest as _;
    let d = sha2::Sha256::digest(bytes);
    let mut out = [0u8; 8];
    out.copy_from_slice(&d[..8]);
    out
}

/// Renew the lease every quarter of it while the lock is ours.
async fn renew(
    store: Arc<dyn ObjectStore>,
    clock: Arc<dyn Clock>,
    name: String,
    path: ObjectPath,
    nonce: String,
    (lost, renewed): (Arc<AtomicBool>, Arc<AtomicI64>),
    every: Duration,
) {
    let acquired_at = clock.now();
    loop {
        tokio::time::sleep(every).await;
        let Ok(Some(found)) = read(store.as_ref(), &path, &name).await else {
            lost.store(true, Ordering::Relaxed);
            tracing::error!(lock = %name, "lock lost: it is gone from the store");
            return;
        };
        if found.nonce() != nonce {
            lost.store(true, Ordering::Relaxed);
            tracing::error!(lock = %name, holder = %found.describe(), "lock lost: taken over by another run");
            return;
        }
        let written = clock.now();
        let Ok(body) = serde_json::to_vec(&holder(&nonce, acquired_at, written)) else {
            return;
        };
        // Replace only the version read, where the store can; otherwise overwrite.
        let update = PutOptions {
            mode: PutMode::Update(UpdateVersion {
                e_tag: found.e_tag.clone(),
                version: found.version.clone(),
            }),
            ..Default::default()
        };
        let stored = match store.put_opts(&path, body.clone().into(), update).await {
            Ok(_) => true,
            Err(object_store::Error::NotImplemented { .. }) => {
                store.put(&path, body.into()).await.is_ok()
            }
            Err(e) => {
                tracing::warn!(lock = %name, error = %e, "lock lease not renewed");
                false
            }
        };
        if stored {
            renewed.store(written.timestamp_micros(), Ordering::Relaxed);
        }
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        let Some(held) = self.0.take() else {
            return;
        };
        // Dropped on an early return (a failed run): the delete must happen before the
        // process exits, or the next run waits out the lease.
        held.renewal.abort();
        match tokio::runtime::Handle::try_current() {
            Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
                tokio::task::block_in_place(|| h.block_on(release(held)));
            }
            Ok(h) => {
                h.spawn(release(held));
            }
            Err(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A lake in a temporary directory, with the system's clock.
    fn lake() -> (tempfile::TempDir, JobContext) {
        let dir = tempfile::tempdir().expect("tmp");
        let cx = JobContext::with_system_clock(dir.path());
        (dir, cx)
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_second_run_is_refused_while_the_first_holds_the_lock() {
        let (dir, lake) = lake();
        let first = Lock::acquire_in(&lake, "maintain.bronze.t")
            .await
            .expect("first");
        let second = Lock::acquire_in(&lake, "maintain.bronze.t")
            .await
            .expect_err("held");
        assert!(
            second.to_string().contains(&std::process::id().to_string()),
            "{second}"
        );
        first.release().await;
        Lock::acquire_in(&lake, "maintain.bronze.t")
            .await
            .expect("released")
            .release()
            .await;
        // A lock left by a process that is gone (written by an older version: a bare
        // process id) is taken over.
        let locks = crate::runs::locks_dir(dir.path());
        std::fs::write(locks.join("maintain_bronze_t.lock"), "4000000000\n").expect("stale");
        Lock::acquire_in(&lake, "maintain.bronze.t")
            .await
            .expect("stale lock taken over");
    }

    fn planted(host: &str, pid: u32, expires_in: chrono::Duration) -> String {
        serde_json::to_string(&Holder {
            host: host.into(),
            pid,
            started: Some(1),
            nonce: "n1".into(),
            acquired_at: chrono::Utc::now().to_rfc3339(),
            expires_at: (chrono::Utc::now() + expires_in).to_rfc3339(),
        })
        .expect("json")
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn another_hosts_lock_holds_until_its_lease_and_the_skew_margin_run_out() {
        let (dir, lake) = lake();
        let locks = crate::runs::locks_dir(dir.path());
        std::fs::create_dir_all(&locks).expect("dir");
        let at = locks.join("erase_silver_c.lock");
        // Its process id means nothing here: another host.
        std::fs::write(&at, planted("elsewhere", 1, chrono::Duration::seconds(30))).expect("w");
        let e = Lock::acquire_in(&lake, "erase.silver.c")
            .await
            .expect_err("live lease");
        assert!(e.to_string().contains("elsewhere:1"), "{e}");
        // Expired, but within the skew margin: still honoured.
        std::fs::write(&at, planted("elsewhere", 1, chrono::Duration::seconds(-10))).expect("w");
        Lock::acquire_in(&lake, "erase.silver.c")
            .await
            .expect_err("inside the margin");
        // Long expired: taken over.
        std::fs::write(
            &at,
            planted("elsewhere", 1, chrono::Duration::seconds(-600)),
        )
        .expect("w");
        let l = Lock::acquire_in(&lake, "erase.silver.c")
            .await
            .expect("taken over");
        let text = std::fs::read_to_string(&at).expect("read");
        assert!(text.contains(&host_id()), "{text}");
        l.release().await;
        assert!(!at.exists());
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_lease_runs_out_by_the_jobs_clock() {
        let dir = tempfile::tempdir().expect("tmp");
        let start = chrono::DateTime::parse_from_rfc3339("2031-05-04T10:00:00Z")
            .expect("time")
            .with_timezone(&chrono::Utc);
        let clock = Arc::new(crate::clock::TestClock::at(start));
        let cx = JobContext::new(dir.path(), Arc::clone(&clock) as Arc<dyn Clock>);
        let at = crate::runs::locks_dir(dir.path()).join("maintain_silver_c.lock");
        let expiry = start + chrono::Duration::from_std(LEASE).expect("lease");
        let skew = chrono::Duration::from_std(SKEW).expect("skew");
        // A lock taken at the clock's time holds a lease from the clock's time, not the
        // system's.
        let lock = Lock::acquire_in(&cx, "maintain.silver.c")
            .await
            .expect("first");
        let mut held: Holder =
            serde_json::from_str(&std::fs::read_to_string(&at).expect("read")).expect("json");
        assert_eq!(held.expires(), Some(expiry));
        lock.release().await;
        // The same lease, left behind by a host that stopped.
        held.host = "elsewhere".into();
        std::fs::write(&at, serde_json::to_string(&held).expect("json")).expect("w");
        // Before its expiry, and within the skew margin after it, the lock holds.
        for now in [start, expiry, expiry + skew] {
            clock.set(now);
            let e = Lock::acquire_in(&cx, "maintain.silver.c")
                .await
                .expect_err("held");
            assert!(e.to_string().contains("elsewhere"), "{e}");
        }
        // Past the margin by the clock (no time passed on the system's), it is taken over.
        clock.set(expiry + skew + chrono::Duration::seconds(1));
        let taken = Lock::acquire_in(&cx, "maintain.silver.c")
            .await
            .expect("taken over");
        let text = std::fs::read_to_string(&at).expect("read");
        assert!(text.contains(&host_id()), "{text}");
        taken.release().await;
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_dead_process_of_this_host_loses_its_lock_at_once() {
        let (dir, here) = lake();
        let locks = crate::runs::locks_dir(dir.path());
        std::fs::create_dir_all(&locks).expect("dir");
        let at = locks.join("gold_x.lock");
        // This host, a live lease, but no such process.
        std::fs::write(
            &at,
            planted(&host_id(), 4_000_000_000, chrono::Duration::hours(1)),
        )
        .expect("w");
        Lock::acquire_in(&here, "gold.x").await.expect("taken over");
        // This host, this process id, but another start time: a recycled id.
        let (dir2, lake2) = lake();
        let locks = crate::runs::locks_dir(dir2.path());
        std::fs::create_dir_all(&locks).expect("dir");
        std::fs::write(
            locks.join("gold_x.lock"),
            planted(&host_id(), std::process::id(), chrono::Duration::hours(1)),
        )
        .expect("w");
        Lock::acquire_in(&lake2, "gold.x")
            .await
            .expect("a recycled process id is not the holder");
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn of_many_takers_of_one_stale_lock_exactly_one_wins() {
        let (dir, lake) = lake();
        let locks = crate::runs::locks_dir(dir.path());
        std::fs::create_dir_all(&locks).expect("dir");
        std::fs::write(
            locks.join("maintain_t.lock"),
            planted("gone", 7, chrono::Duration::hours(-1)),
        )
        .expect("w");
        let takers: Vec<_> = (0..8)
            .map(|_| {
                let lake = lake.clone();
                tokio::spawn(async move { Lock::acquire_in(&lake, "maintain.t").await })
            })
            .collect();
        let mut won = Vec::new();
        for t in takers {
            if let Ok(l) = t.await.expect("join") {
                won.push(l);
            }
        }
        assert_eq!(won.len(), 1, "exactly one taker wins");
    }

    /// A run that stalled past its lease may have lost the lock before its renewal task
    /// could notice: its next deleting step is refused all the same.
    #[tokio::test(flavor = "multi_thread")]
    async fn a_lease_older_than_it_lasts_stops_the_next_step() {
        let dir = tempfile::tempdir().expect("tmp");
        let fs = object_store::local::LocalFileSystem::new_with_prefix(dir.path()).expect("fs");
        let clock = Arc::new(crate::clock::TestClock::at(chrono::Utc::now()));
        let l = Lock::acquire_renewing(
            Arc::new(fs) as Arc<dyn ObjectStore>,
            Arc::clone(&clock) as Arc<dyn Clock>,
            "erase.t",
            Duration::from_secs(3600),
        )
        .await
        .expect("lock");
        clock.advance(chrono::Duration::seconds(100));
        Lock::all_held(&[&l], "erasure of t").expect("within the lease");
        clock.advance(chrono::Duration::seconds(30));
        assert!(!l.lost(), "the renewal task has not looked yet");
        let e = Lock::all_held(&[&l], "erasure of t").expect_err("past the lease");
        assert!(matches!(e, Error::LockLost { .. }), "{e}");
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn the_lease_is_renewed_while_held_and_a_lock_taken_over_is_left_alone() {
        let dir = tempfile::tempdir().expect("tmp");
        let fs = object_store::local::LocalFileSystem::new_with_prefix(dir.path()).expect("fs");
        let store = Arc::new(fs) as Arc<dyn ObjectStore>;
        let at = crate::runs::locks_dir(dir.path()).join("snapshot_t.lock");
        let expiry = || -> Holder {
            serde_json::from_str(&std::fs::read_to_string(&at).expect("read")).expect("json")
        };
        let l = Lock::acquire_renewing(
            Arc::clone(&store),
            Arc::new(crate::clock::SystemClock),
            "snapshot.t",
            Duration::from_millis(50),
        )
        .await
        .expect("lock");
        let first = expiry();
        tokio::time::sleep(Duration::from_millis(1200)).await;
        let later = expiry();
        assert_eq!(later.nonce, first.nonce);
        assert!(
            later.expires_at > first.expires_at,
            "{later:?} after {first:?}"
        );
        assert!(!l.lost());
        Lock::all_held(&[&l], "the step").expect("held");
        // Another run took it over (this one stalled past its lease): noticed, the job's
        // next step refused, and the lock not deleted on release.
        std::fs::write(&at, planted("other", 9, chrono::Duration::hours(1))).expect("w");
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(l.lost());
        let stopped = Lock::all_held(&[&Lock(None), &l], "maintenance of t").expect_err("lost");
        assert!(
            matches!(&stopped, Error::LockLost { what } if what == "maintenance of t"),
            "{stopped}"
        );
        l.release().await;
        assert!(
            std::fs::read_to_string(&at)
                .expect("kept")
                .contains("other")
        );
    }
}
