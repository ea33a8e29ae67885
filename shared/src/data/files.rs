//! What the loaders of the binary releases ([`super::cifar10`], [`super::cifar100`],
//! [`super::stl10`]) share: finding the release's folder, and opening its files with errors
//! that name the folder or file and say how to fix it (which flag or key sets the folder,
//! where to download the release).

use std::fs::File;
use std::path::{Path, PathBuf};

use anyhow::{bail, Result};

/// One binary release: its name in messages, the folder its archive unpacks to and where to
/// get it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Release {
    /// The dataset's name in messages (`"CIFAR-100"`).
    pub name: &'static str,
    /// The folder the archive unpacks to (`"cifar-100-binary"`).
    pub inner: &'static str,
    /// The archive's official address.
    pub url: &'static str,
}

impl Release {
    /// How to point a run at the release.
    fn hint(&self) -> String {
        format!(
            "pass the folder holding {} with --data-dir (coordinator) or --data (client), or set \
             data.path; get it from {} (the binary version)",
            self.inner, self.url
        )
    }

    /// The release's folder: `dir/<inner>` if that is a folder, else `dir` itself.
    pub fn resolve(&self, dir: &Path) -> PathBuf {
        let inner = dir.join(self.inner);
        if inner.is_dir() {
            inner
        } else {
            dir.to_path_buf()
        }
    }

    /// Errors unless `root` is a folder: it does not exist, is a file, or is a dangling
    /// symbolic link (named with its target); the message says how to fix it.
    pub fn check_folder(&self, root: &Path) -> Result<()> {
        if root.is_dir() {
            return Ok(());
        }
        let what = if root.exists() {
            "is not a folder".to_string()
        } else if let Some(target) = dangling_link_target(root) {
            format!(
                "is a dangling symbolic link (its target {} does not exist)",
                target.display()
            )
        } else {
            "does not exist".to_string()
        };
        bail!(
            "{} folder {} {what}: {}",
            self.name,
            root.display(),
            self.hint()
        );
    }

    /// Opens the release's file `path`, returning it with its size in bytes. Errors, naming
    /// the file: it does not exist (with [`Self::check_folder`]'s hint), is a dangling
    /// symbolic link (named with its target), or cannot be read.
    pub fn open(&self, path: &Path) -> Result<(File, u64)> {
        let opened = File::open(path).and_then(|f| {
            let len = f.metadata()?.len();
            Ok((f, len))
        });
        let e = match opened {
            Ok(ok) => return Ok(ok),
            Err(e) => e,
        };
        if let Some(target) = dangling_link_target(path) {
            bail!(
                "{} file {} is a dangling symbolic link: its target {} does not exist",
                self.name,
                path.display(),
                target.display()
            );
        }
        if e.kind() == std::io::ErrorKind::NotFound {
            bail!(
                "{} file {} does not exist: {}",
                self.name,
                path.display(),
                self.hint()
            );
        }
        Err(anyhow::Error::new(e).context(format!(
            "cannot read {} file {}",
            self.name,
            path.display()
        )))
    }

    /// The whole of the release's file `path` (errors as [`Self::open`]'s).
    pub fn read(&self, path: &Path) -> Result<Vec<u8>> {
        use std::io::Read;
        let (mut f, len) = self.open(path)?;
        let mut bytes = Vec::with_capacity(len as usize);
        f.read_to_end(&mut bytes).map_err(|e| {
            anyhow::Error::new(e).context(format!(
                "cannot read {} file {}",
                self.name,
                path.display()
            ))
        })?;
        Ok(bytes)
    }

    /// The class names listed one per line in the optional file `path` (blank lines
    /// ignored), or `defaults` when it is absent. Errors, naming the file, when it cannot be
    /// read or does not list `defaults.len()` names.
    pub fn class_names(&self, path: &Path, defaults: &[&str]) -> Result<Vec<String>> {
        if !path.exists() {
            return Ok(defaults.iter().map(|s| s.to_string()).collect());
        }
        let text = std::fs::read_to_string(path).map_err(|e| {
            anyhow::Error::new(e).context(format!("cannot read {}", path.display()))
        })?;
        let names: Vec<String> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(String::from)
            .collect();
        if names.len() != defaults.len() {
            bail!(
                "{} lists {} class names, expected {}",
                path.display(),
                names.len(),
                defaults.len()
            );
        }
        Ok(names)
    }
}

/// The target of `path` when `path` is a symbolic link whose target does not exist (the
/// target as the link holds it, relative to the link's folder if relative).
pub(crate) fn dangling_link_target(path: &Path) -> Option<PathBuf> {
    let is_link = std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink());
    if !is_link || path.exists() {
        return None;
    }
    std::fs::read_link(path).ok()
}
