//! The `watchword` operator subcommands end to end: a real `watchword serve`
//! child on free loopback ports with a temporary configuration, and the
//! binary's `users`, `methods`, `tokens`, `check`, `keygen`, `backup` and
//! `check-store` run against it as an operator would.
//!
//! These tests must never leave a server running (a guard kills it, also on
//! panic), and they check that no output carries a key or a full phone
//! number (the server's answers are masked; the CLI prints only them).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

mod child;

use child::{ADMIN_KEY, BIN, CLIENT_KEY, Server, free_port};

/// Runs the binary with `args` then `extra`, with neither WATCHWORD_URL nor
/// WATCHWORD_KEY inherited.
fn ww(args: &[&str], extra: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .args(extra)
        .env_remove("WATCHWORD_URL")
        .env_remove("WATCHWORD_KEY")
        .output()
        .unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Asserts exit 0 and parses stdout as JSON.
fn json_ok(o: &Output) -> Value {
    assert!(
        o.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {}",
        o.status.code(),
        stdout(o),
        stderr(o)
    );
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", stdout(o)))
}

/// Asserts exit 1 and an `error: CODE:` line on stderr.
fn fails_with(o: &Output, code: &str) {
    assert_eq!(
        o.status.code(),
        Some(1),
        "stdout: {}\nstderr: {}",
        stdout(o),
        stderr(o)
    );
    let err = stderr(o);
    assert!(err.contains(&format!("error: {code}: ")), "{err}");
}

/// No key of this file's configuration and no full phone number in `o`.
fn nothing_secret(o: &Output) {
    let all = format!("{}{}", stdout(o), stderr(o));
    for secret in [ADMIN_KEY, CLIENT_KEY, "4255550100"] {
        assert!(!all.contains(secret), "{secret} printed:\n{all}");
    }
}

#[test]
fn users_and_methods_round_trip_through_the_http_api() {
    let s = Server::start();

    // Created, then merged: the second add keeps the display name.
    let add = s.api(
        ADMIN_KEY,
        &[
            "users",
            "add",
            "bob/ops",
            "--display-name",
            "Bob",
            "--email",
            "bob@example.com",
        ],
    );
    let user = json_ok(&add);
    assert!(stderr(&add).contains("created"), "{}", stderr(&add));
    assert_eq!(
        user["subject"], "bob/ops",
        "the subject survives the percent-encoding"
    );
    assert_eq!(user["email"], "b***@example.com");
    let again = s.api(
        ADMIN_KEY,
        &["users", "add", "bob/ops", "--locale", "fr", "--disabled"],
    );
    let merged = json_ok(&again);
    assert!(stderr(&again).contains("updated"), "{}", stderr(&again));
    assert_eq!(merged["display_name"], "Bob");
    assert_eq!(merged["locale"], "fr");
    assert_eq!(merged["enabled"], false);
    let enabled = json_ok(&s.api(ADMIN_KEY, &["users", "add", "bob/ops", "--enabled"]));
    assert_eq!(enabled["enabled"], true);

    let shown = json_ok(&s.api(ADMIN_KEY, &["users", "show", "bob/ops"]));
    assert_eq!(shown["display_name"], "Bob");
    assert_eq!(shown["methods"], serde_json::json!([]));

    // Three more users; pages of two: --all follows `next` to the end.
    for subject in ["alice", "carol", "dave smith"] {
        json_ok(&s.api(ADMIN_KEY, &["users", "add", subject]));
    }
    let page = json_ok(&s.api(ADMIN_KEY, &["users", "list", "--limit", "2"]));
    assert_eq!(page["users"].as_array().unwrap().len(), 2);
    assert!(page["next"].is_string());
    let all = json_ok(&s.api(ADMIN_KEY, &["users", "list", "--all", "--limit", "2"]));
    let subjects: Vec<&str> = all["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["subject"].as_str().unwrap())
        .collect();
    assert_eq!(subjects, ["alice", "bob/ops", "carol", "dave smith"]);
    assert!(all["next"].is_null());

    // A method: pending, destination masked, and shown again by its id.
    let add = s.api(
        ADMIN_KEY,
        &[
            "methods",
            "add",
            "bob/ops",
            "--type",
            "sms",
            "--destination",
            "+14255550100",
        ],
    );
    nothing_secret(&add);
    let method = json_ok(&add);
    assert_eq!(method["state"], "pending");
    assert_eq!(method["type"], "sms");
    let id = method["id"]
        .as_str()
        .map(str::to_owned)
        .unwrap_or_else(|| method["id"].to_string());
    let shown = s.api(ADMIN_KEY, &["methods", "show", "bob/ops", &id]);
    nothing_secret(&shown);
    assert_eq!(json_ok(&shown)["id"], method["id"]);
    let user = s.api(ADMIN_KEY, &["users", "show", "bob/ops"]);
    nothing_secret(&user);
    assert_eq!(json_ok(&user)["methods"].as_array().unwrap().len(), 1);

    // A check as an upstream system makes it (the client role may).
    let check = s.api(CLIENT_KEY, &["check", "alice"]);
    assert!(json_ok(&check)["result"].is_string());

    // Delete the method, then the user; it is gone.
    let gone = s.api(ADMIN_KEY, &["methods", "delete", "bob/ops", &id]);
    assert!(gone.status.success(), "{}", stderr(&gone));
    fails_with(
        &s.api(ADMIN_KEY, &["methods", "show", "bob/ops", &id]),
        "not_found",
    );
    let deleted = s.api(ADMIN_KEY, &["users", "delete", "bob/ops"]);
    assert!(deleted.status.success(), "{}", stderr(&deleted));
    assert_eq!(stdout(&deleted).trim(), "deleted");
    fails_with(
        &s.api(ADMIN_KEY, &["users", "show", "bob/ops"]),
        "not_found",
    );
}

/// The `serial` of a token answer, as text.
fn serial_of(v: &Value) -> String {
    v["serial"]
        .as_str()
        .unwrap_or_else(|| panic!("no serial in {v}"))
        .to_owned()
}

#[test]
fn tokens_enroll_import_assign_reset_and_delete_through_the_http_api() {
    let s = Server::start();
    let dir = tempfile::tempdir().unwrap();
    json_ok(&s.api(ADMIN_KEY, &["users", "add", "tina"]));

    // Enrolled with --qr: the SVG goes to the file, not to stdout; the URI
    // (with the secret) is printed once, with a warning on stderr.
    let qr = dir.path().join("tina.svg");
    let q = qr.to_str().unwrap();
    let enroll = s.api(
        ADMIN_KEY,
        &["tokens", "enroll", "tina", "--type", "totp", "--qr", q],
    );
    nothing_secret(&enroll);
    let token = json_ok(&enroll);
    let serial = serial_of(&token);
    let uri = token["otpauth_uri"].as_str().unwrap();
    assert!(
        uri.starts_with("otpauth://totp/") && uri.contains("secret="),
        "{uri}"
    );
    assert!(token.get("qr_svg").is_none(), "{token}");
    let warning = stderr(&enroll);
    assert!(
        warning.contains("shown only this once") && warning.contains(q),
        "{warning}"
    );
    assert_eq!(warning.lines().count(), 1, "{warning}");
    let svg = std::fs::read_to_string(&qr).unwrap();
    assert!(svg.starts_with("<?xml"), "{svg}");

    // The same --qr file again: refused before anything is enrolled.
    let again = s.api(
        ADMIN_KEY,
        &["tokens", "enroll", "tina", "--type", "totp", "--qr", q],
    );
    assert_eq!(again.status.code(), Some(1));
    assert!(
        stderr(&again).contains("already exists"),
        "{}",
        stderr(&again)
    );
    assert_eq!(std::fs::read_to_string(&qr).unwrap(), svg);

    // Without --qr the SVG is in the printed answer; options are passed.
    let hotp = json_ok(&s.api(
        ADMIN_KEY,
        &[
            "tokens",
            "enroll",
            "tina",
            "--type",
            "hotp",
            "--algorithm",
            "sha256",
            "--digits",
            "8",
        ],
    ));
    assert!(hotp["qr_svg"].as_str().unwrap().starts_with("<?xml"));
    let hotp_uri = hotp["otpauth_uri"].as_str().unwrap();
    assert!(
        hotp_uri.starts_with("otpauth://hotp/")
            && hotp_uri.contains("SHA256")
            && hotp_uri.contains("digits=8"),
        "{hotp_uri}"
    );

    // Shown: its parameters and user, never its secret.
    let shown = s.api(ADMIN_KEY, &["tokens", "show", &serial]);
    nothing_secret(&shown);
    assert!(!stdout(&shown).contains("secret="), "{}", stdout(&shown));
    let info = json_ok(&shown);
    assert_eq!(info["subject"], "tina");
    assert_eq!(info["type"], "totp");
    assert_eq!(info["state"], "active");

    // A CSV import: the good row imported, the bad one skipped and named.
    let csv = dir.path().join("tokens.csv");
    std::fs::write(
        &csv,
        "serial,secret,period\n\
         CLI-1,GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ,30\n\
         CLI-2,not base32!,30\n",
    )
    .unwrap();
    let import = s.api(
        ADMIN_KEY,
        &["tokens", "import", csv.to_str().unwrap(), "--format", "csv"],
    );
    let out = format!("{}{}", stdout(&import), stderr(&import));
    assert!(!out.contains("GEZDGNBVGY3TQOJQ"), "{out}");
    let report = json_ok(&import);
    assert_eq!(report["imported"], 1, "{report}");
    let skipped = report["skipped"].as_array().unwrap();
    assert_eq!(skipped.len(), 1, "{report}");
    assert_eq!(skipped[0]["serial"], "CLI-2");

    // Assigned to the user, reset, a failed resync, then deleted.
    let assigned = json_ok(&s.api(ADMIN_KEY, &["tokens", "assign", "CLI-1", "tina"]));
    assert_eq!(assigned["serial"], "CLI-1");
    assert_eq!(assigned["subject"], "tina");
    let reset = json_ok(&s.api(ADMIN_KEY, &["tokens", "reset", "CLI-1"]));
    assert_eq!(reset["failcount"], 0);
    assert_eq!(reset["state"], "active");
    fails_with(
        &s.api(
            ADMIN_KEY,
            &[
                "tokens", "resync", "CLI-1", "--code1", "000000", "--code2", "000000",
            ],
        ),
        "invalid_argument",
    );
    let deleted = s.api(ADMIN_KEY, &["tokens", "delete", "CLI-1"]);
    assert!(deleted.status.success(), "{}", stderr(&deleted));
    assert_eq!(stdout(&deleted).trim(), "deleted");
    fails_with(&s.api(ADMIN_KEY, &["tokens", "show", "CLI-1"]), "not_found");
}

#[test]
fn token_imports_print_the_servers_error_and_never_the_password() {
    let s = Server::start();
    let dir = tempfile::tempdir().unwrap();
    let xml = dir.path().join("tokens.pskc");
    std::fs::write(&xml, "<?xml version=\"1.0\"?><KeyContainer/>").unwrap();
    let x = xml.to_str().unwrap();

    // PSKC is not supported by the server yet: its error, exit 1.
    fails_with(
        &s.api(ADMIN_KEY, &["tokens", "import", x, "--format", "pskc"]),
        "invalid_argument",
    );
    let pw = s.api(
        ADMIN_KEY,
        &[
            "tokens",
            "import",
            x,
            "--format",
            "pskc",
            "--password",
            "hunter2-pass",
        ],
    );
    fails_with(&pw, "invalid_argument");
    assert!(!stderr(&pw).contains("hunter2"), "{}", stderr(&pw));
    let key = dir.path().join("psk.hex");
    std::fs::write(&key, "00112233445566778899aabbccddeeff\n").unwrap();
    let k = s.api(
        ADMIN_KEY,
        &[
            "tokens",
            "import",
            x,
            "--format",
            "pskc",
            "--key-file",
            key.to_str().unwrap(),
        ],
    );
    fails_with(&k, "invalid_argument");
    assert!(!stderr(&k).contains("aabbccdd"), "{}", stderr(&k));

    // A file over 16 MiB is refused locally (a sparse file: nothing written).
    let big = dir.path().join("big.csv");
    std::fs::File::create(&big)
        .unwrap()
        .set_len((16 << 20) + 1)
        .unwrap();
    let o = s.api(
        ADMIN_KEY,
        &["tokens", "import", big.to_str().unwrap(), "--format", "csv"],
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("16 MiB"), "{}", stderr(&o));

    // A password for a CSV file is a mistake, said before any request.
    let csv_pw = s.api(
        ADMIN_KEY,
        &["tokens", "import", x, "--format", "csv", "--password", "p"],
    );
    assert_eq!(csv_pw.status.code(), Some(1));
    assert!(stderr(&csv_pw).contains("PSKC"), "{}", stderr(&csv_pw));
}

#[test]
fn wrong_keys_and_roles_are_refused_with_the_servers_error() {
    let s = Server::start();
    let wrong = s.api("not-a-configured-key", &["users", "show", "alice"]);
    fails_with(&wrong, "unauthenticated");
    assert!(!stderr(&wrong).contains("not-a-configured-key"));

    let client = s.api(CLIENT_KEY, &["users", "add", "alice"]);
    fails_with(&client, "forbidden");
    nothing_secret(&client);

    // The key from the environment works like --key.
    let from_env = Command::new(BIN)
        .args(["users", "add", "erin", "--url", &s.url])
        .env_remove("WATCHWORD_URL")
        .env("WATCHWORD_KEY", ADMIN_KEY)
        .output()
        .unwrap();
    assert_eq!(json_ok(&from_env)["subject"], "erin");

    // No key at all: a clear message, no request.
    let none = ww(&["users", "show", "alice", "--url", &s.url], &[]);
    assert_eq!(none.status.code(), Some(1));
    let err = stderr(&none);
    assert!(
        err.contains("--key") && err.contains("WATCHWORD_KEY"),
        "{err}"
    );

    // A wrong confirmation code: the error and attempts_left.
    let m = json_ok(&s.api(
        ADMIN_KEY,
        &[
            "methods",
            "add",
            "erin",
            "--type",
            "email",
            "--destination",
            "erin@example.com",
        ],
    ));
    let id = m["id"]
        .as_str()
        .map(str::to_owned)
        .unwrap_or_else(|| m["id"].to_string());
    let bad = s.api(
        ADMIN_KEY,
        &["methods", "confirm", "erin", &id, "--code", "000000x"],
    );
    fails_with(&bad, "invalid_argument");
    assert!(stderr(&bad).contains("attempts left"), "{}", stderr(&bad));
}

#[test]
fn an_unreachable_server_is_named_in_the_error() {
    let url = format!("http://127.0.0.1:{}", free_port());
    let o = ww(
        &["users", "show", "alice"],
        &["--url", &url, "--key", ADMIN_KEY],
    );
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(
        err.contains(&format!("cannot reach the Watchword HTTP API at {url}")),
        "{err}"
    );
    assert!(!err.contains(ADMIN_KEY));

    let https = ww(
        &["users", "show", "alice"],
        &["--url", "https://127.0.0.1:9401", "--key", ADMIN_KEY],
    );
    assert_eq!(https.status.code(), Some(1));
    assert!(
        stderr(&https).contains("https is not supported"),
        "{}",
        stderr(&https)
    );
}

#[test]
fn keygen_creates_a_private_key_file_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("master.key");
    let p = path.to_str().unwrap();
    let first = ww(&["keygen", p], &[]);
    assert!(first.status.success(), "{}", stderr(&first));
    let text = stdout(&first);
    assert!(
        text.contains("master.key") && text.contains("storage.master_key"),
        "{text}"
    );
    let key = std::fs::read_to_string(&path).unwrap();
    assert_eq!(key.trim_end().len(), 64);
    assert!(!text.contains(key.trim_end()), "the key was printed");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    let second = ww(&["keygen", p], &[]);
    assert_eq!(second.status.code(), Some(1));
    assert!(
        stderr(&second).contains("already exists"),
        "{}",
        stderr(&second)
    );
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        key,
        "left as it was"
    );
}

#[test]
fn backup_and_check_store_while_the_server_runs() {
    let s = Server::start();
    json_ok(&s.api(
        ADMIN_KEY,
        &["users", "add", "alice", "--email", "alice@example.com"],
    ));
    let m = s.api(
        ADMIN_KEY,
        &[
            "methods",
            "add",
            "alice",
            "--type",
            "sms",
            "--destination",
            "+14255550100",
        ],
    );
    json_ok(&m);

    let out = tempfile::tempdir().unwrap();
    let dest = out.path().join("backup-1");
    let d = dest.to_str().unwrap();
    let backup = ww(&["backup", d, "--config", s.config_arg()], &[]);
    assert!(
        backup.status.success(),
        "{}\n{}",
        stdout(&backup),
        stderr(&backup)
    );
    nothing_secret(&backup);
    let text = stdout(&backup);
    assert!(
        text.contains("1 users") && text.contains("1 methods"),
        "{text}"
    );
    assert!(dest.join("watchword.db").is_file());
    assert!(
        !dest.join("master.key").exists(),
        "the key is never in the backup"
    );

    // An existing destination is refused and left alone.
    let again = ww(&["backup", d, "--config", s.config_arg()], &[]);
    assert_eq!(again.status.code(), Some(1));
    assert!(
        stderr(&again).contains("already exists"),
        "{}",
        stderr(&again)
    );
    assert!(dest.join("watchword.db").is_file());

    let check = ww(&["check-store", "--config", s.config_arg()], &[]);
    assert!(
        check.status.success(),
        "{}\n{}",
        stdout(&check),
        stderr(&check)
    );
    let text = stdout(&check);
    for line in [
        "schema version: ",
        "users: 1",
        "methods: 1",
        "problems: none",
    ] {
        assert!(text.contains(line), "{line} missing:\n{text}");
    }

    // The same data with another master key: refused, exit 1.
    let other_key = s.dir.path().join("other.key");
    assert!(
        ww(&["keygen", other_key.to_str().unwrap()], &[])
            .status
            .success()
    );
    let other = with_master_key(&s.config, &other_key, s.dir.path());
    let wrong = ww(&["check-store", "--config", other.to_str().unwrap()], &[]);
    assert_eq!(wrong.status.code(), Some(1), "{}", stdout(&wrong));
    assert!(stderr(&wrong).contains("master key"), "{}", stderr(&wrong));
}

/// A copy of the configuration `config` naming `key` as `storage.master_key`.
fn with_master_key(config: &Path, key: &Path, dir: &Path) -> PathBuf {
    let text = std::fs::read_to_string(config).unwrap().replace(
        "[storage]\n",
        &format!("[storage]\nmaster_key = {:?}\n", key.display().to_string()),
    );
    let path = dir.join("other.toml");
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn backup_of_a_data_directory_never_used_says_there_is_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("w.toml");
    std::fs::write(
        &config,
        format!(
            "[storage]\npath = {:?}\n[[tenants]]\nname = \"demo\"\nkeys = [\"demo-key\"]\n",
            dir.path().join("data").display().to_string()
        ),
    )
    .unwrap();
    let dest = dir.path().join("b");
    let o = ww(
        &[
            "backup",
            dest.to_str().unwrap(),
            "--config",
            config.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("nothing to back up"), "{}", stderr(&o));
    assert!(!dest.exists());
    assert!(
        !dir.path().join("data").exists(),
        "a tool makes no key and no directory"
    );
}

#[test]
fn version_and_help_name_the_binary_and_say_what_it_does() {
    let v = ww(&["--version"], &[]);
    assert!(v.status.success());
    assert_eq!(
        stdout(&v).trim(),
        format!("watchword {}", env!("CARGO_PKG_VERSION"))
    );
    let h = stdout(&ww(&["--help"], &[]));
    assert!(
        h.starts_with("Watchword, a one-time passcode and MFA server"),
        "{h}"
    );
    assert!(h.contains("Usage: watchword"), "{h}");
}

#[test]
fn pins_reset_once_then_show_masked_through_the_http_api() {
    let s = Server::start();
    json_ok(&s.api(ADMIN_KEY, &["users", "add", "pia"]));
    let shown = json_ok(&s.api(ADMIN_KEY, &["pins", "show", "pia"]));
    assert_eq!(shown, serde_json::json!({"set": false}));
    let reset = json_ok(&s.api(ADMIN_KEY, &["pins", "reset", "pia"]));
    let pin = reset["pin"].as_str().unwrap().to_owned();
    assert_eq!((pin.len(), &reset["length"]), (5, &serde_json::json!(5)));
    let shown = s.api(ADMIN_KEY, &["pins", "show", "pia"]);
    assert!(!stdout(&shown).contains(&pin));
    assert_eq!(json_ok(&shown)["masked"], "*****");
    fails_with(&s.api(CLIENT_KEY, &["pins", "reset", "pia"]), "forbidden");
    fails_with(&s.api(ADMIN_KEY, &["pins", "reset", "nobody"]), "not_found");
}

#[test]
fn helpdesk_verify_and_check_speak_to_the_http_api() {
    let s = Server::start();
    json_ok(&s.api(ADMIN_KEY, &["users", "add", "hal"]));
    // No contact to send a code to: the server's clear refusal.
    let v = s.api(
        ADMIN_KEY,
        &["helpdesk", "verify", "hal", "--caller-id", "+14255550100"],
    );
    fails_with(&v, "invalid_argument");
    assert!(
        stderr(&v).contains("no confirmed contact"),
        "{}",
        stderr(&v)
    );
    fails_with(
        &s.api(ADMIN_KEY, &["helpdesk", "verify", "nobody"]),
        "not_found",
    );
    fails_with(
        &s.api(ADMIN_KEY, &["helpdesk", "check", "wh1nothing", "123456"]),
        "not_found",
    );
    fails_with(
        &s.api(CLIENT_KEY, &["helpdesk", "verify", "hal"]),
        "forbidden",
    );
}

#[test]
fn check_config_refuses_a_production_file_with_development_defaults_and_names_each_rule() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("prod.toml");
    std::fs::write(
        &file,
        "[server]\nprofile = \"production\"\nlisten = \"0.0.0.0:7400\"\n\
         [[tenants]]\nname = \"demo\"\nkeys = [\"demo-key\"]\n",
    )
    .unwrap();
    let o = ww(&["check-config", file.to_str().unwrap()], &[]);
    assert!(!o.status.success());
    let e = stderr(&o);
    for rule in [
        "simulator_tenants",
        "simulated_carriers",
        "development_keys",
        "plaintext",
    ] {
        assert!(e.contains(&format!("rule {rule}")), "{rule}: {e}");
    }
    assert!(!e.contains("demo-key"), "{e}");
}
