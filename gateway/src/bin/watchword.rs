//! The `watchword` binary (placeholder until the server lands).
fn main() {}
