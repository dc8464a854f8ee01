//! RADIUS through the real UDP listener of a real gateway (docs/radius.md),
//! with real RADIUS software on the other side:
//!
//! - `radclient` (Debian `freeradius-utils`): an SMS challenge then the code
//!   from the outbox, token codes, a wrong code, a locked user, an unknown
//!   user, CHAP; the audit trail names the client and the NAS;
//! - pyrad (PyPI `pyrad` >= 2.6): the BlastRADIUS rules (no or a bad
//!   Message-Authenticator: no answer), Proxy-State echoed in order, a
//!   retransmission answered with the same bytes, replies pyrad verifies;
//! - FreeRADIUS (Debian `freeradius`) as the upstream of
//!   `first_factor = "upstream"`: right password then code, wrong password,
//!   upstream down;
//! - held confirmation calls (retransmissions discarded while held) and
//!   `call_wait_s`, through the crate's own codec;
//! - garbage from a seeded generator: every discarded datagram is counted,
//!   and a valid request is answered right after.
//!
//! A test whose outside program is missing says so and passes, except in CI
//! (`CI` set), where a missing program is a failure. Every server a test
//! starts listens on loopback on a free port and is killed when the test
//! ends, also on panic. These tests must never use a fixed port (1812
//! included) or leave a process running.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UdpSocket;
use tokio::sync::mpsc::Receiver;
use watchword_engine::ChallengeId;
use watchword_gateway::app::{Running, start};
use watchword_gateway::config::{Config, FirstFactor, RadiusUpstreamConfig};
use watchword_gateway::radius::packet::{
    self, CHAP_PASSWORD, Code, MessageAuth, NAS_IP_ADDRESS, REPLY_MESSAGE, RequestBuilder, STATE,
    USER_NAME, USER_PASSWORD, check_message_authenticator, decode, reveal_user_password,
    verify_reply,
};
use watchword_gateway::{Client, ClientConfig, Delivered};

const SECRET: &str = "radius-test-secret-0123";
const ADMIN: &str = "demo-admin-key";

// ---------------------------------------------------------------- tools

/// Whether `program` runs (`args` is a harmless probe); if not, says what
/// is missing, and fails in CI.
fn tool(program: &str, args: &[&str], what: &str) -> bool {
    let found = std::process::Command::new(program)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        assert!(
            std::env::var_os("CI").is_none(),
            "{what} is not installed; .ci/run installs it"
        );
        eprintln!("SKIPPED: {what} is not installed");
    }
    found
}

fn radclient_present() -> bool {
    tool(
        "radclient",
        &["-v"],
        "radclient (apt-get install freeradius-utils)",
    )
}

fn pyrad_present() -> bool {
    let probe = "import sys, pyrad.packet\n\
                 from importlib.metadata import version\n\
                 v = tuple(int(x) for x in version('pyrad').split('.')[:2])\n\
                 sys.exit(0 if v >= (2, 6) else 1)";
    tool(
        "python3",
        &["-c", probe],
        "pyrad >= 2.6 (python3 -m pip install 'pyrad>=2.6')",
    )
}

/// The FreeRADIUS server binary, wherever Debian or a source build put it.
fn freeradius_binary() -> Option<&'static str> {
    let found = [
        "freeradius",
        "/usr/sbin/freeradius",
        "radiusd",
        "/usr/sbin/radiusd",
        "/usr/local/sbin/radiusd",
    ]
    .into_iter()
    .find(|b| {
        std::process::Command::new(b)
            .arg("-v")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    });
    if found.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "FreeRADIUS is not installed (apt-get install freeradius); .ci/run installs it"
        );
        eprintln!("SKIPPED: FreeRADIUS is not installed (apt-get install freeradius)");
    }
    found
}

/// A free loopback UDP port (bound, read, released; the server binds it next).
fn free_udp_port() -> u16 {
    let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    s.local_addr().unwrap().port()
}

// ---------------------------------------------------------------- gateway

/// A gateway with every listener on a free loopback port, RADIUS client
/// `client` for 127.0.0.0/8, tenant `demo` locking a token after 2 wrong
/// codes. Client names differ per test: the metrics are process-wide.
async fn gateway(dir: &Path, client: &str, tweak: impl FnOnce(&mut Config)) -> Running {
    let mut cfg = Config::development();
    cfg.server.listen = "127.0.0.1:0".into();
    cfg.server.metrics_listen = "127.0.0.1:0".into();
    cfg.http.listen = "127.0.0.1:0".into();
    cfg.audit.path = dir.join("audit.jsonl");
    cfg.audit.flush_interval_ms = 20;
    cfg.storage.path = dir.join("data");
    cfg.tenants[0].token_max_failures = 2;
    cfg.radius.listen = "127.0.0.1:0".into();
    let c = &mut cfg.radius.clients[0];
    c.name = client.into();
    c.secret = SECRET.into();
    tweak(&mut cfg);
    start(cfg).await.unwrap()
}

/// One HTTP/1.1 request to the HTTP API with the admin key: status, JSON.
async fn http(r: &Running, method: &str, path: &str, body: &str) -> (u16, Value) {
    let mut s = tokio::net::TcpStream::connect(r.http_addr.unwrap())
        .await
        .unwrap();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\
         Authorization: Bearer {ADMIN}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await.unwrap();
    let text = String::from_utf8_lossy(&raw).to_string();
    let status = text.split(' ').nth(1).unwrap().parse().unwrap();
    let payload = text.split_once("\r\n\r\n").map_or("", |x| x.1);
    (status, serde_json::from_str(payload).unwrap_or(Value::Null))
}

/// The metrics page.
async fn metrics(r: &Running) -> String {
    let mut s = tokio::net::TcpStream::connect(r.metrics_addr)
        .await
        .unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await.unwrap();
    String::from_utf8_lossy(&raw).to_string()
}

/// One series' value on a metrics page (0 when absent).
fn series(page: &str, name: &str, labels: &str) -> u64 {
    let want = format!("{name}{{{labels}}} ");
    page.lines()
        .find_map(|l| l.strip_prefix(&want))
        .map_or(0, |v| v.trim().parse::<f64>().unwrap() as u64)
}

async fn simulator(r: &Running) -> (Client, Receiver<Delivered>) {
    let c = Client::connect(ClientConfig {
        addr: r.addr.to_string(),
        tenant: "demo".into(),
        key: "demo-key".into(),
        ..ClientConfig::default()
    })
    .await
    .unwrap();
    let rx = c.subscribe_outbox().await.unwrap();
    (c, rx)
}

async fn delivered_for(rx: &mut Receiver<Delivered>, id: ChallengeId) -> Delivered {
    loop {
        let d = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("a message")
            .expect("outbox open");
        if d.id == id {
            return d;
        }
    }
}

/// The challenge a State names: the engine's state before the client tag.
fn challenge_of(state: &str) -> ChallengeId {
    let (engine_state, tag) = state.rsplit_once('.').expect("a tagged State");
    assert_eq!(tag.len(), 16);
    watchword_engine::check::parse_state(engine_state).expect("an engine state")
}

fn code_in(text: &str) -> String {
    text.split(|c: char| !c.is_ascii_digit())
        .find(|run| run.len() == 6)
        .expect("a code in the text")
        .to_owned()
}

/// A user whose default method is an SMS to `phone`, confirmed.
async fn sms_user(r: &Running, outbox: &mut Receiver<Delivered>, subject: &str, phone: &str) {
    let (s, _) = http(r, "PUT", &format!("/v1/users/{subject}"), "{}").await;
    assert_eq!(s, 201);
    let body = json!({"type": "sms", "destination": phone}).to_string();
    let (s, m) = http(r, "POST", &format!("/v1/users/{subject}/methods"), &body).await;
    assert_eq!(s, 201, "{m}");
    let id = m["id"].as_str().unwrap().to_owned();
    let msg = tokio::time::timeout(Duration::from_secs(10), outbox.recv())
        .await
        .unwrap()
        .unwrap();
    let body = json!({"code": code_in(&msg.text)}).to_string();
    let path = format!("/v1/users/{subject}/methods/{id}/confirm");
    let (s, m) = http(r, "POST", &path, &body).await;
    assert_eq!((s, &m["state"]), (200, &json!("active")), "{m}");
}

/// A user with an enrolled TOTP token (SHA-1, 6 digits, 30 s): its secret.
async fn token_user(r: &Running, subject: &str) -> watchword_engine::oath::Token {
    let (s, _) = http(r, "PUT", &format!("/v1/users/{subject}"), "{}").await;
    assert_eq!(s, 201);
    let path = format!("/v1/users/{subject}/tokens");
    let (s, t) = http(r, "POST", &path, r#"{"type": "totp"}"#).await;
    assert_eq!(s, 201, "{t}");
    let uri = t["otpauth_uri"].as_str().unwrap();
    let b32 = uri
        .split(['?', '&'])
        .find_map(|kv| kv.strip_prefix("secret="))
        .unwrap();
    let secret = watchword_engine::oath::base32_decode(b32).unwrap();
    let params = watchword_engine::oath::Params {
        algorithm: watchword_engine::oath::Algorithm::Sha1,
        digits: 6,
        period: 30,
    };
    watchword_engine::oath::Token::from_bytes(&secret, params).unwrap()
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A six-digit code no step near now produces.
fn wrong_code(t: &watchword_engine::oath::Token) -> String {
    let near: Vec<String> = (0..5).map(|i| t.totp(unix_now() + i * 30 - 60)).collect();
    (0..10)
        .map(|d| d.to_string().repeat(6))
        .find(|c| !near.contains(c))
        .unwrap()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len() / 2)
        .map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap())
        .collect()
}

// ---------------------------------------------------------------- radclient

/// What radclient received: the code's name and the attributes it printed.
#[derive(Debug)]
struct RadReply {
    code: String,
    attrs: Vec<(String, String)>,
}

impl RadReply {
    fn get(&self, name: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn message(&self) -> String {
        self.attrs
            .iter()
            .filter(|(n, _)| n == "Reply-Message")
            .map(|(_, v)| v.trim_matches('"'))
            .collect()
    }

    /// The State, as the text it carries.
    fn state(&self) -> String {
        let v = self.get("State").expect("a State");
        String::from_utf8(unhex(v.trim_start_matches("0x"))).unwrap()
    }
}

/// Sends one Access-Request with radclient (one try, 6 s) and parses what
/// it received.
async fn radclient(addr: SocketAddr, secret: &str, attrs: &str) -> RadReply {
    radclient_waiting(addr, secret, attrs, 6).await
}

async fn radclient_waiting(addr: SocketAddr, secret: &str, attrs: &str, wait_s: u32) -> RadReply {
    let wait = wait_s.to_string();
    let mut child = tokio::process::Command::new("radclient")
        .args([
            "-x",
            "-t",
            &wait,
            "-r",
            "1",
            &addr.to_string(),
            "auth",
            secret,
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(attrs.as_bytes()).await.unwrap();
    drop(stdin);
    let out = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .expect("radclient finishes")
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let mut lines = text.lines().skip_while(|l| !l.starts_with("Received "));
    let code = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap_or("none")
        .to_owned();
    let attrs = lines
        .take_while(|l| l.starts_with('\t') || l.starts_with(' '))
        .filter_map(|l| l.trim().split_once(" = "))
        .map(|(n, v)| (n.to_owned(), v.to_owned()))
        .collect();
    RadReply { code, attrs }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn radclient_sms_token_wrong_locked_and_unknown() {
    if !radclient_present() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let r = gateway(dir.path(), "rc", |_| {}).await;
    let ra = r.radius_addr.expect("RADIUS is on");
    let (_sim, mut outbox) = simulator(&r).await;
    let mut codes = Vec::new();
    let nas = "NAS-IP-Address = 192.0.2.10, Message-Authenticator = 0x00";

    // SMS: a challenge, then the code from the outbox.
    sms_user(&r, &mut outbox, "ann", "+14255550101").await;
    let ch = radclient(ra, SECRET, &format!("User-Name = \"ann\", {nas}")).await;
    assert_eq!(ch.code, "Access-Challenge", "{ch:?}");
    assert!(ch.attrs[0].0 == "Message-Authenticator", "first: {ch:?}");
    assert_eq!(ch.message(), "Enter the code sent to +14*******01");
    let state = ch.state();
    let sms = delivered_for(&mut outbox, challenge_of(&state)).await;
    let code = code_in(&sms.text);
    codes.push(code.clone());
    let answer = format!(
        "User-Name = \"ann\", User-Password = \"{code}\", State = 0x{}, {nas}",
        hex(state.as_bytes())
    );
    let ok = radclient(ra, SECRET, &answer).await;
    assert_eq!(ok.code, "Access-Accept", "{ok:?}");
    let again = radclient(ra, SECRET, &answer).await;
    assert_eq!(again.code, "Access-Reject", "the state is single-use");
    assert!(again.message().contains("Start again"), "{again:?}");

    // A wrong code: Access-Reject with the reason, no State.
    let ch = radclient(ra, SECRET, &format!("User-Name = \"ann\", {nas}")).await;
    let state = ch.state();
    let sms = delivered_for(&mut outbox, challenge_of(&state)).await;
    let code = code_in(&sms.text);
    codes.push(code.clone());
    let wrong = if code == "000000" { "111111" } else { "000000" };
    let no = radclient(
        ra,
        SECRET,
        &format!(
            "User-Name = \"ann\", User-Password = \"{wrong}\", State = 0x{}, {nas}",
            hex(state.as_bytes())
        ),
    )
    .await;
    assert_eq!(
        (no.code.as_str(), no.message()),
        ("Access-Reject", "Wrong code.".into())
    );
    assert!(no.get("State").is_none(), "{no:?}");

    // Token codes: one without a state, the next step's too; a replay fails.
    let tok = token_user(&r, "tom").await;
    let now = unix_now();
    for t in [now, now + 30] {
        let code = tok.totp(t);
        codes.push(code.clone());
        let rep = radclient(
            ra,
            SECRET,
            &format!("User-Name = \"tom\", User-Password = \"{code}\", {nas}"),
        )
        .await;
        assert_eq!(rep.code, "Access-Accept", "{rep:?}");
    }
    let replay = radclient(
        ra,
        SECRET,
        &format!(
            "User-Name = \"tom\", User-Password = \"{}\", {nas}",
            tok.totp(now)
        ),
    )
    .await;
    assert_eq!(replay.code, "Access-Reject");
    // An empty password asks for the token's code.
    let ch = radclient(ra, SECRET, &format!("User-Name = \"tom\", {nas}")).await;
    assert_eq!(
        (ch.code.as_str(), ch.message()),
        ("Access-Challenge", "Enter the code from your token".into())
    );

    // A locked user: two wrong token codes lock the token (policy 2).
    let lou = token_user(&r, "lou").await;
    let bad = wrong_code(&lou);
    let mut last = String::new();
    for _ in 0..3 {
        let rep = radclient(
            ra,
            SECRET,
            &format!("User-Name = \"lou\", User-Password = \"{bad}\", {nas}"),
        )
        .await;
        assert_eq!(rep.code, "Access-Reject");
        last = rep.message();
    }
    assert!(last.contains("locked"), "{last}");
    let code = lou.totp(unix_now());
    let rep = radclient(
        ra,
        SECRET,
        &format!("User-Name = \"lou\", User-Password = \"{code}\", {nas}"),
    )
    .await;
    assert_eq!(
        (rep.code.as_str(), rep.message().contains("locked")),
        ("Access-Reject", true)
    );

    // An unknown user; CHAP; the wrong secret (no answer at all).
    let rep = radclient(ra, SECRET, &format!("User-Name = \"nobody\", {nas}")).await;
    assert_eq!(
        (rep.code.as_str(), rep.message()),
        ("Access-Reject", "Unknown user.".into())
    );
    let rep = radclient(
        ra,
        SECRET,
        &format!("User-Name = \"ann\", CHAP-Password = \"123456\", {nas}"),
    )
    .await;
    assert_eq!(rep.code, "Access-Reject");
    assert!(rep.message().contains("PAP is required"), "{rep:?}");
    let rep = radclient_waiting(
        ra,
        "not-the-right-secret",
        &format!("User-Name = \"ann\", {nas}"),
        1,
    )
    .await;
    assert_eq!(rep.code, "none", "{rep:?}");

    let page = metrics(&r).await;
    assert_eq!(
        series(&page, "watchword_radius_accepts_total", "client=\"rc\""),
        3
    );
    assert_eq!(
        series(&page, "watchword_radius_challenges_total", "client=\"rc\""),
        3
    );
    assert_eq!(
        series(
            &page,
            "watchword_radius_discarded_total",
            "client=\"rc\",reason=\"bad_authenticator\""
        ),
        1
    );
    r.shutdown();
    r.wait().await;
    let log = std::fs::read_to_string(dir.path().join("audit.jsonl")).unwrap();
    assert!(
        log.contains("\"client_ip\":\"radius:rc/192.0.2.10\""),
        "{log}"
    );
    assert!(log.contains("\"reason\":\"pap_required\""));
    assert!(log.contains("\"reason\":\"locked\""));
    for secret in [SECRET, "4255550101"] {
        assert!(!log.contains(secret), "{secret} in the audit log");
    }
    for code in &codes {
        assert!(!log.contains(code.as_str()), "a code in the audit log");
    }
}

// ---------------------------------------------------------------- pyrad

const PYRAD_DICTIONARY: &str = "\
ATTRIBUTE\tUser-Name\t1\tstring
ATTRIBUTE\tUser-Password\t2\tstring
ATTRIBUTE\tNAS-IP-Address\t4\tipaddr
ATTRIBUTE\tReply-Message\t18\tstring
ATTRIBUTE\tState\t24\toctets
ATTRIBUTE\tProxy-State\t33\toctets
ATTRIBUTE\tMessage-Authenticator\t80\toctets
";

/// Drives the server with pyrad packets over plain sockets (so that the
/// source address and the exact bytes are the script's) and prints what
/// it saw as JSON.
const PYRAD_SCRIPT: &str = r#"
import json, socket, sys
from pyrad import dictionary, packet

host, port, secret, dict_path, user, code = sys.argv[1:7]
port, secret = int(port), secret.encode()
d = dictionary.Dictionary(dict_path)
out = {}

def sock(src):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((src, 0))
    s.settimeout(1.0)
    return s

def request(ident, ma=True, proxy=(), name="nobody", password=None, key=secret):
    p = packet.AuthPacket(code=packet.AccessRequest, id=ident, secret=key, dict=d,
                          authenticator=packet.Packet.CreateAuthenticator())
    p["User-Name"] = name
    if password is not None:
        p["User-Password"] = p.PwCrypt(password)
    for x in proxy:
        p.AddAttribute("Proxy-State", x)
    if ma:
        p.add_message_authenticator()
    return p

def exchange(s, raw):
    s.sendto(raw, (host, port))
    try:
        return s.recvfrom(4096)[0]
    except socket.timeout:
        return None

def verified(p, raw):
    reply = p.CreateReply(packet=raw)
    return reply, p.VerifyReply(reply, raw, enforce_ma=True)

strict, lax = sock("127.0.0.1"), sock("127.0.0.2")

# No Message-Authenticator, to a client that requires one: no answer.
out["without_ma"] = exchange(strict, request(1, ma=False).RequestPacket()) is not None
# A Message-Authenticator made with another secret: no answer.
out["bad_ma"] = exchange(strict, request(2, key=b"another-secret-0123").RequestPacket()) is not None
# A byte changed after signing: no answer.
raw = bytearray(request(3).RequestPacket()); raw[-1] ^= 1
out["tampered"] = exchange(strict, bytes(raw)) is not None
# Proxy-State without Message-Authenticator, even to a client that does not require one.
out["proxy_without_ma"] = exchange(lax, request(4, ma=False, proxy=[b"x"]).RequestPacket()) is not None
# That client answers a request without Message-Authenticator otherwise.
p = request(5, ma=False)
r = exchange(lax, p.RequestPacket())
out["lax_answered"] = r is not None and verified(p, r)[1]

# Proxy-States come back unchanged and in order; the reply verifies,
# Message-Authenticator first.
states = [b"first", b"\x00\x01\x02", b"third-" + b"z" * 200]
p = request(6, proxy=states)
raw = p.RequestPacket()
r1 = exchange(strict, raw)
reply, ok = verified(p, r1)
out["proxy_reply_verifies"] = ok
out["proxy_reply_code"] = reply.code
out["proxy_states"] = [x.hex() for x in reply["Proxy-State"]]
out["first_attribute"] = r1[20]
# A retransmission: the same bytes again.
r2 = exchange(strict, raw)
out["retransmission_same_bytes"] = r1 == r2

# An Access-Accept for a token code, verified.
p = request(7, name=user, password=code)
r = exchange(strict, p.RequestPacket())
reply, ok = verified(p, r)
out["accept_verifies"] = ok
out["accept_code"] = reply.code
print(json.dumps(out))
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pyrad_sees_the_blastradius_rules_proxy_states_and_the_cache() {
    if !pyrad_present() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let r = gateway(dir.path(), "py", |cfg| {
        cfg.radius.clients[0].address = "127.0.0.1".into();
        let mut lax = cfg.radius.clients[0].clone();
        lax.name = "py-lax".into();
        lax.address = "127.0.0.2".into();
        lax.require_message_authenticator = false;
        cfg.radius.clients.push(lax);
    })
    .await;
    let ra = r.radius_addr.unwrap();
    let tok = token_user(&r, "pat").await;
    std::fs::write(dir.path().join("dictionary"), PYRAD_DICTIONARY).unwrap();
    std::fs::write(dir.path().join("drive.py"), PYRAD_SCRIPT).unwrap();
    let out = tokio::process::Command::new("python3")
        .arg(dir.path().join("drive.py"))
        .args([
            "127.0.0.1",
            &ra.port().to_string(),
            SECRET,
            dir.path().join("dictionary").to_str().unwrap(),
            "pat",
            &tok.totp(unix_now()),
        ])
        .kill_on_drop(true)
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    for (k, want) in [
        ("without_ma", false),
        ("bad_ma", false),
        ("tampered", false),
        ("proxy_without_ma", false),
        ("lax_answered", true),
        ("proxy_reply_verifies", true),
        ("retransmission_same_bytes", true),
        ("accept_verifies", true),
    ] {
        assert_eq!(v[k], want, "{k}: {v}");
    }
    assert_eq!(
        v["proxy_reply_code"], 3,
        "Access-Reject for an unknown user"
    );
    assert_eq!(v["accept_code"], 2, "Access-Accept");
    assert_eq!(v["first_attribute"], 80, "Message-Authenticator first");
    let z = "7a".repeat(200);
    assert_eq!(
        v["proxy_states"],
        json!(["6669727374", "000102", format!("74686972642d{z}")])
    );
    let page = metrics(&r).await;
    let d = |client: &str, reason: &str| {
        series(
            &page,
            "watchword_radius_discarded_total",
            &format!("client=\"{client}\",reason=\"{reason}\""),
        )
    };
    assert_eq!(d("py", "missing_message_authenticator"), 1);
    assert_eq!(d("py", "bad_authenticator"), 2);
    assert_eq!(d("py-lax", "missing_message_authenticator"), 1);
    assert_eq!(
        series(&page, "watchword_radius_resent_total", "client=\"py\""),
        1
    );
    r.shutdown();
    r.wait().await;
}

// ---------------------------------------------------------------- FreeRADIUS

/// A FreeRADIUS server in the foreground on a loopback port, with its own
/// configuration directory; dropping it kills it.
struct FreeRadius {
    child: std::process::Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for FreeRadius {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl FreeRadius {
    /// Starts `bin` with client 127.0.0.1 (`secret`, Message-Authenticator
    /// required) and the `users` file; waits until it is ready.
    fn start(bin: &str, secret: &str, users: &str) -> FreeRadius {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display().to_string();
        let port = free_udp_port();
        let conf = format!(
            r#"
prefix = /usr
exec_prefix = /usr
sysconfdir = /etc
localstatedir = {d}
sbindir = /usr/sbin
logdir = {d}
raddbdir = {d}
radacctdir = {d}
name = radiusd
confdir = {d}
modconfdir = {d}
run_dir = {d}
db_dir = {d}
libdir = /usr/lib/freeradius
dictdir = /usr/share/freeradius
pidfile = {d}/radiusd.pid
max_request_time = 30
cleanup_delay = 5
max_requests = 1024
hostname_lookups = no
log {{
  destination = stdout
  auth = yes
}}
security {{
  allow_core_dumps = no
  max_attributes = 200
  reject_delay = 0
  status_server = no
}}
thread pool {{
  start_servers = 1
  max_servers = 4
  min_spare_servers = 1
  max_spare_servers = 4
  max_requests_per_server = 0
}}
client watchword {{
  ipaddr = 127.0.0.1
  secret = {secret}
  require_message_authenticator = yes
}}
modules {{
  files {{
    filename = {d}/users
  }}
  pap {{
  }}
}}
server default {{
  listen {{
    type = auth
    ipaddr = 127.0.0.1
    port = {port}
  }}
  authorize {{
    files
    pap
  }}
  authenticate {{
    Auth-Type PAP {{
      pap
    }}
  }}
  post-auth {{
  }}
}}
"#
        );
        std::fs::write(dir.path().join("radiusd.conf"), conf).unwrap();
        std::fs::write(dir.path().join("users"), users).unwrap();
        std::fs::write(dir.path().join("dictionary"), "").unwrap();
        let log = std::fs::File::create(dir.path().join("out.log")).unwrap();
        let child = std::process::Command::new(bin)
            .args(["-f", "-d", &d, "-n", "radiusd", "-l", "stdout"])
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let mut fr = FreeRadius {
            child,
            port,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let text = std::fs::read_to_string(fr._dir.path().join("out.log")).unwrap_or_default();
            if text.contains("Ready to process requests") {
                return fr;
            }
            if let Ok(Some(status)) = fr.child.try_wait() {
                panic!("FreeRADIUS exited ({status}):\n{text}");
            }
            assert!(Instant::now() < deadline, "FreeRADIUS not ready:\n{text}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_freeradius_checks_the_password_first() {
    let (Some(bin), true) = (freeradius_binary(), radclient_present()) else {
        return;
    };
    const UPSTREAM_SECRET: &str = "upstream-test-secret-456";
    let fr = FreeRadius::start(
        bin,
        UPSTREAM_SECRET,
        "alice Cleartext-Password := \"alice-password\"\n",
    );
    let dir = tempfile::tempdir().unwrap();
    let port = fr.port;
    let r = gateway(dir.path(), "up", |cfg| {
        cfg.radius.clients[0].first_factor = FirstFactor::Upstream;
        cfg.radius.upstream = Some(RadiusUpstreamConfig {
            address: format!("127.0.0.1:{port}"),
            secret: UPSTREAM_SECRET.into(),
            timeout_ms: 1500,
            // FreeRADIUS before 3.2.5 (Debian 12 has 3.2.1) signs no reply.
            require_message_authenticator: false,
        });
    })
    .await;
    let ra = r.radius_addr.unwrap();
    let tok = token_user(&r, "alice").await;
    let nas = "NAS-IP-Address = 192.0.2.20, Message-Authenticator = 0x00";

    // The right password: the second factor's challenge, then the code.
    let ch = radclient(
        ra,
        SECRET,
        &format!("User-Name = \"alice\", User-Password = \"alice-password\", {nas}"),
    )
    .await;
    assert_eq!(ch.code, "Access-Challenge", "{ch:?}");
    assert_eq!(ch.message(), "Enter the code from your token");
    let ok = radclient(
        ra,
        SECRET,
        &format!(
            "User-Name = \"alice\", User-Password = \"{}\", State = 0x{}, {nas}",
            tok.totp(unix_now()),
            hex(ch.state().as_bytes())
        ),
    )
    .await;
    assert_eq!(ok.code, "Access-Accept", "{ok:?}");

    // A wrong password: rejected by the upstream, no challenge.
    let no = radclient(
        ra,
        SECRET,
        &format!("User-Name = \"alice\", User-Password = \"wrong\", {nas}"),
    )
    .await;
    assert_eq!(
        (no.code.as_str(), no.message()),
        ("Access-Reject", "The password was rejected.".into())
    );

    // The upstream down: Access-Reject once the timeout has passed.
    drop(fr);
    let t0 = Instant::now();
    let down = radclient(
        ra,
        SECRET,
        &format!("User-Name = \"alice\", User-Password = \"alice-password\", {nas}"),
    )
    .await;
    let waited = t0.elapsed();
    assert_eq!(down.code, "Access-Reject", "{down:?}");
    assert!(down.message().contains("no answer"), "{down:?}");
    assert!(waited >= Duration::from_millis(1400), "{waited:?}");

    let page = metrics(&r).await;
    let up = |result: &str| {
        series(
            &page,
            "watchword_radius_upstream_total",
            &format!("client=\"up\",result=\"{result}\""),
        )
    };
    assert_eq!((up("accept"), up("reject"), up("timeout")), (1, 1, 1));
    r.shutdown();
    r.wait().await;
    let log = std::fs::read_to_string(dir.path().join("audit.jsonl")).unwrap();
    assert!(log.contains("\"reason\":\"upstream_reject\""));
    assert!(log.contains("\"reason\":\"upstream_timeout\""));
    assert!(!log.contains("alice-password") && !log.contains(UPSTREAM_SECRET));
}

// ---------------------------------------------------------------- held calls

/// A NAS built on the crate's codec, on its own socket.
struct Nas {
    socket: UdpSocket,
    next_id: u8,
}

impl Nas {
    async fn new(server: SocketAddr) -> Nas {
        Nas::new_from("127.0.0.1", server).await
    }

    /// A NAS sending from `ip` (any 127.0.0.0/8 address is local on Linux).
    async fn new_from(ip: &str, server: SocketAddr) -> Nas {
        let socket = UdpSocket::bind((ip, 0)).await.unwrap();
        socket.connect(server).await.unwrap();
        Nas { socket, next_id: 0 }
    }

    /// An Access-Request for `user` with an optional password and State.
    fn request(&mut self, user: &str, password: Option<&str>, state: Option<&[u8]>) -> Vec<u8> {
        self.next_id = self.next_id.wrapping_add(1);
        let mut b = RequestBuilder::new(self.next_id, rand::random());
        b.push(USER_NAME, user.as_bytes()).unwrap();
        if let Some(p) = password {
            b.push_user_password(p.as_bytes(), SECRET.as_bytes())
                .unwrap();
        }
        if let Some(s) = state {
            b.push(STATE, s).unwrap();
        }
        b.push(NAS_IP_ADDRESS, &[192, 0, 2, 30]).unwrap();
        b.finish(SECRET.as_bytes())
    }

    async fn recv(&self, wait: Duration) -> Option<Vec<u8>> {
        let mut buf = vec![0u8; 4096];
        match tokio::time::timeout(wait, self.socket.recv(&mut buf)).await {
            Ok(Ok(n)) => Some(buf[..n].to_vec()),
            _ => None,
        }
    }

    /// Sends `req` and waits for its verified reply: code, State, message.
    async fn exchange(&self, req: &[u8], wait: Duration) -> (Code, Vec<u8>, String) {
        self.socket.send(req).await.unwrap();
        let reply = self.recv(wait).await.expect("a reply");
        reply_of(req, &reply)
    }
}

fn reply_of(req: &[u8], reply: &[u8]) -> (Code, Vec<u8>, String) {
    let ra: [u8; 16] = req[4..20].try_into().unwrap();
    let v = verify_reply(reply, &ra, SECRET.as_bytes(), true).unwrap();
    let msg: Vec<u8> = v.all(REPLY_MESSAGE).flatten().copied().collect();
    (
        v.code(),
        v.first(STATE).unwrap_or_default().to_vec(),
        String::from_utf8(msg).unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_is_held_and_its_retransmissions_discarded() {
    let dir = tempfile::tempdir().unwrap();
    let r = gateway(dir.path(), "call", |cfg| cfg.radius.call_wait_s = 3).await;
    let (sim, mut outbox) = simulator(&r).await;
    let (s, _) = http(&r, "PUT", "/v1/users/cal", r#"{"default_method": "call"}"#).await;
    assert_eq!(s, 201);
    let body = r#"{"type": "call", "destination": "(425) 555-0177"}"#;
    let (s, m) = http(&r, "POST", "/v1/users/cal/methods", body).await;
    assert_eq!(s, 201, "{m}");
    let ring = tokio::time::timeout(Duration::from_secs(10), outbox.recv())
        .await
        .unwrap()
        .unwrap();
    sim.call_answer(ring.id, "#").await.unwrap();
    let path = format!("/v1/users/cal/methods/{}", m["id"].as_str().unwrap());
    for _ in 0..500 {
        if http(&r, "GET", &path, "").await.1["state"] == "active" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let mut nas = Nas::new(r.radius_addr.unwrap()).await;
    let first = nas.request("cal", None, None);
    let (code, state, msg) = nas.exchange(&first, Duration::from_secs(5)).await;
    assert_eq!(
        (code, msg.as_str()),
        (Code::ACCESS_CHALLENGE, "Answer the call and press #")
    );
    let id = challenge_of(std::str::from_utf8(&state).unwrap());
    let ring = delivered_for(&mut outbox, id).await;

    // Held: no answer while the phone rings; a retransmission is discarded.
    let held = nas.request("cal", None, Some(&state));
    nas.socket.send(&held).await.unwrap();
    assert_eq!(nas.recv(Duration::from_millis(300)).await, None);
    nas.socket.send(&held).await.unwrap();
    let dup = "client=\"call\",reason=\"duplicate\"";
    for _ in 0..500 {
        if series(&metrics(&r).await, "watchword_radius_discarded_total", dup) == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    sim.call_answer(ring.id, "#").await.unwrap();
    let reply = nas
        .recv(Duration::from_secs(5))
        .await
        .expect("the decision");
    assert_eq!(reply_of(&held, &reply).0, Code::ACCESS_ACCEPT);
    assert_eq!(
        nas.recv(Duration::from_millis(200)).await,
        None,
        "one answer only"
    );
    nas.socket.send(&held).await.unwrap();
    let resent = nas.recv(Duration::from_secs(2)).await.unwrap();
    assert_eq!(resent, reply, "a retransmission gets the same bytes");

    // Nobody answers: after call_wait_s the same challenge again.
    let ask = nas.request("cal", None, None);
    let (_, state, _) = nas.exchange(&ask, Duration::from_secs(5)).await;
    let waiting = nas.request("cal", None, Some(&state));
    let t0 = Instant::now();
    let (code, again, msg) = nas.exchange(&waiting, Duration::from_secs(10)).await;
    let waited = t0.elapsed();
    assert_eq!(
        (code, &again, msg.as_str()),
        (
            Code::ACCESS_CHALLENGE,
            &state,
            "Answer the call and press #"
        )
    );
    assert!(
        waited >= Duration::from_millis(2900) && waited < Duration::from_secs(8),
        "{waited:?}"
    );

    let page = metrics(&r).await;
    let d = series(
        &page,
        "watchword_radius_discarded_total",
        "client=\"call\",reason=\"duplicate\"",
    );
    assert_eq!(d, 1);
    assert_eq!(
        series(&page, "watchword_radius_resent_total", "client=\"call\""),
        1
    );
    r.shutdown();
    r.wait().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_is_refused_from_another_client_of_the_same_tenant() {
    let dir = tempfile::tempdir().unwrap();
    let r = gateway(dir.path(), "bind-a", |cfg| {
        cfg.radius.clients[0].address = "127.0.0.1".into();
        let mut b = cfg.radius.clients[0].clone();
        b.name = "bind-b".into();
        b.address = "127.0.0.2".into();
        cfg.radius.clients.push(b);
    })
    .await;
    let ra = r.radius_addr.unwrap();
    let tok = token_user(&r, "bea").await;
    let mut a = Nas::new(ra).await;
    let mut b = Nas::new_from("127.0.0.2", ra).await;
    let ask = a.request("bea", None, None);
    let (code, state, _) = a.exchange(&ask, Duration::from_secs(5)).await;
    assert_eq!(code, Code::ACCESS_CHALLENGE);
    let code_now = tok.totp(unix_now());
    // The right code with client a's State, sent by client b: refused.
    let stolen = b.request("bea", Some(&code_now), Some(&state));
    let (code, st, msg) = b.exchange(&stolen, Duration::from_secs(5)).await;
    assert_eq!(code, Code::ACCESS_REJECT, "{msg}");
    assert!(st.is_empty() && msg.contains("Start again"), "{msg}");
    // A State with its tag changed: refused too.
    let mut forged = state.clone();
    let last = forged.len() - 1;
    forged[last] = if forged[last] == b'0' { b'1' } else { b'0' };
    let req = a.request("bea", Some(&code_now), Some(&forged));
    assert_eq!(
        a.exchange(&req, Duration::from_secs(5)).await.0,
        Code::ACCESS_REJECT
    );
    // Client a itself: accepted.
    let req = a.request("bea", Some(&code_now), Some(&state));
    assert_eq!(
        a.exchange(&req, Duration::from_secs(5)).await.0,
        Code::ACCESS_ACCEPT
    );
    r.shutdown();
    r.wait().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_taken_radius_address_stops_production_only() {
    let taken = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let dev = gateway(dir.path(), "taken", |cfg| cfg.radius.listen = addr.clone()).await;
    assert_eq!(dev.radius_addr, None, "development: logged, RADIUS off");
    dev.shutdown();
    dev.wait().await;
    let mut cfg = Config::development();
    cfg.server.profile = watchword_gateway::config::Profile::Production;
    // Only the RADIUS bind is under test: the production guards waived.
    cfg.server.allow = watchword_gateway::config::PRODUCTION_RULES
        .iter()
        .map(|(n, _)| n.to_string())
        .collect();
    cfg.server.listen = "127.0.0.1:0".into();
    cfg.server.metrics_listen = "127.0.0.1:0".into();
    cfg.http.listen = String::new();
    cfg.audit.enabled = false;
    cfg.storage.path = Default::default();
    cfg.radius.listen = addr.clone();
    let e = start(cfg).await.unwrap_err();
    assert!(e.starts_with(&format!("radius.listen {addr}:")), "{e}");
    assert!(!e.contains("demo-radius-secret"));
}

// ---------------------------------------------------------------- garbage

/// What the server must do with one datagram (the rules of docs/radius.md,
/// in the server's order).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Fate {
    Malformed,
    UnsupportedCode,
    BadAuthenticator,
    MissingMessageAuthenticator,
    Answered,
    Resent,
}

fn predict(bytes: &[u8], answered: &mut std::collections::HashSet<(u8, [u8; 16])>) -> Fate {
    if bytes.len() > packet::MAX_PACKET {
        return Fate::Malformed;
    }
    let Ok(p) = decode(bytes) else {
        return Fate::Malformed;
    };
    if p.code() != Code::ACCESS_REQUEST {
        return Fate::UnsupportedCode;
    }
    match check_message_authenticator(&p, SECRET.as_bytes()) {
        MessageAuth::Invalid => return Fate::BadAuthenticator,
        MessageAuth::Absent => return Fate::MissingMessageAuthenticator,
        MessageAuth::Valid => {}
    }
    if let Some(h) = p.first(USER_PASSWORD)
        && reveal_user_password(h, SECRET.as_bytes(), p.authenticator()).is_err()
    {
        return Fate::Malformed;
    }
    if answered.insert((p.identifier(), *p.authenticator())) {
        Fate::Answered
    } else {
        Fate::Resent
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_is_counted_and_a_valid_request_is_answered_right_after() {
    let dir = tempfile::tempdir().unwrap();
    let r = gateway(dir.path(), "junk", |cfg| {
        cfg.radius.clients[0].address = "127.0.0.1".into();
    })
    .await;
    let ra = r.radius_addr.unwrap();
    let before = metrics(&r).await;
    let unknown_before = series(
        &before,
        "watchword_radius_discarded_total",
        "client=\"_unknown\",reason=\"unknown_client\"",
    );
    let mut nas = Nas::new(ra).await;
    let stranger = UdpSocket::bind("127.0.0.3:0").await.unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x5eed_4ad1);
    let mut answered = std::collections::HashSet::new();
    let mut fates: std::collections::HashMap<Fate, u64> = Default::default();
    let mut sent_known = 0u64;
    let mut sent_unknown = 0u64;
    let mut replies = 0u64;
    let mut valid: Vec<Vec<u8>> = Vec::new();
    const BATCHES: usize = 300;
    const PER_BATCH: usize = 10;
    for _ in 0..BATCHES {
        for _ in 0..PER_BATCH {
            let base = nas.request("nobody", Some("123456"), None);
            let d: Vec<u8> = match rng.random_range(0..10) {
                // Random bytes, any length up to beyond the largest packet.
                0 => {
                    let len = match rng.random_range(0..4) {
                        0 => rng.random_range(0..20),
                        1 => rng.random_range(20..200),
                        2 => rng.random_range(200..4097),
                        _ => rng.random_range(4097..6000),
                    };
                    (0..len).map(|_| rng.random()).collect()
                }
                // Random bytes behind a plausible header.
                1 => {
                    let len: usize = rng.random_range(20..600);
                    let mut b: Vec<u8> = (0..len).map(|_| rng.random()).collect();
                    b[0] = 1;
                    b[2..4].copy_from_slice(&(len as u16).to_be_bytes());
                    b
                }
                // A valid request with a few bits flipped.
                2 | 3 => {
                    let mut b = base;
                    for _ in 0..rng.random_range(1..4) {
                        let i = rng.random_range(0..b.len());
                        b[i] ^= 1 << rng.random_range(0..8);
                    }
                    b
                }
                // Truncated, or its Length field changed.
                4 => {
                    let mut b = base;
                    if rng.random() {
                        b.truncate(rng.random_range(0..b.len()));
                    } else {
                        let l: u16 = rng.random();
                        b[2..4].copy_from_slice(&l.to_be_bytes());
                    }
                    b
                }
                // Another code (Accounting-Request, Status-Server, ...).
                5 => {
                    let mut b = base;
                    b[0] = [0, 2, 3, 4, 5, 11, 12, 40, 255][rng.random_range(0..9)];
                    b
                }
                // No Message-Authenticator; a bad User-Password length.
                6 => {
                    let mut b = RequestBuilder::without_message_authenticator(1, rng.random());
                    b.push(USER_NAME, b"nobody").unwrap();
                    b.finish(SECRET.as_bytes())
                }
                7 => {
                    let mut b = RequestBuilder::new(2, rng.random());
                    b.push(USER_NAME, b"nobody").unwrap();
                    b.push(USER_PASSWORD, &[7; 17]).unwrap();
                    b.push(CHAP_PASSWORD, &[1; 17]).unwrap();
                    b.finish(SECRET.as_bytes())
                }
                // Valid, or a retransmission of an earlier valid one.
                8 if !valid.is_empty() && rng.random() => {
                    valid[rng.random_range(0..valid.len())].clone()
                }
                8 => {
                    valid.push(base.clone());
                    base
                }
                // From an address that is no client.
                _ => {
                    stranger.send_to(&base, ra).await.unwrap();
                    sent_unknown += 1;
                    continue;
                }
            };
            *fates.entry(predict(&d, &mut answered)).or_default() += 1;
            nas.socket.send(&d).await.unwrap();
            sent_known += 1;
        }
        // A valid request after each batch: it is answered, and everything
        // before it has been handled (one queue, one reader).
        let sync = nas.request("nobody", None, None);
        assert_eq!(predict(&sync, &mut answered), Fate::Answered);
        *fates.entry(Fate::Answered).or_default() += 1;
        nas.socket.send(&sync).await.unwrap();
        sent_known += 1;
        loop {
            let reply = nas
                .recv(Duration::from_secs(5))
                .await
                .expect("the server answers a valid request right after garbage");
            replies += 1;
            if reply[4..20] == reply_auth(&sync, &reply)[..] {
                break;
            }
        }
    }
    let page = metrics(&r).await;
    let n = |name: &str, labels: &str| series(&page, name, labels);
    let d = |reason: &str| {
        n(
            "watchword_radius_discarded_total",
            &format!("client=\"junk\",reason=\"{reason}\""),
        )
    };
    let f = |fate: Fate| fates.get(&fate).copied().unwrap_or(0);
    assert_eq!(
        n("watchword_radius_requests_total", "client=\"junk\""),
        sent_known
    );
    assert_eq!(d("malformed"), f(Fate::Malformed), "{fates:?}");
    assert_eq!(d("unsupported_code"), f(Fate::UnsupportedCode));
    assert_eq!(d("bad_authenticator"), f(Fate::BadAuthenticator));
    assert_eq!(
        d("missing_message_authenticator"),
        f(Fate::MissingMessageAuthenticator)
    );
    assert_eq!(d("duplicate") + d("full"), 0);
    let answers = n("watchword_radius_rejects_total", "client=\"junk\"")
        + n("watchword_radius_accepts_total", "client=\"junk\"")
        + n("watchword_radius_challenges_total", "client=\"junk\"");
    assert_eq!(answers, f(Fate::Answered));
    assert_eq!(
        n("watchword_radius_resent_total", "client=\"junk\""),
        f(Fate::Resent)
    );
    assert_eq!(replies, f(Fate::Answered) + f(Fate::Resent));
    let discarded: u64 = [
        "malformed",
        "unsupported_code",
        "bad_authenticator",
        "missing_message_authenticator",
    ]
    .iter()
    .map(|r| d(r))
    .sum();
    assert_eq!(
        discarded + answers + f(Fate::Resent),
        sent_known,
        "every datagram accounted for"
    );
    assert!(
        f(Fate::Malformed) > 100 && f(Fate::BadAuthenticator) > 100,
        "{fates:?}"
    );
    let unknown_after = n(
        "watchword_radius_discarded_total",
        "client=\"_unknown\",reason=\"unknown_client\"",
    );
    assert_eq!(unknown_after - unknown_before, sent_unknown);
    r.shutdown();
    r.wait().await;
}

/// The Response Authenticator `reply` should carry if it answers `req`.
fn reply_auth(req: &[u8], reply: &[u8]) -> [u8; 16] {
    use md5::{Digest, Md5};
    let len = u16::from_be_bytes([reply[2], reply[3]]) as usize;
    Md5::new()
        .chain_update(&reply[..4])
        .chain_update(&req[4..20])
        .chain_update(&reply[20..len])
        .chain_update(SECRET.as_bytes())
        .finalize()
        .into()
}
