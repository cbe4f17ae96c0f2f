//! A catalog that cannot be used, and each problem in it, naming file and place.

use std::fmt;
use std::path::{Path, PathBuf};

/// One problem found in a catalog, naming where it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// The file that holds the offending definition.
    pub file: PathBuf,
    /// Where in it: `event "item.viewed" version 2 field "price"`, or empty.
    pub place: String,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.place.is_empty() {
            write!(f, "{}: {}", self.file.display(), self.message)
        } else {
            write!(f, "{}: {}: {}", self.file.display(), self.place, self.message)
        }
    }
}

/// A catalog that cannot be used, with every problem found.
#[derive(Debug, thiserror::Error)]
pub struct CatalogError {
    /// Each problem, naming file and place.
    pub problems: Vec<Problem>,
}

impl fmt::Display for CatalogError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

impl CatalogError {
    pub(super) fn one(file: &Path, place: impl Into<String>, message: impl Into<String>) -> CatalogError {
        CatalogError {
            problems: vec![Problem {
                file: file.to_path_buf(),
                place: place.into(),
                message: message.into(),
            }],
        }
    }
}
