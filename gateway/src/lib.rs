//! Watchword gateway.
