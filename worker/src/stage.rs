//! The pipeline stages, as names for metrics, memory attribution and dead-letter reasons.

use std::fmt;

/// One stage of the pipeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Stage {
    /// A: taking ids from Redis, acknowledging, dead-lettering.
    Queue,
    /// B: reading rows from MySQL.
    Source,
    /// C: calling the NLP services.
    Enrich,
    /// D: keyword matching, filters, counting, summary.
    Keywords,
    /// E: bulk indexing.
    Sink,
}

impl Stage {
    /// Every stage, in pipeline order.
    pub const ALL: [Stage; 5] = [
        Stage::Queue,
        Stage::Source,
        Stage::Enrich,
        Stage::Keywords,
        Stage::Sink,
    ];

    /// The stage's lowercase name, as used in metric labels, logs and dead-letter entries.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Stage::Queue => "queue",
            Stage::Source => "source",
            Stage::Enrich => "enrich",
            Stage::Keywords => "keywords",
            Stage::Sink => "sink",
        }
    }

    /// Index of the stage in [`Stage::ALL`] (1-based: 0 means "no stage" in the allocator).
    #[must_use]
    pub const fn index(self) -> usize {
        match self {
            Stage::Queue => 1,
            Stage::Source => 2,
            Stage::Enrich => 3,
            Stage::Keywords => 4,
            Stage::Sink => 5,
        }
    }

    /// Parses a stage name.
    #[must_use]
    pub fn from_name(name: &str) -> Option<Stage> {
        Stage::ALL.into_iter().find(|s| s.as_str() == name)
    }
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
