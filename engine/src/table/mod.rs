//! The lock-sharded challenge table (being written).
