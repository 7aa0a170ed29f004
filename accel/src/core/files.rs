//! The files a model loads, confined to its model directory. Model files, their ONNX external data
//! and anything a later format names are untrusted input: each is resolved inside the model's
//! directory after following symbolic links (a link that stays inside is followed; one that leaves,
//! or dangles, is refused), must be a regular file (no devices, FIFOs or directories), and is read no
//! further than the size it had when it was opened, so a growing file or a `/proc` file cannot make
//! a load read without end. Errors name the file relative to the model's directory, never a host
//! path, and say the same thing whether a path outside the directory exists or not.

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use thiserror::Error;

/// Why a model's file cannot be read. The messages never contain a host path.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum FileError {
    /// The path as given, or "an absolute path" (a client-visible message never repeats one).
    #[error("{0} is not a relative path inside the model's directory")]
    NotRelative(String),
    #[error("'{0}' is not a regular file inside the model's directory")]
    NotInside(String),
    #[error("the model's directory cannot be read: {0}")]
    Directory(String),
    #[error("'{file}': {reason}")]
    Io { file: String, reason: String },
    #[error("'{file}' has {size} bytes, more than the {limit} allowed")]
    TooLarge { file: String, size: u64, limit: u64 },
    #[error("'{file}': bytes {offset}..{end} are outside its {size} bytes")]
    Range {
        file: String,
        offset: u64,
        end: u64,
        size: u64,
    },
}

/// A model's directory: the root nothing it loads may leave. The directory itself may be a symbolic
/// link (the repository's layout is the operator's); what it contains is confined to its target.
#[derive(Debug, Clone)]
pub struct ModelDir {
    root: Arc<Path>,
}

impl ModelDir {
    /// The directory at `dir`, resolved.
    pub fn open(dir: &Path) -> Result<ModelDir, FileError> {
        let root = std::fs::canonicalize(dir).map_err(|e| FileError::Directory(e.kind().to_string()))?;
        if !root.is_dir() {
            return Err(FileError::Directory("not a directory".into()));
        }
        Ok(ModelDir { root: root.into() })
    }

    /// The resolved directory (for logs and for engines that open files themselves, never for
    /// messages a client sees).
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The regular file at `relative` (a path inside the directory), or `None` when nothing at all
    /// is there. Anything else there — a link leading out, a device, a directory — is an error.
    pub fn lookup(&self, relative: &str) -> Result<Option<ModelFile>, FileError> {
        let rel = plain_relative(relative)?;
        match std::fs::symlink_metadata(self.root.join(rel)) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            _ => self.resolve(&self.root, rel, relative).map(Some),
        }
    }

    /// The regular file at `relative`, which must exist.
    pub fn file(&self, relative: &str) -> Result<ModelFile, FileError> {
        let rel = plain_relative(relative)?;
        self.resolve(&self.root, rel, relative)
    }

    /// `rel` under `base` (a resolved directory inside the root), resolved and checked.
    fn resolve(&self, base: &Path, rel: &Path, shown: &str) -> Result<ModelFile, FileError> {
        let shown = match base.strip_prefix(&self.root) {
            Ok(prefix) if !prefix.as_os_str().is_empty() => format!("{}/{shown}", prefix.display()),
            _ => shown.to_string(),
        };
        let not_inside = || FileError::NotInside(shown.clone());
        // A missing target and a target outside read alike: nothing is said about paths outside.
        let path = std::fs::canonicalize(base.join(rel)).map_err(|_| not_inside())?;
        if !path.starts_with(&self.root) {
            return Err(not_inside());
        }
        match std::fs::metadata(&path) {
            Ok(m) if m.is_file() => Ok(ModelFile {
                root: self.clone(),
                path,
                shown,
            }),
            _ => Err(not_inside()),
        }
    }

    /// Every regular file directly in `dir` (a resolved directory inside the root) that resolves
    /// inside the root, with its size.
    fn regular_files(&self, dir: &Path) -> Vec<(ModelFile, u64)> {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return Vec::new();
        };
        entries
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                let file = self.resolve(dir, Path::new(&name), &name).ok()?;
                let size = std::fs::metadata(&file.path).ok()?.len();
                Some((file, size))
            })
            .collect()
    }
}

/// A regular file inside a model's directory, resolved.
#[derive(Debug, Clone)]
pub struct ModelFile {
    root: ModelDir,
    path: PathBuf,
    /// The path relative to the model's directory, for messages.
    shown: String,
}

impl ModelFile {
    /// A file given directly (a command-line tool's argument), confined to its own directory.
    pub fn standalone(path: &Path) -> Result<ModelFile, FileError> {
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| FileError::NotRelative(shown_path(&path.display().to_string())))?;
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        ModelDir::open(dir)?.file(name)
    }

    /// The resolved path (for engines that open files themselves and for logs; never for messages a
    /// client sees).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The file's path relative to its model's directory.
    pub fn shown(&self) -> &str {
        &self.shown
    }

    /// `message` (an engine's, say) with the host path of the model's directory taken out: files
    /// inside it are named relative to it, as every other message here names them.
    pub fn scrub(&self, message: &str) -> String {
        let root = self.root.root.to_string_lossy();
        message
            .replace(&format!("{root}/"), "")
            .replace(&*root, "the model's directory")
    }

    /// The file `relative` to this file's directory (how ONNX names external data), confined to the
    /// same model directory.
    pub fn sibling(&self, relative: &str) -> Result<ModelFile, FileError> {
        let rel = plain_relative(relative)?;
        let base = self.path.parent().unwrap_or(&self.root.root);
        self.root.resolve(base, rel, relative)
    }

    /// The file `relative` to this file's directory if anything is there (`None` when nothing at
    /// all is); anything there that is not a regular file inside the model's directory is an error.
    pub fn sibling_if_any(&self, relative: &str) -> Result<Option<ModelFile>, FileError> {
        let rel = plain_relative(relative)?;
        let base = self.path.parent().unwrap_or(&self.root.root);
        match std::fs::symlink_metadata(base.join(rel)) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            _ => self.root.resolve(base, rel, relative).map(Some),
        }
    }

    /// The model directory this file belongs to.
    pub fn model_dir(&self) -> &ModelDir {
        &self.root
    }

    /// Bytes of the regular files in this file's directory that resolve inside the model's
    /// directory (what a load is expected to hold before it is measured).
    pub fn directory_size(&self) -> u64 {
        let base = self.path.parent().unwrap_or(&self.root.root);
        self.root.regular_files(base).iter().map(|(_, size)| size).sum()
    }

    fn io(&self, e: std::io::Error) -> FileError {
        FileError::Io {
            file: self.shown.clone(),
            reason: e.kind().to_string(),
        }
    }

    /// Opens the file without following a link swapped in since it was resolved and without
    /// blocking on a FIFO, and checks that what was opened is a regular file. Returns its size now.
    fn open(&self) -> Result<(File, u64), FileError> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(&self.path)
            .map_err(|e| self.io(e))?;
        let meta = file.metadata().map_err(|e| self.io(e))?;
        if !meta.is_file() {
            return Err(FileError::NotInside(self.shown.clone()));
        }
        Ok((file, meta.len()))
    }

    /// The whole file, refused when it has more than `limit` bytes.
    pub fn read(&self, limit: u64) -> Result<Vec<u8>, FileError> {
        let (file, size) = self.open()?;
        if size > limit {
            return Err(FileError::TooLarge {
                file: self.shown.clone(),
                size,
                limit,
            });
        }
        let mut data = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
        file.take(size).read_to_end(&mut data).map_err(|e| self.io(e))?;
        Ok(data)
    }

    /// The whole file as UTF-8 text, refused when it has more than `limit` bytes.
    pub fn read_to_string(&self, limit: u64) -> Result<String, FileError> {
        String::from_utf8(self.read(limit)?).map_err(|_| FileError::Io {
            file: self.shown.clone(),
            reason: "not UTF-8 text".into(),
        })
    }

    /// `length` bytes from `offset` (to the end of the file when `None`), checked against the size
    /// the file has when it is opened.
    pub fn read_range(&self, offset: u64, length: Option<u64>) -> Result<Vec<u8>, FileError> {
        let (file, size) = self.open()?;
        let len = self.range(offset, length, size)?;
        let mut data = vec![0u8; len];
        file.read_exact_at(&mut data, offset).map_err(|e| self.io(e))?;
        Ok(data)
    }

    /// Checks that `length` bytes from `offset` (to the end when `None`) are inside the file, as
    /// [`ModelFile::read_range`] would, without reading them.
    pub fn check_range(&self, offset: u64, length: Option<u64>) -> Result<(), FileError> {
        let (_, size) = self.open()?;
        self.range(offset, length, size).map(drop)
    }

    /// The byte count of the range `offset..offset + length` (or `offset..size`) of a file of
    /// `size` bytes, or why it is not inside it.
    fn range(&self, offset: u64, length: Option<u64>, size: u64) -> Result<usize, FileError> {
        let end = match length {
            Some(l) => offset.checked_add(l),
            None => Some(size),
        };
        let range_error = |end: u64| FileError::Range {
            file: self.shown.clone(),
            offset,
            end,
            size,
        };
        let end = end.ok_or_else(|| range_error(u64::MAX))?;
        if offset > end || end > size {
            return Err(range_error(end));
        }
        usize::try_from(end - offset).map_err(|_| range_error(end))
    }
}

/// A path a model names, for a message: quoted, unless it is absolute (a host path is never
/// repeated to a client, not even its own).
pub fn shown_path(path: &str) -> String {
    if path.starts_with('/') {
        "an absolute path".to_string()
    } else {
        format!("'{}'", path.escape_debug())
    }
}

/// `relative` as a path of plain components (no root, no `..`, no `.`, not empty).
fn plain_relative(relative: &str) -> Result<&Path, FileError> {
    let path = Path::new(relative);
    let plain = !relative.is_empty()
        && !relative.contains('\0')
        && path.components().all(|c| matches!(c, Component::Normal(_)));
    if plain {
        Ok(path)
    } else {
        Err(FileError::NotRelative(shown_path(relative)))
    }
}

/// Whether `name` is a plain file name (one path component), as `default_model_filename` must be.
pub fn is_file_name(name: &str) -> bool {
    plain_relative(name).is_ok_and(|p| p.components().count() == 1) && !name.contains('\\')
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use super::*;

    fn setup() -> (tempfile::TempDir, ModelDir) {
        let tmp = tempfile::tempdir().unwrap();
        let model = tmp.path().join("repo").join("m");
        std::fs::create_dir_all(model.join("1")).unwrap();
        std::fs::write(model.join("1").join("model.onnx"), b"inside").unwrap();
        std::fs::write(tmp.path().join("secret"), b"outside").unwrap();
        let dir = ModelDir::open(&model).unwrap();
        (tmp, dir)
    }

    #[test]
    fn files_inside_are_read_and_links_inside_are_followed() {
        let (_tmp, dir) = setup();
        let f = dir.file("1/model.onnx").unwrap();
        assert_eq!(f.read(100).unwrap(), b"inside");
        assert_eq!(f.shown(), "1/model.onnx");
        symlink("model.onnx", dir.root().join("1").join("alias.onnx")).unwrap();
        assert_eq!(dir.file("1/alias.onnx").unwrap().read(100).unwrap(), b"inside");
        assert_eq!(f.sibling("alias.onnx").unwrap().read_range(1, Some(3)).unwrap(), b"nsi");
        assert_eq!(f.read_range(2, None).unwrap(), b"side");
        assert!(matches!(f.read(3), Err(FileError::TooLarge { size: 6, .. })));
        assert!(matches!(f.read_range(4, Some(3)), Err(FileError::Range { .. })));
        assert!(matches!(f.read_range(u64::MAX, Some(3)), Err(FileError::Range { .. })));
        assert!(f.check_range(2, Some(4)).is_ok() && f.check_range(0, None).is_ok());
        assert!(matches!(f.check_range(4, Some(3)), Err(FileError::Range { .. })));
    }

    #[test]
    fn nothing_outside_is_reachable_and_errors_do_not_tell_what_exists() {
        let (tmp, dir) = setup();
        let v = dir.root().join("1");
        symlink(tmp.path().join("secret"), v.join("out.onnx")).unwrap();
        symlink(tmp.path().join("missing"), v.join("dangling.onnx")).unwrap();
        symlink("/dev/zero", v.join("zero.bin")).unwrap();
        symlink(tmp.path(), v.join("up")).unwrap();
        std::fs::create_dir(v.join("subdir")).unwrap();
        let out = dir.file("1/out.onnx").unwrap_err();
        let dangling = dir.file("1/dangling.onnx").unwrap_err();
        assert_eq!(
            out.to_string().replace("out", "x"),
            dangling.to_string().replace("dangling", "x")
        );
        assert!(!out.to_string().contains(tmp.path().to_str().unwrap()));
        for bad in ["1/zero.bin", "1/up/secret", "1/subdir", "1/nothing"] {
            assert!(matches!(dir.file(bad), Err(FileError::NotInside(_))), "{bad}");
        }
        for bad in [
            "/etc/passwd",
            "../secret",
            "1/../../secret",
            "",
            "./1/model.onnx",
            "a\0b",
        ] {
            assert!(matches!(dir.file(bad), Err(FileError::NotRelative(_))), "{bad:?}");
        }
        assert!(!dir.file("/etc/passwd").unwrap_err().to_string().contains("/etc"));
        let f = dir.file("1/model.onnx").unwrap();
        assert!(f.sibling("../../secret").is_err());
        assert!(f.sibling("out.onnx").is_err());
        assert!(dir.lookup("1/missing.onnx").unwrap().is_none());
        assert!(dir.lookup("1/out.onnx").is_err());
        assert!(dir.lookup("1/dangling.onnx").is_err());
        // Only the file inside counts towards the directory's size.
        assert_eq!(f.directory_size(), 6);
        let root = dir.root().display().to_string();
        assert_eq!(
            f.scrub(&format!("bad path {root}/1/w.bin in {root}")),
            "bad path 1/w.bin in the model's directory"
        );
    }

    #[test]
    fn proc_files_read_no_further_than_their_size() {
        let dir = ModelDir::open(Path::new("/proc/self")).unwrap();
        // /proc files report a size of 0: nothing is read.
        assert_eq!(dir.file("status").unwrap().read(1 << 20).unwrap(), b"");
    }

    #[test]
    fn file_names() {
        assert!(is_file_name("model.onnx"));
        for bad in ["", "a/b", "../x", "/x", ".", "..", "a\\b"] {
            assert!(!is_file_name(bad), "{bad:?}");
        }
    }
}
