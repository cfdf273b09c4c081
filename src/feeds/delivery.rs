//! How a feed's files relate to each other (`[feeds.<feed>] delivery`):
//! a **snapshot** file holds the feed's whole content for its period (the
//! register as a whole, every contribution of a month), so one file's row
//! count can be compared with the previous one's; a **delta** file holds
//! what changed since the last one (new visits, endorsements at a center,
//! a registry's changes), and its size says nothing about the feed's
//! health. Each import records the delivery its feed had when it was
//! imported; the safety brake's row-drop check compares snapshot imports
//! only (docs/operations.md, "The safety brake").

use serde::Deserialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Delivery {
    Snapshot,
    Delta,
}

impl Delivery {
    /// The stored and configured name.
    pub fn as_str(self) -> &'static str {
        match self {
            Delivery::Snapshot => "snapshot",
            Delivery::Delta => "delta",
        }
    }

    /// A stored name. Imports recorded before the setting existed were
    /// compared as snapshots by the brake, and are stored as such.
    pub fn parse(s: &str) -> Option<Delivery> {
        match s {
            "snapshot" => Some(Delivery::Snapshot),
            "delta" => Some(Delivery::Delta),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_names_round_trip_and_nothing_else_parses() {
        for d in [Delivery::Snapshot, Delivery::Delta] {
            assert_eq!(Delivery::parse(d.as_str()), Some(d));
        }
        assert_eq!(Delivery::parse("Snapshot"), None);
        assert_eq!(Delivery::parse(""), None);
    }
}
