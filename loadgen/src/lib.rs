//! Watchword load generator.
