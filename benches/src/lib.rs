//! Shared helpers for the criterion benchmarks (fixtures, baseline entries).
