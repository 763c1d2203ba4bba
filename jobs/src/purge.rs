//! Physical removal shared by the jobs that must make data unrecoverable (erasure,
//! anonymisation): the files a commit replaced, files of older versions, and log entries
//! older than a version, after a checkpoint so the table still opens.

use std::path::{Path, PathBuf};

use deltalake::DeltaTable;

use crate::error::{Error, Result};

/// The local file behind a URI delta-rs gives (a `file://` URL or a plain path).
pub fn local_path(uri: &str) -> Option<PathBuf> {
    match url::Url::parse(uri) {
        Ok(u) if u.scheme() == "file" => u.to_file_path().ok(),
        Ok(_) => None,
        Err(_) => Some(PathBuf::from(uri)),
    }
}

/// The files the commit at `version` removed (the ones the delete rewrote).
pub fn replaced_files(root: &Path, version: i64) -> Result<Vec<PathBuf>> {
    let log = root.join("_delta_log").join(format!("{version:020}.json"));
    let text = std::fs::read_to_string(&log).map_err(|e| Error::io(&log, e))?;
    let base = url::Url::from_directory_path(root)
        .map_err(|()| Error::Other(format!("{} is not an absolute path", root.display())))?;
    let mut out = Vec::new();
    for line in text.lines() {
        let action: serde_json::Value = serde_json::from_str(line)
            .map_err(|e| Error::Other(format!("{}: {e}", log.display())))?;
        for kind in ["remove", "cdc"] {
            if let Some(path) = action.get(kind).and_then(|a| a.get("path")?.as_str())
                && let Some(file) = base.join(path).ok().and_then(|u| u.to_file_path().ok())
            {
                out.push(file);
            }
        }
    }
    Ok(out)
}

/// Every file under `root`, going into the directories `descend` accepts.
pub fn files_under(root: &Path, descend: &dyn Fn(&Path) -> bool) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).map_err(|e| Error::io(&dir, e))? {
            let path = entry.map_err(|e| Error::io(&dir, e))?.path();
            if path.is_dir() {
                if descend(&path) {
                    dirs.push(path);
                }
            } else {
                out.push(path);
            }
        }
    }
    Ok(out)
}

/// Every data file of the table (Parquet outside `_delta_log`).
pub fn data_files(root: &Path) -> Result<Vec<PathBuf>> {
    let mut files = files_under(root, &|d| d.file_name().is_some_and(|n| n != "_delta_log"))?;
    files.retain(|f| f.extension().is_some_and(|e| e == "parquet"));
    Ok(files)
}

/// The version a log file belongs to (`00000000000000000012.json`, `….checkpoint.parquet`).
pub fn log_version(file: &Path) -> Option<i64> {
    let name = file.file_name()?.to_str()?;
    let digits = name.get(..20)?;
    digits
        .bytes()
        .all(|b| b.is_ascii_digit())
        .then(|| digits.parse().ok())?
}

/// Remove `files` from storage; the number actually removed.
pub fn remove_files(files: &[PathBuf]) -> Result<u64> {
    let mut n = 0;
    for file in files {
        match std::fs::remove_file(file) {
            Ok(()) => n += 1,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io(file, e)),
        }
    }
    Ok(n)
}

/// Log entries and checkpoints of `root` older than version `before` that `remove` picks.
pub fn old_log_files(
    root: &Path,
    before: i64,
    remove: &mut dyn FnMut(&Path) -> Result<bool>,
) -> Result<Vec<PathBuf>> {
    let dir = root.join("_delta_log");
    let mut out = Vec::new();
    for entry in std::fs::read_dir(&dir).map_err(|e| Error::io(&dir, e))? {
        let path = entry.map_err(|e| Error::io(&dir, e))?.path();
        let Some(v) = log_version(&path) else {
            continue;
        };
        if v < before && path.is_file() && remove(&path)? {
            out.push(path);
        }
    }
    Ok(out)
}

/// Checkpoint the table's version, then remove `old` log files (all older than it).
pub async fn checkpoint_and_remove(name: &str, delta: &DeltaTable, old: &[PathBuf]) -> Result<u64> {
    if old.is_empty() {
        return Ok(0);
    }
    deltalake::protocol::checkpoints::create_checkpoint(delta, None)
        .await
        .map_err(Error::delta(name))?;
    for path in old {
        std::fs::remove_file(path).map_err(|e| Error::io(path, e))?;
    }
    Ok(old.len() as u64)
}
