//! Files autosign creates hold personal data: they are created owner-only
//! (0600), and exports are written atomically (temp file, fsync, rename) so
//! an auditor never reads half a file. An export also gets a SHA-256 of its
//! content in a sidecar file (`PATH.sha256`, in `sha256sum` format), so a
//! copy handed to an auditor can be checked with `sha256sum -c`.
//!
//! Inputs that should be regular files (feed files, the configuration, the
//! service-center table) are checked to be one before they are read, so
//! that a path to a device or a pipe (`/dev/zero`) fails at once instead of
//! reading forever; small ones are read with a size limit.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// Creates (or truncates) `path` readable and writable by the owner only.
pub fn create_private(path: &Path) -> Result<File> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::io(format!("cannot create {}", dir.display()), e))?;
    }
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let file = opts
        .open(path)
        .map_err(|e| Error::io(format!("cannot create {}", path.display()), e))?;
    // `mode` applies only when the file is new: an existing one keeps its
    // mode unless narrowed here. Only a regular file: `--rejects /dev/null`
    // must not change the device.
    #[cfg(unix)]
    if file.metadata().is_ok_and(|m| m.is_file()) {
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(std::fs::Permissions::from_mode(0o600))
            .map_err(|e| Error::io(format!("cannot restrict {} to 0600", path.display()), e))?;
    }
    Ok(file)
}

/// Why `path` cannot be read as a regular file (missing, a directory, a
/// device, a pipe…), if it cannot.
pub fn not_regular(path: &Path) -> Option<String> {
    match std::fs::metadata(path) {
        Err(e) => Some(format!("cannot read: {e}")),
        Ok(_) => special_file(path),
    }
}

/// `not a regular file (a device)` when `path` exists (through links) and
/// is something other than a regular file; `None` for a regular file or
/// one that cannot be looked at (the caller's read reports that).
pub fn special_file(path: &Path) -> Option<String> {
    match std::fs::metadata(path) {
        Ok(m) if !m.is_file() => Some(format!(
            "not a regular file ({})",
            file_kind(&m.file_type())
        )),
        _ => None,
    }
}

fn file_kind(t: &std::fs::FileType) -> &'static str {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if t.is_char_device() || t.is_block_device() {
            return "a device";
        }
        if t.is_fifo() {
            return "a pipe";
        }
        if t.is_socket() {
            return "a socket";
        }
    }
    if t.is_dir() {
        "a directory"
    } else if t.is_symlink() {
        "a symbolic link"
    } else {
        "not a file"
    }
}

/// Reads a regular file of at most `max` bytes as UTF-8 text. The error is
/// the reason alone; the caller names the file and the setting.
pub fn read_regular_text(path: &Path, max: u64) -> std::result::Result<String, String> {
    let bytes = read_regular(path, max)?;
    String::from_utf8(bytes).map_err(|e| format!("not UTF-8 text: {e}"))
}

/// Reads a regular file of at most `max` bytes (a CA certificate, a
/// configuration). The error is the reason alone.
pub fn read_regular(path: &Path, max: u64) -> std::result::Result<Vec<u8>, String> {
    use std::io::Read;
    if let Some(why) = not_regular(path) {
        return Err(why);
    }
    let file = File::open(path).map_err(|e| format!("cannot read: {e}"))?;
    let mut bytes = Vec::new();
    file.take(max + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read: {e}"))?;
    if bytes.len() as u64 > max {
        return Err(format!("larger than {max} bytes; is it the right file?"));
    }
    Ok(bytes)
}

/// A file written under a temporary name and renamed into place on
/// [`AtomicFile::commit`]; dropped uncommitted, it is removed.
pub struct AtomicFile {
    file: Option<File>,
    tmp: PathBuf,
    dest: PathBuf,
    /// The digest of everything written so far.
    digest: Sha256,
}

impl AtomicFile {
    /// Starts a file that will replace `dest`. `dest` must be missing or a
    /// regular file: the rename would replace a symbolic link or a device
    /// (`--out /dev/full`) with a regular file, which is refused (exit 2).
    /// Temp files of earlier writers of `dest` that died (killed mid-export)
    /// are removed first: they hold personal data nobody will commit.
    pub fn create(dest: &Path) -> Result<Self> {
        match std::fs::symlink_metadata(dest) {
            Ok(m) if !m.is_file() => {
                return Err(Error::Refused(format!(
                    "{}: {}; an export replaces a regular file only (give a new path, or - \
                     for standard output)",
                    dest.display(),
                    file_kind(&m.file_type())
                )))
            }
            _ => {}
        }
        remove_stale_temps(dest);
        let mut name = dest
            .file_name()
            .map(|n| n.to_os_string())
            .unwrap_or_default();
        name.push(format!(".tmp-{}", std::process::id()));
        let tmp = dest.with_file_name(name);
        let file = create_private(&tmp)?;
        Ok(AtomicFile {
            file: Some(file),
            tmp,
            dest: dest.to_path_buf(),
            digest: Sha256::new(),
        })
    }

    /// Moves the file into place.
    pub fn commit(mut self) -> Result<()> {
        self.sync()?;
        self.rename()
    }

    /// Moves the file into place beside its sidecar `DEST.sha256` (see
    /// [`sidecar_path`]). The sidecar goes first: a crash between the two
    /// renames leaves a digest that does not match the file there, which
    /// `sha256sum -c` reports, never a stale digest that matches.
    pub fn commit_with_sidecar(mut self) -> Result<PathBuf> {
        self.sync()?;
        let hex = hex::encode(std::mem::take(&mut self.digest).finalize());
        let name = self
            .dest
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let sidecar_path = sidecar_path(&self.dest);
        let mut sidecar = AtomicFile::create(&sidecar_path)?;
        sidecar
            .write_all(format!("{hex}  {name}\n").as_bytes())
            .map_err(|e| Error::io(format!("cannot write {}", sidecar.tmp.display()), e))?;
        sidecar.commit()?;
        self.rename()?;
        Ok(sidecar_path)
    }

    fn sync(&mut self) -> Result<()> {
        if let Some(file) = self.file.take() {
            file.sync_all()
                .map_err(|e| Error::io(format!("cannot write {}", self.tmp.display()), e))?;
        }
        Ok(())
    }

    fn rename(&self) -> Result<()> {
        std::fs::rename(&self.tmp, &self.dest).map_err(|e| {
            Error::io(
                format!("cannot move export into {}", self.dest.display()),
                e,
            )
        })
    }
}

/// Removes `DEST.tmp-PID` files beside `dest` whose process is gone. A
/// live writer's temp file (another export to the same path in progress)
/// is left alone; so is any file whose suffix is not a PID.
fn remove_stale_temps(dest: &Path) {
    let Some(name) = dest.file_name().and_then(|n| n.to_str()) else {
        return;
    };
    let dir = match dest.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let prefix = format!("{name}.tmp-");
    for entry in entries.flatten() {
        let file_name = entry.file_name();
        let Some(pid) = file_name
            .to_str()
            .and_then(|n| n.strip_prefix(&prefix))
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if pid != std::process::id() && !process_alive(pid) {
            match std::fs::remove_file(entry.path()) {
                Ok(()) => tracing::warn!(
                    file = %entry.path().display(),
                    "removed the temp file of an export that did not finish"
                ),
                Err(e) => tracing::warn!(
                    file = %entry.path().display(),
                    "cannot remove the temp file of an export that did not finish: {e}"
                ),
            }
        }
    }
}

/// Whether a process with this id exists. Where that cannot be told, it is
/// assumed alive (its temp file stays).
fn process_alive(pid: u32) -> bool {
    if cfg!(target_os = "linux") {
        Path::new("/proc").join(pid.to_string()).exists()
    } else {
        true
    }
}

/// Where the SHA-256 of an export at `dest` is written: `DEST.sha256`.
pub fn sidecar_path(dest: &Path) -> PathBuf {
    let mut name = dest
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(".sha256");
    dest.with_file_name(name)
}

impl Write for AtomicFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self.file.as_mut() {
            Some(f) => {
                let n = f.write(buf)?;
                self.digest.update(&buf[..n]);
                Ok(n)
            }
            None => Err(std::io::Error::other("file already committed")),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self.file.as_mut() {
            Some(f) => f.flush(),
            None => Ok(()),
        }
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        if self.file.is_some() {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(unix)]
    #[test]
    fn an_existing_file_is_narrowed_to_owner_only_when_rewritten() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("rejects.csv");
        std::fs::write(&p, "old").expect("write");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        drop(create_private(&p).expect("create"));
        let mode = std::fs::metadata(&p).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(std::fs::read(&p).expect("read"), b"");
    }

    #[test]
    fn a_small_regular_file_is_read_and_a_directory_or_big_file_is_not() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("c.toml");
        std::fs::write(&p, "a = 1\n").expect("write");
        assert_eq!(read_regular_text(&p, 100).expect("read"), "a = 1\n");
        let err = read_regular_text(&p, 3).unwrap_err();
        assert!(err.contains("larger than 3 bytes"), "{err}");
        let err = read_regular_text(dir.path(), 100).unwrap_err();
        assert_eq!(err, "not a regular file (a directory)");
        assert!(read_regular_text(&dir.path().join("missing"), 100)
            .unwrap_err()
            .starts_with("cannot read"));
    }

    #[test]
    fn the_sidecar_holds_the_sha256_of_the_committed_content_in_sha256sum_format() {
        let dir = tempfile::tempdir().expect("tempdir");
        let dest = dir.path().join("audit.csv");
        let mut f = AtomicFile::create(&dest).expect("create");
        f.write_all(b"run_id,as_of\n").expect("write");
        f.write_all(b"1,2026-11-27\n").expect("write");
        let sidecar = f.commit_with_sidecar().expect("commit");
        assert_eq!(sidecar, dir.path().join("audit.csv.sha256"));
        let content = std::fs::read(&dest).expect("read");
        let want = hex::encode(Sha256::digest(&content));
        assert_eq!(
            std::fs::read_to_string(&sidecar).expect("read sidecar"),
            format!("{want}  audit.csv\n")
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&sidecar)
                .expect("meta")
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let leftovers: Vec<_> = std::fs::read_dir(dir.path())
            .expect("ls")
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().contains(".tmp-"))
            .collect();
        assert!(leftovers.is_empty(), "temp files left: {leftovers:?}");
    }
}
