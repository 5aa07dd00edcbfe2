//! Keyword files: reading the directory, parsing one keyword per line, and a fingerprint of
//! what was read so a reload can tell whether anything changed.

use std::collections::{HashMap, HashSet};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::io;
use std::path::Path;

use migrate_crds::KeywordsSpec;

use super::KeywordsError;

/// The keywords of one file's text: one per line, trimmed; blank lines and lines starting with
/// `#` are skipped (so a keyword cannot start with `#`); duplicates are removed, keeping the
/// first. A byte-order mark at the start is ignored.
#[must_use]
pub fn parse_keywords(text: &str) -> Vec<String> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut seen = HashSet::new();
    text.lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .filter(|line| seen.insert(*line))
        .map(str::to_owned)
        .collect()
}

/// What one poll of the directory read.
pub(crate) struct Snapshot {
    /// Hash of every file's name and bytes (or of the reason it could not be read).
    pub(crate) fingerprint: u64,
    /// File name to its keywords, or the first error met.
    pub(crate) lists: Result<HashMap<String, Vec<String>>, KeywordsError>,
}

/// Reads every file the sets name from `dir`.
///
/// Files are read through their path, so Kubernetes' ConfigMap layout (`name ->
/// ..data/name`, with `..data` swapped atomically) is followed to whatever is current. Two
/// files read during a swap may come from different generations; the next poll sees the
/// change and reads again.
pub(crate) fn read_snapshot(spec: &KeywordsSpec, dir: &Path) -> Snapshot {
    let mut hasher = DefaultHasher::new();
    let mut lists = HashMap::new();
    let mut first_error = None;
    let mut done = HashSet::new();
    for set in &spec.sets {
        if !done.insert(set.file.as_str()) {
            continue;
        }
        set.file.hash(&mut hasher);
        match read_one(&set.name, &set.file, dir) {
            Ok((bytes, keywords)) => {
                bytes.hash(&mut hasher);
                lists.insert(set.file.clone(), keywords);
            }
            Err((kind, err)) => {
                format!("{kind:?}").hash(&mut hasher);
                first_error.get_or_insert(err);
            }
        }
    }
    Snapshot {
        fingerprint: hasher.finish(),
        lists: first_error.map_or(Ok(lists), Err),
    }
}

/// One file's bytes and keywords, or the kind of failure (for the fingerprint) and the error.
fn read_one(
    set: &str,
    file: &str,
    dir: &Path,
) -> Result<(Vec<u8>, Vec<String>), (io::ErrorKind, KeywordsError)> {
    let plain =
        !file.is_empty() && file != "." && file != ".." && !file.contains(['/', '\\', '\0']);
    if !plain {
        let err = KeywordsError::BadFileName {
            set: set.to_owned(),
            file: file.to_owned(),
        };
        return Err((io::ErrorKind::InvalidInput, err));
    }
    let path = dir.join(file);
    let bytes = std::fs::read(&path).map_err(|source| {
        let kind = source.kind();
        let err = if kind == io::ErrorKind::NotFound {
            KeywordsError::MissingFile {
                set: set.to_owned(),
                file: file.to_owned(),
                dir: dir.to_owned(),
            }
        } else {
            KeywordsError::ReadFile {
                set: set.to_owned(),
                file: file.to_owned(),
                path: path.clone(),
                source,
            }
        };
        (kind, err)
    })?;
    match std::str::from_utf8(&bytes) {
        Ok(text) => {
            let keywords = parse_keywords(text);
            Ok((bytes, keywords))
        }
        Err(source) => {
            let err = KeywordsError::NotUtf8 {
                set: set.to_owned(),
                file: file.to_owned(),
                path,
                source,
            };
            Err((io::ErrorKind::InvalidData, err))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyword_files_skip_blanks_comments_and_duplicates() {
        let cases: &[(&str, &[&str])] = &[
            ("", &[]),
            ("\n\n  \n", &[]),
            ("# only a comment\n", &[]),
            ("中国\n中国人\n", &["中国", "中国人"]),
            (
                "\u{feff}中国\r\n  国人  \r\n#注释\n中国\n\n",
                &["中国", "国人"],
            ),
            ("a\n   # an indented comment\nb", &["a", "b"]),
            ("Apple\napple", &["Apple", "apple"]),
        ];
        for (text, want) in cases {
            assert_eq!(parse_keywords(text), *want, "file {text:?}");
        }
    }
}
