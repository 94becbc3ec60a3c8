//! Finding and reading manifest files, shared by `validate` and `demo`.

use std::path::{Path, PathBuf};

/// A manifest path that could not be read.
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    #[error("cannot read file")]
    ReadFile { source: std::io::Error },
    #[error("cannot list directory")]
    ListDirectory { source: std::io::Error },
    #[error("cannot read standard input")]
    ReadStdin { source: std::io::Error },
}

/// The files `input` stands for: itself, or every `*.yaml`/`*.yml` below it, in a stable
/// order so output is reproducible.
pub fn expand(input: &Path) -> Vec<Result<PathBuf, (PathBuf, InputError)>> {
    if input != Path::new("-") && input.is_dir() {
        let mut files = Vec::new();
        collect_yaml(input, &mut files);
        files
    } else {
        // A named file is checked whatever its extension: the user asked for it.
        vec![Ok(input.to_path_buf())]
    }
}

fn collect_yaml(dir: &Path, out: &mut Vec<Result<PathBuf, (PathBuf, InputError)>>) {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(source) => {
            out.push(Err((
                dir.to_path_buf(),
                InputError::ListDirectory { source },
            )));
            return;
        }
    };
    let mut entries: Vec<_> = entries.filter_map(Result::ok).collect();
    entries.sort_by_key(|entry| entry.file_name());
    for entry in entries {
        let path = entry.path();
        // Symlinked directories are not followed, so a link cycle cannot recurse forever.
        let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
        if is_dir {
            collect_yaml(&path, out);
        } else if path
            .extension()
            .and_then(|ext| ext.to_str())
            .is_some_and(|ext| ext == "yaml" || ext == "yml")
        {
            out.push(Ok(path));
        }
    }
}
