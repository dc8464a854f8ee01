//! The restart snapshot's file: where it lives (`pending.snapshot` in the
//! data directory), reading it at start, writing it at a graceful shutdown
//! (a temporary file, fsynced, renamed over, the directory fsynced), and
//! deleting it once loaded so that a later crash never brings back stale
//! state. The content and its sealing are the engine's
//! (`watchword_engine::snapshot`).
//!
//! This module must never start on a snapshot it could not open unless the
//! operator said so (`--discard-snapshot`), and never log a key or any of the
//! snapshot's content.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use watchword_engine::Engine;
use watchword_engine::secret::MasterKey;
use watchword_engine::snapshot::Reader;

use crate::config::Config;

/// The snapshot's file name inside the data directory.
pub const FILE_NAME: &str = "pending.snapshot";

/// The largest snapshot read: 20 million challenges with long texts.
const MAX_BYTES: u64 = 16 << 30;

/// Where `cfg` keeps its snapshot; `None` when it keeps none (no data
/// directory, or `storage.snapshot = false`).
pub fn path(cfg: &Config) -> Option<PathBuf> {
    let st = &cfg.storage;
    (st.snapshot && !st.path.as_os_str().is_empty()).then(|| st.path.join(FILE_NAME))
}

/// Reads and opens the snapshot at `path`, if there is one. With `discard`,
/// an existing snapshot is deleted unread. An unreadable, foreign or
/// tampered one is an error that tells the operator what to do.
pub fn load(path: &Path, key: &MasterKey, discard: bool) -> Result<Option<Reader>, String> {
    let meta = match fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("restart snapshot {}: {e}", path.display())),
    };
    if discard {
        remove(path)?;
        tracing::warn!(
            path = %path.display(),
            "--discard-snapshot: the restart snapshot was deleted unread; the challenges pending before the restart are lost"
        );
        return Ok(None);
    }
    if meta.len() > MAX_BYTES {
        return Err(refusal(
            path,
            &format!("is {} bytes, above the {MAX_BYTES} read", meta.len()),
        ));
    }
    let started = Instant::now();
    let bytes = fs::read(path).map_err(|e| refusal(path, &e.to_string()))?;
    let reader = Reader::open(bytes, key).map_err(|e| refusal(path, &e.to_string()))?;
    tracing::debug!(
        ms = started.elapsed().as_millis() as u64,
        "restart snapshot opened"
    );
    Ok(Some(reader))
}

fn refusal(path: &Path, why: &str) -> String {
    format!(
        "restart snapshot {}: {why}. Start with `watchword serve --discard-snapshot` to delete it \
         and start without the challenges it holds (people typing a code must then ask for a new one)",
        path.display()
    )
}

/// Deletes the snapshot (after it was loaded) and makes the deletion durable.
pub fn remove(path: &Path) -> Result<(), String> {
    fs::remove_file(path)
        .map_err(|e| format!("restart snapshot {}: cannot delete: {e}", path.display()))?;
    sync_dir(path);
    Ok(())
}

fn sync_dir(path: &Path) {
    if let Some(dir) = path.parent()
        && let Ok(d) = File::open(dir)
    {
        let _ = d.sync_all();
    }
}

/// Writes `engine`'s snapshot to `path` durably: a temporary file beside it,
/// fsynced, renamed over `path`, the directory fsynced. Blocking.
pub fn write(engine: &Engine, key: &MasterKey, path: &Path) -> Result<(), String> {
    let started = Instant::now();
    let file = engine.snapshot(key);
    let tmp = path.with_extension("snapshot.tmp");
    let written = (|| -> std::io::Result<()> {
        let mut options = OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let mut f = options.open(&tmp)?;
        f.write_all(&file.bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(format!("restart snapshot {}: {e}", path.display()));
    }
    sync_dir(path);
    tracing::info!(
        path = %path.display(),
        challenges = file.challenges,
        limiter_keys = file.limiter_keys,
        bytes = file.bytes.len(),
        ms = started.elapsed().as_millis() as u64,
        "restart snapshot written"
    );
    Ok(())
}
