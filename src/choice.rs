//! Enums a user picks by name (on the command line, in configs): each value's name and a one-line
//! description, so that the binaries can list and parse them without the library depending on a
//! command-line parser.

use crate::{Error, Result};

/// A closed set of named values.
pub trait Choice: Copy + 'static {
    /// What is being chosen, for messages (e.g. `"model"`).
    const WHAT: &'static str;
    /// Every value, in catalogue order.
    const ALL: &'static [Self];

    /// The name a user types (kebab-case).
    fn name(self) -> &'static str;

    /// One line on what the value is.
    fn description(self) -> &'static str;

    /// The value called `name`.
    ///
    /// # Errors
    /// [`Error::InvalidParameter`] naming the unknown name and every valid one.
    fn from_name(name: &str) -> Result<Self> {
        Self::ALL.iter().copied().find(|c| c.name() == name).ok_or_else(|| {
            let names: Vec<&str> = Self::ALL.iter().map(|c| c.name()).collect();
            Error::invalid(Self::WHAT, format!("unknown {} '{name}'; one of: {}", Self::WHAT, names.join(", ")))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::ModelKind;
    use crate::sharpness::Which;

    fn names_round_trip<T: Choice + PartialEq + std::fmt::Debug>() {
        let mut seen = std::collections::HashSet::new();
        for &c in T::ALL {
            assert!(seen.insert(c.name()), "{} named twice", c.name());
            assert_eq!(T::from_name(c.name()).unwrap(), c);
            assert!(!c.description().is_empty());
            assert!(c.name().chars().all(|ch| ch.is_ascii_lowercase() || ch.is_ascii_digit() || ch == '-'));
        }
        match T::from_name("no-such-name") {
            Err(Error::InvalidParameter { field, problem }) => {
                assert_eq!(field, T::WHAT);
                assert!(problem.contains("no-such-name") && problem.contains(T::ALL[0].name()), "{problem}");
            }
            other => panic!("expected an error, got {other:?}"),
        }
    }

    #[test]
    fn every_choice_parses_back_from_its_name() {
        names_round_trip::<ModelKind>();
        names_round_trip::<Which>();
        names_round_trip::<crate::reproduction::Table>();
    }
}
