//! Object names: UTF-8 paths such as `models/s2t-medium/model.safetensors`.

use thiserror::Error;

/// Longest accepted name, in bytes.
pub const MAX_NAME_LEN: usize = 1024;

#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum NameError {
    #[error("object name is empty")]
    Empty,
    #[error("object name is {0} bytes long, the limit is {MAX_NAME_LEN}")]
    TooLong(usize),
    #[error("object name contains a control character at byte {0}")]
    ControlCharacter(usize),
    #[error("object name has an empty, '.' or '..' path segment")]
    BadSegment,
}

/// Checks that `name` is a valid object name.
pub fn validate(name: &str) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    if name.len() > MAX_NAME_LEN {
        return Err(NameError::TooLong(name.len()));
    }
    if let Some((at, _)) = name.char_indices().find(|(_, c)| c.is_control()) {
        return Err(NameError::ControlCharacter(at));
    }
    if name.split('/').any(|seg| seg.is_empty() || seg == "." || seg == "..") {
        return Err(NameError::BadSegment);
    }
    Ok(())
}

/// A name from the wire that [`validate`] refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid object name {name:?}: {reason}")]
pub struct InvalidName {
    pub name: String,
    pub reason: NameError,
}

/// Checks each name with [`validate`]; the first bad one is the error.
pub fn validate_all<'a>(names: impl IntoIterator<Item = &'a str>) -> Result<(), InvalidName> {
    for name in names {
        // Names longer than the limit are cut in the message, so an error stays small.
        validate(name)
            .map_err(|reason| InvalidName { name: name.chars().take(MAX_NAME_LEN.min(128)).collect(), reason })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_model_paths() {
        assert_eq!(validate("models/s2t-medium/model.safetensors"), Ok(()));
        assert_eq!(validate("a"), Ok(()));
        assert_eq!(validate("données/éé"), Ok(()));
    }

    #[test]
    fn rejects_bad_names() {
        assert_eq!(validate(""), Err(NameError::Empty));
        assert_eq!(validate(&"x".repeat(1025)), Err(NameError::TooLong(1025)));
        assert_eq!(validate("a\nb"), Err(NameError::ControlCharacter(1)));
        assert_eq!(validate("/abs"), Err(NameError::BadSegment));
        assert_eq!(validate("a//b"), Err(NameError::BadSegment));
        assert_eq!(validate("a/../b"), Err(NameError::BadSegment));
        assert_eq!(validate("dir/"), Err(NameError::BadSegment));
    }

    #[test]
    fn long_bad_names_are_cut_in_the_error() {
        let long = format!("{}\n", "x".repeat(5000));
        let err = validate_all([long.as_str()]).expect_err("too long");
        assert!(err.name.len() <= 128);
    }
}
