//! Issue a code and verify it against a running gateway, playing the user's
//! phone through OUTBOX_SUBSCRIBE. Start the gateway first with
//! `cargo run -p watchword-gateway --bin watchword -- serve`, then
//! `cargo run -p watchword-gateway --example issue_and_verify [ADDR]`.
//! It prints the delivered text (which holds the code) because that is what a
//! handset would show; real upstream systems never see codes.

use std::time::Duration;

use watchword_engine::Channel;
use watchword_gateway::{Client, ClientConfig, IssueRequest};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let client = Client::connect(ClientConfig {
        addr: std::env::args()
            .nth(1)
            .unwrap_or_else(|| "127.0.0.1:7400".into()),
        tenant: "demo".into(),
        key: "demo-key".into(),
        ..ClientConfig::default()
    })
    .await?;
    let mut phone = client.subscribe_outbox().await?;
    let issued = client
        .issue(&IssueRequest {
            subject: "user-42".into(),
            channel: Channel::Sms,
            destination: "+1 425 555 0100".into(),
            code_len: 0,
            ttl_s: 0,
            locale: "en".into(),
            client_ip: "203.0.113.5".into(),
        })
        .await?;
    println!(
        "issued {} to {}, expires at {} ms",
        issued.id, issued.masked_destination, issued.expires_at_ms
    );
    let message = loop {
        let m = tokio::time::timeout(Duration::from_secs(10), phone.recv())
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
    let code = message
        .text
        .split(|c: char| !c.is_ascii_digit())
        .find(|run| run.len() == 6)
        .ok_or("no code in the message")?;
    let reply = client.verify(issued.id, code).await?;
    println!("verify: {:?}", reply.outcome);
    let status = client.status(issued.id).await?;
    println!(
        "status: {:?}, delivery {:?} via {}",
        status.state, status.delivery, status.carrier
    );
    Ok(())
}
