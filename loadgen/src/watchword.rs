//! The Watchword target: drives a gateway through the workspace's client
//! library (`watchword_gateway::client`), one pipelined `Client` per
//! connection, and plays the users' phones through OUTBOX_SUBSCRIBE on a
//! separate simulator connection.
//!
//! This module must never log or keep a code beyond handing it to the flow that
//! waits for it, and never retry a failed request.

use crate::target::DestPlan;
use crate::target::{Backend, Delivery, ErrLabel, Issued, Key, OutcomeLabel, extract_code};
use std::time::Duration;
use tokio::sync::mpsc;
use watchword_engine::{ChallengeId, Channel, VerifyOutcome};
use watchword_gateway::client::{Client, ClientConfig, ClientError, ClientTls, IssueRequest};

/// How to reach and authenticate to a gateway.
#[derive(Clone, Debug)]
pub struct WatchwordBackend {
    /// `host:port`.
    pub addr: String,
    /// Tenant for the measured connections.
    pub tenant: String,
    /// Its key.
    pub key: String,
    /// Tenant with the `simulator` role, for the outbox subscription.
    pub sim_tenant: String,
    /// Its key.
    pub sim_key: String,
    /// TLS, or `None` for plain TCP.
    pub tls: Option<ClientTls>,
    /// Destination spread.
    pub dest: DestPlan,
    /// Most requests outstanding per connection in the client library.
    pub max_in_flight: usize,
    /// Provisioned users a `check` run spreads over (`lg-check-0` ...).
    pub users: u64,
}

/// One gateway connection and the destination plan.
#[derive(Clone, Debug)]
pub struct WatchwordConn {
    client: Client,
    dest: DestPlan,
    users: u64,
}

fn label(e: ClientError) -> ErrLabel {
    match e {
        ClientError::Io(_) => "io",
        ClientError::Status { status, .. } => status.name(),
        ClientError::Protocol(_) => "protocol",
        ClientError::Closed => "closed",
        ClientError::Timeout => "timeout",
    }
}

fn outcome(o: VerifyOutcome) -> OutcomeLabel {
    o.name()
}

impl WatchwordBackend {
    fn config(&self, tenant: &str, key: &str) -> ClientConfig {
        ClientConfig {
            addr: self.addr.clone(),
            tenant: tenant.to_string(),
            key: key.to_string(),
            tls: self.tls.clone(),
            max_in_flight: self.max_in_flight,
            connect_timeout: Duration::from_secs(5),
        }
    }
}

impl Backend for WatchwordBackend {
    type Conn = WatchwordConn;

    fn describe(&self) -> String {
        format!(
            "watchword://{}{}",
            self.addr,
            if self.tls.is_some() { " (tls)" } else { "" }
        )
    }

    async fn connect(&self) -> anyhow::Result<WatchwordConn> {
        let client = Client::connect(self.config(&self.tenant, &self.key))
            .await
            .map_err(|e| anyhow::anyhow!("connect to watchword {}: {e}", self.addr))?;
        Ok(WatchwordConn {
            client,
            dest: self.dest,
            users: self.users.max(1),
        })
    }

    async fn outbox(&self) -> anyhow::Result<Option<mpsc::Receiver<Delivery>>> {
        let client = Client::connect(self.config(&self.sim_tenant, &self.sim_key))
            .await
            .map_err(|e| anyhow::anyhow!("connect simulator tenant to {}: {e}", self.addr))?;
        let mut rx = client.subscribe_outbox().await.map_err(|e| {
            anyhow::anyhow!(
                "OUTBOX_SUBSCRIBE as tenant `{}` failed: {e} (the flow scenario needs a tenant \
                 with the simulator role and a gateway running simulated carriers; see --sim-tenant)",
                self.sim_tenant
            )
        })?;
        let (tx, out) = mpsc::channel(65_536);
        tokio::spawn(async move {
            // Keeps the simulator connection alive for as long as anyone listens.
            let _client = client;
            while let Some(d) = rx.recv().await {
                if let Some(code) = extract_code(&d.text, 6) {
                    if tx.send(Delivery { id: d.id.0, code }).await.is_err() {
                        break;
                    }
                }
            }
        });
        Ok(Some(out))
    }

    async fn issue(c: &WatchwordConn, n: u64) -> Result<Issued, ErrLabel> {
        let req = IssueRequest {
            subject: c.dest.subject(n),
            channel: if c.dest.email {
                Channel::Email
            } else {
                Channel::Sms
            },
            destination: c.dest.destination(n),
            code_len: 0,
            ttl_s: 0,
            locale: String::new(),
            client_ip: String::new(),
        };
        let r = c.client.issue(&req).await.map_err(label)?;
        Ok(Issued {
            id: r.id.0,
            code: None,
        })
    }

    async fn verify(c: &WatchwordConn, id: Key, code: &str) -> Result<OutcomeLabel, ErrLabel> {
        let r = c
            .client
            .verify(ChallengeId(id), code)
            .await
            .map_err(label)?;
        Ok(outcome(r.outcome))
    }

    async fn resend(c: &WatchwordConn, id: Key) -> Result<(), ErrLabel> {
        c.client
            .resend(ChallengeId(id))
            .await
            .map(|_| ())
            .map_err(label)
    }

    async fn ping(c: &WatchwordConn) -> Result<(), ErrLabel> {
        c.client.ping().await.map_err(label)
    }

    async fn check(c: &WatchwordConn, n: u64) -> Result<OutcomeLabel, ErrLabel> {
        let subject = crate::users::check_subject(n % c.users);
        let r = c.client.check(&subject, "", "", "").await.map_err(label)?;
        Ok(check_label(r.result))
    }

    async fn totp(c: &WatchwordConn, n: u64, seq: u64) -> Result<OutcomeLabel, ErrLabel> {
        let k = n % c.users;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let code = crate::users::totp_code(k, now, seq / c.users);
        let subject = crate::users::totp_subject(k);
        let r = c
            .client
            .check(&subject, &code, "", "")
            .await
            .map_err(label)?;
        Ok(check_label(r.result))
    }
}

fn check_label(result: u8) -> OutcomeLabel {
    match result {
        0 => "accept",
        1 => "reject",
        _ => "challenge",
    }
}
