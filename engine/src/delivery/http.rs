//! The HTTP carrier: posts each message as JSON to a configured URL over a
//! keep-alive connection pool (hyper-util's legacy client), the shape of the
//! common SMS APIs. 2xx accepted, 429 throttled (honouring `Retry-After`),
//! other 4xx rejected, 5xx and transport errors failed; the router's timeout
//! covers a server that never answers.
//!
//! It must never log the body (it holds the code) nor put the destination or
//! the URL's credentials in a failure reason.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue, RETRY_AFTER};
use hyper::{Request, StatusCode, Uri};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use super::carrier::{
    Carrier, CarrierMessage, DialPlan, MessagePurpose, Receipt, Receipts, SendFuture, SendOutcome,
};
use super::config::{HttpConfig, RouterConfigError};

/// Longest Retry-After honoured.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(300);
/// Retry-After assumed when a 429 gives none (or an HTTP date).
const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(1);

/// A carrier reached over HTTP/1.1.
#[derive(Clone)]
pub struct HttpCarrier {
    client: Client<HttpConnector, Full<Bytes>>,
    uri: Uri,
    authorization: Option<HeaderValue>,
}

impl std::fmt::Debug for HttpCarrier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpCarrier")
            .field("host", &self.uri.host())
            .finish()
    }
}

#[derive(serde::Serialize)]
struct Body<'a> {
    id: String,
    channel: &'a str,
    to: &'a str,
    from: &'a str,
    text: &'a str,
    dial_plan: &'a str,
    /// "code", or "call_confirmation" (the carrier's IVR collects the keys).
    purpose: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    extension: Option<&'a str>,
}

impl HttpCarrier {
    /// A client for `cfg.url`; call inside a tokio runtime.
    pub fn new(cfg: &HttpConfig) -> Result<Self, RouterConfigError> {
        let uri: Uri = cfg
            .url
            .parse()
            .map_err(|_| RouterConfigError("http.url: not a valid URL".into()))?;
        if uri.scheme_str() != Some("http") || uri.host().is_none() {
            return Err(RouterConfigError(
                "http.url: must be http://host[:port]/path".into(),
            ));
        }
        let authorization = if cfg.authorization.is_empty() {
            None
        } else {
            Some(HeaderValue::from_str(&cfg.authorization).map_err(|_| {
                RouterConfigError("http.authorization: not a valid header value".into())
            })?)
        };
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(5)));
        let client = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(cfg.pool_max_idle_per_host)
            .pool_idle_timeout(Duration::from_millis(cfg.pool_idle_timeout_ms))
            .build(connector);
        Ok(Self {
            client,
            uri,
            authorization,
        })
    }
}

fn retry_after(v: Option<&HeaderValue>) -> Duration {
    v.and_then(|v| v.to_str().ok())
        .and_then(|s| s.trim().parse::<u64>().ok())
        .map_or(DEFAULT_RETRY_AFTER, Duration::from_secs)
        .min(MAX_RETRY_AFTER)
}

/// What an HTTP status means for a send.
pub fn classify(status: StatusCode, retry_after_header: Option<&HeaderValue>) -> SendOutcome {
    if status.is_success() {
        SendOutcome::Accepted
    } else if status == StatusCode::TOO_MANY_REQUESTS {
        SendOutcome::Throttled {
            retry_after: retry_after(retry_after_header),
        }
    } else if status.is_client_error() {
        SendOutcome::Rejected {
            reason: format!("carrier answered HTTP {}", status.as_u16()),
        }
    } else {
        SendOutcome::Failed {
            reason: format!("carrier answered HTTP {}", status.as_u16()),
        }
    }
}

impl Carrier for HttpCarrier {
    fn send(&self, msg: CarrierMessage, receipts: &Receipts) -> SendFuture {
        let (plan, ext) = match &msg.dial_plan {
            DialPlan::Direct => ("direct", None),
            DialPlan::Tones(e) => ("tones", Some(e.as_str())),
            DialPlan::Operator(e) => ("operator", Some(e.as_str())),
        };
        let body = Body {
            id: msg.id.to_string(),
            channel: msg.channel.name(),
            to: &msg.to,
            from: &msg.sender,
            text: &msg.text,
            dial_plan: plan,
            purpose: match msg.purpose {
                MessagePurpose::Code => "code",
                MessagePurpose::CallConfirmation => "call_confirmation",
                MessagePurpose::PinNotice => "pin_notice",
            },
            extension: ext,
        };
        let json = match serde_json::to_vec(&body) {
            Ok(j) => j,
            Err(_) => {
                return Box::pin(std::future::ready(SendOutcome::Failed {
                    reason: "could not encode the message".into(),
                }));
            }
        };
        let mut req = Request::post(self.uri.clone())
            .header(CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(json)));
        if let (Ok(r), Some(a)) = (&mut req, &self.authorization) {
            r.headers_mut().insert(AUTHORIZATION, a.clone());
        }
        let client = self.client.clone();
        let receipts = receipts.clone();
        let token = msg.token;
        Box::pin(async move {
            let Ok(req) = req else {
                return SendOutcome::Failed {
                    reason: "could not build the request".into(),
                };
            };
            let resp = match client.request(req).await {
                Ok(r) => r,
                Err(e) => {
                    let reason = if e.is_connect() {
                        "could not connect to the carrier"
                    } else {
                        "the carrier connection failed"
                    };
                    return SendOutcome::Failed {
                        reason: reason.into(),
                    };
                }
            };
            let status = resp.status();
            let outcome = classify(status, resp.headers().get(RETRY_AFTER));
            // Read the body to the end so the connection returns to the pool.
            let _ = resp.into_body().collect().await;
            if outcome == SendOutcome::Accepted {
                // No receipt webhook yet: a 2xx counts as delivered.
                receipts.report(token, Receipt::Delivered);
            }
            outcome
        })
    }
}
