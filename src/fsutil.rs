//! Files autosign creates hold personal data: they are created owner-only
//! (0600), and exports are written atomically (temp file, fsync, rename) so
//! an auditor never reads half a file. An export also gets a SHA-256 of its
//! content in a sidecar file (`PATH.sha256`, in `sha256sum` format), so a
//! copy handed to an auditor can be checked with `sha256sum -c`.

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
    opts.open(path)
        .map_err(|e| Error::io(format!("cannot create {}", path.display()), e))
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
    pub fn create(dest: &Path) -> Result<Self> {
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
