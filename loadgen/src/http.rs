//! A minimal HTTP/1.1 keep-alive client for the gateway's HTTP API: one
//! request at a time per connection, `Content-Length` bodies only (what the
//! API answers). Enough to provision users and to measure durable upserts
//! without a client library's own costs in the figures.
//!
//! This module must never retry a request, never print a key, and never
//! allocate what a response's header claims beyond a fixed cap.

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// Largest response body accepted, bytes.
const MAX_BODY: usize = 4 << 20;

/// One keep-alive connection to `host:port`.
pub struct HttpConn {
    io: BufReader<TcpStream>,
    host: String,
    /// The `Authorization` header's value; none for an empty key.
    auth: Option<String>,
    req: Vec<u8>,
}

impl std::fmt::Debug for HttpConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpConn")
            .field("host", &self.host)
            .finish_non_exhaustive()
    }
}

/// The base URL's `host:port` (`http://` only).
pub fn host_of(url: &str) -> anyhow::Result<String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| anyhow::anyhow!("{url}: only http:// URLs are supported"))?;
    Ok(rest.trim_end_matches('/').to_owned())
}

impl HttpConn {
    /// Connects to `url` (`http://HOST:PORT`) with a bearer key (none when
    /// `key` is empty).
    pub async fn connect(url: &str, key: &str) -> anyhow::Result<HttpConn> {
        let host = host_of(url)?;
        let tcp = TcpStream::connect(&host)
            .await
            .map_err(|e| anyhow::anyhow!("connect to {url}: {e}"))?;
        tcp.set_nodelay(true)?;
        Ok(HttpConn {
            io: BufReader::with_capacity(16 * 1024, tcp),
            auth: (!key.is_empty()).then(|| format!("Bearer {key}")),
            host,
            req: Vec::with_capacity(1024),
        })
    }

    /// Sends one request and reads its answer: the status and the body.
    pub async fn request(
        &mut self,
        method: &str,
        path: &str,
        body: &str,
    ) -> anyhow::Result<(u16, Vec<u8>)> {
        self.req.clear();
        let auth = self
            .auth
            .as_deref()
            .map(|a| format!("Authorization: {a}\r\n"))
            .unwrap_or_default();
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            self.host,
            body.len()
        );
        self.req.extend_from_slice(head.as_bytes());
        self.req.extend_from_slice(body.as_bytes());
        self.io.get_mut().write_all(&self.req).await?;
        let mut line = String::new();
        self.io.read_line(&mut line).await?;
        let status: u16 = line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| anyhow::anyhow!("not an HTTP status line"))?;
        let mut len = 0usize;
        loop {
            line.clear();
            if self.io.read_line(&mut line).await? == 0 {
                anyhow::bail!("connection closed in the headers");
            }
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((k, v)) = l.split_once(':')
                && k.eq_ignore_ascii_case("content-length")
            {
                len = v.trim().parse()?;
            }
        }
        if len > MAX_BODY {
            anyhow::bail!("a response body of {len} bytes is over the cap");
        }
        let mut body = vec![0; len];
        self.io.read_exact(&mut body).await?;
        Ok((status, body))
    }

    /// A request whose answer must be one of `ok` statuses; the JSON body.
    pub async fn json(
        &mut self,
        method: &str,
        path: &str,
        body: &str,
        ok: &[u16],
    ) -> anyhow::Result<serde_json::Value> {
        let (status, bytes) = self.request(method, path, body).await?;
        let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
        if !ok.contains(&status) {
            anyhow::bail!("{method} {path}: HTTP {status}: {v}");
        }
        Ok(v)
    }
}

/// GETs `url` (`http://HOST:PORT/PATH`) without credentials, on a connection
/// of its own: the status and the body as text.
pub async fn get(url: &str) -> anyhow::Result<(u16, String)> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| anyhow::anyhow!("{url}: only http:// URLs are supported"))?;
    let (host, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let path = if path.is_empty() { "/" } else { path };
    let mut c = HttpConn::connect(&format!("http://{host}"), "").await?;
    let (status, body) = c.request("GET", path, "").await?;
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}
