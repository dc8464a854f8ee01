//! Issue a code and verify it against a running gateway, playing the user's
//! phone through OUTBOX_SUBSCRIBE. Start the gateway first with
//! `cargo run --release -p watchword-gateway --bin watchword -- serve`, then
//! `cargo run --release -p watchword-gateway --example issue_and_verify [ADDR [PHONE]]`
//! (ADDR defaults to 127.0.0.1:7400, PHONE to +1 425 555 0100).
//! It prints the delivered text (which holds the code) because that is what a
//! handset would show; real upstream systems never see codes.
//!
//! A number gets at most five codes in any five minutes (the per-destination
//! limit, `[router.limits.destination]`): a sixth run within five minutes is
//! refused with RATE_LIMITED, and the example says so and when to try again.

use std::time::{Duration, UNIX_EPOCH};

use watchword_engine::Channel;
use watchword_gateway::client::code_in;
use watchword_gateway::{Client, ClientConfig, ClientError, IssueRequest, Status};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:7400".into());
    let phone = args.next().unwrap_or_else(|| "+1 425 555 0100".into());
    let client = Client::connect(ClientConfig {
        addr: addr.clone(),
        tenant: "demo".into(),
        key: "demo-key".into(),
        ..ClientConfig::default()
    })
    .await?;
    let mut handset = client.subscribe_outbox().await?;
    let request = IssueRequest {
        subject: "user-42".into(),
        channel: Channel::Sms,
        destination: phone.clone(),
        code_len: 0,
        ttl_s: 0,
        locale: "en".into(),
        client_ip: "203.0.113.5".into(),
    };
    let issued = match client.issue(&request).await {
        Ok(issued) => issued,
        Err(ClientError::Status {
            status: Status::RateLimited,
            retry_after_ms,
            message,
        }) => {
            println!("{}", rate_limited(&message, retry_after_ms, &addr, &phone));
            std::process::exit(1);
        }
        Err(e) => return Err(e.into()),
    };
    println!(
        "issued {} to {}, expires at {}",
        issued.id,
        issued.masked_destination,
        rfc3339(issued.expires_at_ms)
    );
    let message = loop {
        let m = tokio::time::timeout(Duration::from_secs(10), handset.recv())
            .await?
            .ok_or("outbox closed")?;
        if m.id == issued.id {
            break m;
        }
    };
    println!(
        "the phone shows: {:?} (from {})",
        message.text, message.sender
    );
    // The code is as long as the tenant's code_len says (4 to 12 digits).
    let code = code_in(&message.text).ok_or("no code in the message")?;
    let reply = client.verify(issued.id, code).await?;
    println!("verify: {:?}", reply.outcome);
    let status = client.status(issued.id).await?;
    println!(
        "status: {:?}, delivery {:?} via {}",
        status.state, status.delivery, status.carrier
    );
    Ok(())
}

/// A Unix time in milliseconds as RFC 3339 (UTC).
fn rfc3339(unix_ms: u64) -> String {
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(unix_ms)).to_string()
}

/// What the example says when ISSUE answers RATE_LIMITED: the server's
/// reason, and for the per-destination limit what it means and when the
/// number may have a code again.
fn rate_limited(message: &str, retry_after_ms: u32, addr: &str, phone: &str) -> String {
    let wait = humantime::format_duration(Duration::from_secs(
        u64::from(retry_after_ms).div_ceil(1000),
    ));
    let why = if message.contains("destination") {
        format!(
            "{phone} already had five codes in the last five minutes: the per-destination\n\
             limit ([router.limits.destination], 5 sends in any 5 minutes) refuses a sixth.\n\
             Try again in {wait}, or give another number:\n\
             cargo run --release -p watchword-gateway --example issue_and_verify -- {addr} \"+1 425 555 0101\""
        )
    } else {
        format!("A rate limit of [router.limits] refused the code; try again in {wait}.")
    };
    format!("refused: RATE_LIMITED ({message})\n{why}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_rfc3339() {
        assert_eq!(rfc3339(1_795_307_859_289), "2026-11-22T00:37:39.289Z");
    }

    #[test]
    fn a_sixth_code_within_five_minutes_is_explained() {
        let text = rate_limited(
            "rate limit per destination reached",
            241_000,
            "127.0.0.1:7400",
            "+1 425 555 0100",
        );
        assert!(
            text.starts_with(
                "refused: RATE_LIMITED (rate limit per destination reached)\n\
                 +1 425 555 0100 already had five codes in the last five minutes"
            ),
            "{text}"
        );
        assert!(text.contains("Try again in 4m 1s"), "{text}");
        assert!(
            text.ends_with("issue_and_verify -- 127.0.0.1:7400 \"+1 425 555 0101\""),
            "{text}"
        );
        let other = rate_limited(
            "rate limit per subject reached",
            1_500,
            "127.0.0.1:7400",
            "+1 425 555 0100",
        );
        assert!(other.ends_with("try again in 2s."), "{other}");
    }
}
