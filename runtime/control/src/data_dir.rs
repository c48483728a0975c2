//! The data directory is private to the user that runs wasmscore: it holds
//! the endpoints' keys and token signing secrets (in the SQLite database and
//! its WAL), the admin token, the TLS key and the model files.
//!
//! New files get 600 and directories 700 because the binary sets its umask
//! to 077 before it writes anything (so SQLite's WAL and SHM, the compile
//! cache and blobs are covered whatever creates them). A directory left by
//! an older wasmscore, or made by hand with wider permissions, is tightened
//! here once at start, with a log line saying what was changed.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use crate::ControlError;

/// Group and world bits: none may be set on anything under the data directory.
const SHARED_BITS: u32 = 0o077;

/// Creates `dir` (700) if missing; otherwise takes the group and world bits
/// off it and off everything under it. Returns how many entries it changed.
pub fn make_private(dir: &Path) -> Result<usize, ControlError> {
    let io = |p: &Path, e: std::io::Error| ControlError::Store(format!("{}: {e}", p.display()));
    if !dir.exists() {
        std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(|e| io(dir, e))?;
        return Ok(0);
    }
    let mut changed = 0;
    // The directory itself may be a link to where the data lives: follow
    // that one (links inside it are not followed).
    let root = std::fs::canonicalize(dir).map_err(|e| io(dir, e))?;
    tighten(&root, &mut changed).map_err(|e| io(dir, e))?;
    if changed > 0 {
        tracing::warn!(
            dir = %dir.display(),
            changed,
            "the data directory was readable by other users; removed group and world permissions"
        );
    }
    Ok(changed)
}

fn tighten(path: &Path, changed: &mut usize) -> std::io::Result<()> {
    // symlink_metadata: a link is not followed out of the data directory.
    let meta = std::fs::symlink_metadata(path)?;
    if meta.file_type().is_symlink() {
        return Ok(());
    }
    let mode = meta.permissions().mode();
    if mode & SHARED_BITS != 0 {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode & 0o7700))?;
        *changed += 1;
    }
    if meta.is_dir() {
        for entry in std::fs::read_dir(path)? {
            tighten(&entry?.path(), changed)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(p: &Path) -> u32 {
        std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn an_open_directory_and_its_files_are_tightened() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("data");
        std::fs::create_dir_all(dir.join("blobs")).unwrap();
        std::fs::write(dir.join("state.db"), b"x").unwrap();
        std::fs::write(dir.join("blobs/abc"), b"x").unwrap();
        std::fs::write(dir.join("admin.token"), b"x").unwrap();
        for (p, m) in [
            ("", 0o755),
            ("blobs", 0o775),
            ("state.db", 0o644),
            ("blobs/abc", 0o666),
            ("admin.token", 0o600),
        ] {
            std::fs::set_permissions(dir.join(p), std::fs::Permissions::from_mode(m)).unwrap();
        }
        // A link pointing out of the directory is left alone, and so is its target.
        let outside = root.path().join("outside");
        std::fs::write(&outside, b"x").unwrap();
        std::fs::set_permissions(&outside, std::fs::Permissions::from_mode(0o644)).unwrap();
        std::os::unix::fs::symlink(&outside, dir.join("link")).unwrap();

        assert_eq!(make_private(&dir).unwrap(), 4);
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&dir.join("blobs")), 0o700);
        assert_eq!(mode(&dir.join("state.db")), 0o600);
        assert_eq!(mode(&dir.join("blobs/abc")), 0o600);
        assert_eq!(mode(&dir.join("admin.token")), 0o600);
        assert_eq!(mode(&outside), 0o644);
        // Nothing left to change the second time.
        assert_eq!(make_private(&dir).unwrap(), 0);
    }
}
