//! Finding and reading manifest files, shared by `validate`, `submit` and `demo`, and
//! saying where one is broken without repeating what it says.

use std::path::{Path, PathBuf};

/// Where a YAML document is broken, and why — never the text found there: manifests hold
/// passwords and Secrets hold keys, and these messages go to CI logs others read. The YAML
/// parser's own rendering quotes the offending lines, and serde's messages quote offending
/// values (`invalid type: string "…"`), so only a reason that quotes nothing is kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct YamlProblem {
    pub line: Option<usize>,
    pub column: Option<usize>,
    pub reason: String,
}

impl YamlProblem {
    pub fn of(err: &serde_saphyr::Error) -> YamlProblem {
        use serde_saphyr::MessageFormatter;
        let location = err.location();
        let message = serde_saphyr::UserMessageFormatter.format_message(err.without_snippet());
        let quotes_nothing = !message.contains(['"', '\'', '`'])
            && message.len() <= 100
            && !message.chars().any(char::is_control);
        YamlProblem {
            line: location.map(|at| at.line() as usize),
            column: location.map(|at| at.column() as usize),
            reason: if quotes_nothing {
                message.into_owned()
            } else {
                "unexpected content (not shown: it may be secret)".to_string()
            },
        }
    }
}

impl std::fmt::Display for YamlProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.line, self.column) {
            (Some(line), Some(column)) => {
                write!(f, "line {line}, column {column}: {}", self.reason)
            }
            _ => f.write_str(&self.reason),
        }
    }
}

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

#[cfg(test)]
mod tests {
    use super::YamlProblem;

    #[test]
    fn a_broken_line_is_located_but_never_quoted() {
        let yaml = "users:\n  - password: \"Pw-very-secret\n    phone: 1\n";
        let err = serde_saphyr::from_str::<serde_json::Value>(yaml).unwrap_err();
        let shown = YamlProblem::of(&err).to_string();
        assert!(!shown.contains("Pw-very-secret"), "{shown}");
        assert!(shown.contains("line "), "{shown}");
        let typed = serde_saphyr::from_str::<Vec<u8>>("[\"Pw-typed-secret\"]").unwrap_err();
        let shown = YamlProblem::of(&typed).to_string();
        assert!(!shown.contains("Pw-typed-secret"), "{shown}");
    }
}
