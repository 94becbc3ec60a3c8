//! How errors are printed: one line, outermost context first, then each cause.
//!
//! The convention in this workspace is that an error's `Display` never repeats its
//! `source()`, so printing the chain is the one place causes are joined. Some third-party
//! errors (kube's, for one) do embed their source's text; a cause already contained in what
//! was printed is skipped so those read cleanly too.

use std::error::Error;

/// Renders an error and its sources on one line: `outer: inner: root cause`.
pub fn chain(err: &(dyn Error + 'static)) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = cause.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::chain;

    #[derive(Debug, thiserror::Error)]
    #[error("cannot read the manifest")]
    struct Outer {
        #[source]
        source: std::io::Error,
    }

    #[test]
    fn joins_causes_outermost_first() {
        let err = Outer {
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such file"),
        };
        assert_eq!(chain(&err), "cannot read the manifest: no such file");
    }
}
