//! The `watchword` binary: `serve [--config FILE]`, `print-config`,
//! `check-config FILE`, the store tools (`keygen`, `backup`, `check-store`)
//! and the HTTP API subcommands (`users`, `methods`, `tokens`, `check`). It
//! only parses flags, sets up logging and calls the library
//! ([`watchword_gateway::cli`] for the tools and the API client); it must
//! never print a tenant key, an HTTP key, a master key or a token file's
//! password or key, nor a full phone number or address (it prints the
//! server's answers, already masked). A token's secret appears only in the
//! answer of `tokens enroll`, which hands it over once.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};
use serde_json::{Value, json};
use watchword_gateway::cli::{
    self, ApiClient, CliError, EnrollFields, ImportFormat, ImportSecret, QrFile, TokenKind,
    UserFields,
};
use watchword_gateway::config::Config;

/// mimalloc: per-thread heaps that take frees from other threads without a
/// lock. glibc malloc serialised the gateway on its arena locks, because
/// audit lines and delivery messages are built on one thread and freed on
/// another.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Watchword: a one-time passcode engine behind protocol v1.
#[derive(Parser)]
#[command(
    name = "watchword",
    version,
    about = "Watchword, a one-time passcode and MFA server: `watchword serve` runs it (the \
             binary protocol, the HTTP API and RADIUS); the other commands check its \
             configuration, manage its keys and store, and manage users, methods and tokens \
             through a running server's HTTP API."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway. Without --config, the embedded development profile:
    /// protocol on 127.0.0.1:7400, metrics on 127.0.0.1:9400, simulated
    /// carriers, tenant `demo` with key `demo-key` (role simulator).
    Serve {
        /// A TOML configuration file (see `watchword print-config`).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Override `server.listen`.
        #[arg(long)]
        listen: Option<String>,
        /// Override `server.metrics_listen`.
        #[arg(long)]
        metrics_listen: Option<String>,
        /// Override `http.listen` (empty turns the HTTP API off).
        #[arg(long)]
        http_listen: Option<String>,
        /// Delete the restart snapshot (pending.snapshot in the data
        /// directory) unread and start without the challenges it holds: for a
        /// snapshot that cannot be opened (another version, another master
        /// key, a damaged file), which otherwise stops the start.
        #[arg(long)]
        discard_snapshot: bool,
    },
    /// Print the full default configuration as commented TOML.
    PrintConfig,
    /// Validate a configuration file; exits 1 listing every mistake.
    CheckConfig {
        /// The file to check.
        file: PathBuf,
    },
    /// Create a new master key file (mode 0600; an existing file is never
    /// overwritten). Keep it outside the data directory, back it up
    /// separately, and name it in `storage.master_key`. The key is not
    /// printed.
    Keygen {
        /// The key file to create.
        file: PathBuf,
    },
    /// Online backup of the directory's database while a server may be
    /// running: DEST (which must not exist) is created as a directory
    /// holding `watchword.db`, which is then opened and checked. The master
    /// key is not part of the backup; restoring needs the same key file.
    Backup {
        /// The new backup directory.
        dest: PathBuf,
        /// The server's configuration (default: the development profile, as
        /// `serve`).
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Check the directory's database (read-only; a server may be running):
    /// schema version, counts, problems. Exits 1 when it is not clean or the
    /// master key does not match.
    CheckStore {
        /// The server's configuration (default: the development profile, as
        /// `serve`).
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Users of the key's tenant, through a running server's HTTP API.
    Users {
        #[command(subcommand)]
        command: UsersCommand,
    },
    /// A user's contact methods, through a running server's HTTP API.
    Methods {
        #[command(subcommand)]
        command: MethodsCommand,
    },
    /// OTP tokens: software tokens enrolled for a user, hardware tokens
    /// imported from a file, through a running server's HTTP API.
    Tokens {
        #[command(subcommand)]
        command: TokensCommand,
    },
    /// Users' PINs, through a running server's HTTP API.
    Pins {
        #[command(subcommand)]
        command: PinsCommand,
    },
    /// Help-desk caller verification, through a running server's HTTP API
    /// (a helpdesk or admin key).
    Helpdesk {
        #[command(subcommand)]
        command: HelpdeskCommand,
    },
    /// Decide a check for a user (POST /v1/check), as an upstream system
    /// would: useful to test a user. Needs a key of role client or above.
    Check {
        /// The user.
        subject: String,
        /// The user's answer (a code), when answering a challenge.
        #[arg(long)]
        answer: Option<String>,
        /// The challenge's state, from the previous answer.
        #[arg(long)]
        state: Option<String>,
        #[command(flatten)]
        api: ApiArgs,
    },
}

/// Where the HTTP API is and the key to use. Plain http:// only: https is
/// not supported by the CLI yet.
#[derive(Args)]
struct ApiArgs {
    /// The server's HTTP API, http://HOST:PORT (https is not supported by
    /// the CLI yet). Default: $WATCHWORD_URL, else http://127.0.0.1:9401.
    #[arg(long, value_name = "URL")]
    url: Option<String>,
    /// An HTTP key of the tenant (from its `http_keys`). Default:
    /// $WATCHWORD_KEY, which is better: a key on the command line can be
    /// seen by other local users.
    #[arg(long, value_name = "KEY")]
    key: Option<String>,
}

#[derive(Subcommand)]
enum UsersCommand {
    /// Create a user, or update an existing one (PUT /v1/users/SUBJECT):
    /// on an existing user the fields given replace theirs and the others
    /// keep their values (there is no separate `update`).
    Add {
        /// The user's subject (any text; it is percent-encoded in the URL).
        subject: String,
        /// The name shown to people.
        #[arg(long)]
        display_name: Option<String>,
        /// The user's e-mail address.
        #[arg(long)]
        email: Option<String>,
        /// The user's locale (as `en`, `fr-CA`).
        #[arg(long)]
        locale: Option<String>,
        /// The method type used first.
        #[arg(long, value_parser = ["sms", "voice", "email", "call", "token"])]
        default_method: Option<String>,
        /// Disable the user (checks reject it).
        #[arg(long, conflicts_with = "enabled")]
        disabled: bool,
        /// Enable a disabled user again.
        #[arg(long)]
        enabled: bool,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Show a user and its methods (destinations masked).
    Show {
        /// The user's subject.
        subject: String,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// List users by subject, one page (or all of them with --all).
    List {
        /// Start after this subject (the `next` of the previous page).
        #[arg(long)]
        after: Option<String>,
        /// Users per page, 1 to 1000 (server default 100; 1000 with --all).
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1000))]
        limit: Option<u32>,
        /// Follow `next` until the last page and print every user.
        #[arg(long)]
        all: bool,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Delete a user with its methods, tokens and PIN.
    Delete {
        /// The user's subject.
        subject: String,
        #[command(flatten)]
        api: ApiArgs,
    },
}

/// A registrable method type.
#[derive(Clone, Copy, ValueEnum)]
enum MethodKind {
    Sms,
    Voice,
    Email,
    Call,
}

impl MethodKind {
    fn name(self) -> &'static str {
        match self {
            MethodKind::Sms => "sms",
            MethodKind::Voice => "voice",
            MethodKind::Email => "email",
            MethodKind::Call => "call",
        }
    }
}

#[derive(Subcommand)]
enum MethodsCommand {
    /// Register a method; it starts `pending` and its confirmation starts
    /// (a code sent by SMS or e-mail, or a call answered with #).
    Add {
        /// The user's subject.
        subject: String,
        /// The method's type.
        #[arg(long = "type", value_enum)]
        kind: MethodKind,
        /// The phone number (E.164 or national) or e-mail address.
        #[arg(long)]
        destination: String,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Confirm a pending sms or email method with the code it was sent.
    Confirm {
        /// The user's subject.
        subject: String,
        /// The method's id (from `methods add` or `users show`).
        method_id: String,
        /// The code the person received.
        #[arg(long)]
        code: String,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Show one method (destination masked).
    Show {
        /// The user's subject.
        subject: String,
        /// The method's id.
        method_id: String,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Delete one method.
    Delete {
        /// The user's subject.
        subject: String,
        /// The method's id.
        method_id: String,
        #[command(flatten)]
        api: ApiArgs,
    },
}

#[derive(Subcommand)]
enum HelpdeskCommand {
    /// Verify a caller who says they are SUBJECT (POST
    /// /v1/helpdesk/verifications): verified at once when the caller ID is
    /// one of the user's phones past its hold, else a code goes to the
    /// user's contact; read the answer's id for `helpdesk check`.
    Verify {
        /// The user the caller says they are.
        subject: String,
        /// The incoming call's caller ID, in any notation (omit when
        /// withheld).
        #[arg(long, default_value = "")]
        caller_id: String,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Check the code the caller read back (POST
    /// /v1/helpdesk/verifications/ID).
    Check {
        /// The verification's id (`wh1...`).
        id: String,
        /// What the caller read back.
        code: String,
        #[command(flatten)]
        api: ApiArgs,
    },
}

#[derive(Subcommand)]
enum PinsCommand {
    /// Draw a new PIN for a user (POST /v1/users/SUBJECT/pin), of the
    /// tenant's current length. The answer holds the PIN and is shown only
    /// this once: hand it to the user. Needs an admin key.
    Reset {
        /// The user's subject.
        subject: String,
        /// Also e-mail the PIN to the user (an active e-mail method, else
        /// the profile's address), in the user's language.
        #[arg(long)]
        email: bool,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Whether a user has a PIN, its length (masked) and state (GET
    /// /v1/users/SUBJECT/pin). Needs a helpdesk or admin key.
    Show {
        /// The user's subject.
        subject: String,
        #[command(flatten)]
        api: ApiArgs,
    },
}

#[derive(Subcommand)]
enum TokensCommand {
    /// Enroll a software token for a user (POST /v1/users/SUBJECT/tokens).
    /// The answer holds the token's secret (otpauth_uri, the QR code) and
    /// is shown only this once: hand it to the user, then delete it.
    Enroll {
        /// The user's subject (the user must exist: `users add`).
        subject: String,
        /// The token's type.
        #[arg(long = "type", value_name = "TYPE", value_enum)]
        kind: TokenKind,
        /// The HMAC algorithm (server default SHA1; many authenticator apps
        /// know only SHA1).
        #[arg(long, value_parser = ["SHA1", "SHA256", "SHA512"], ignore_case = true)]
        algorithm: Option<String>,
        /// Code length, 6 or 8 (server default 6).
        #[arg(long, value_parser = parse_digits)]
        digits: Option<u8>,
        /// Seconds per code, 30 or 60, totp only (server default 30).
        #[arg(long, value_parser = parse_period)]
        period: Option<u32>,
        /// Write the QR code (SVG) to this new file (mode 0600; never over an
        /// existing file) instead of printing it.
        #[arg(long, value_name = "FILE")]
        qr: Option<PathBuf>,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Import hardware tokens from a file (POST /v1/tokens/import): every
    /// row or key package is reported, imported or skipped with the reason.
    Import {
        /// The token file (at most 16 MiB).
        file: PathBuf,
        /// The file's format.
        #[arg(long, value_enum)]
        format: ImportFormat,
        /// The passphrase of an encrypted PSKC file. It is seen by other
        /// local users on the command line: prefer a key file when you can.
        #[arg(long, conflicts_with = "key_file")]
        password: Option<String>,
        /// A file holding the pre-shared key of an encrypted PSKC file: hex
        /// (surrounding whitespace ignored) or the raw 16, 24 or 32 bytes.
        #[arg(long, value_name = "FILE")]
        key_file: Option<PathBuf>,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Show a token: type, parameters, user, state, failcount (never its
    /// secret).
    Show {
        /// The token's serial.
        serial: String,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Unlock a token and set its failcount to 0.
    Reset {
        /// The token's serial.
        serial: String,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Resynchronise a token that drifted, with two consecutive codes it
    /// shows (searched up to 1000 counters or time steps ahead).
    Resync {
        /// The token's serial.
        serial: String,
        /// A code the token shows.
        #[arg(long)]
        code1: String,
        /// The code it shows next.
        #[arg(long)]
        code2: String,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Assign a token (an imported one) to a user
    /// (PUT /v1/users/SUBJECT/tokens/SERIAL).
    Assign {
        /// The token's serial.
        serial: String,
        /// The user's subject.
        subject: String,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Delete a token.
    Delete {
        /// The token's serial.
        serial: String,
        #[command(flatten)]
        api: ApiArgs,
    },
}

/// `--digits`: 6 or 8.
fn parse_digits(s: &str) -> Result<u8, String> {
    match s {
        "6" => Ok(6),
        "8" => Ok(8),
        _ => Err("must be 6 or 8".to_owned()),
    }
}

/// `--period`: 30 or 60.
fn parse_period(s: &str) -> Result<u32, String> {
    match s {
        "30" => Ok(30),
        "60" => Ok(60),
        _ => Err("must be 30 or 60".to_owned()),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::PrintConfig => {
            print!("{}", Config::commented_default());
            ExitCode::SUCCESS
        }
        Command::CheckConfig { file } => match Config::load(&file) {
            Ok(_) => {
                println!("{}: ok", file.display());
                ExitCode::SUCCESS
            }
            Err(errors) => {
                for e in &errors {
                    eprintln!("{}: {}: {}", file.display(), e.field, e.reason);
                }
                eprintln!("{}: {} mistake(s)", file.display(), errors.len());
                ExitCode::FAILURE
            }
        },
        Command::Serve {
            config,
            listen,
            metrics_listen,
            http_listen,
            discard_snapshot,
        } => serve(
            config,
            listen,
            metrics_listen,
            http_listen,
            watchword_gateway::app::StartOptions { discard_snapshot },
        ),
        Command::Keygen { file } => keygen(&file),
        Command::Backup { dest, config } => backup(&dest, config.as_deref()),
        Command::CheckStore { config } => check_store(config.as_deref()),
        Command::Users { command } => users(command),
        Command::Methods { command } => methods(command),
        Command::Tokens { command } => tokens(command),
        Command::Pins { command } => pins(command),
        Command::Helpdesk { command } => helpdesk(command),
        Command::Check {
            subject,
            answer,
            state,
            api,
        } => {
            let mut body = json!({ "subject": subject });
            if let Some(a) = answer {
                body["answer"] = json!(a);
            }
            if let Some(s) = state {
                body["state"] = json!(s);
            }
            call(
                &api,
                hyper::Method::POST,
                Ok("/v1/check".to_owned()),
                Some(body),
            )
        }
    }
}

/// Prints `error: E` on stderr and answers 1.
fn fail(e: &CliError) -> ExitCode {
    eprintln!("error: {e}");
    ExitCode::FAILURE
}

fn keygen(file: &std::path::Path) -> ExitCode {
    match cli::keygen(file) {
        Ok(()) => {
            // The absolute path: a relative one in the configuration would
            // be taken from the server's working directory.
            let file = std::fs::canonicalize(file).unwrap_or_else(|_| file.to_owned());
            println!("created master key file {}", file.display());
            println!(
                "keep it outside the data directory and back it up separately (a backup of the \
                 data is useless without it); set storage.master_key = {:?} in the configuration",
                file.display().to_string()
            );
            ExitCode::SUCCESS
        }
        Err(e) => fail(&e),
    }
}

fn backup(dest: &std::path::Path, config: Option<&std::path::Path>) -> ExitCode {
    let result = cli::load_config(config).and_then(|cfg| {
        cli::backup(&cfg, dest).map(|summary| (summary, cli::master_key_path(&cfg)))
    });
    match result {
        Ok((summary, key)) => {
            let r = &summary.report;
            println!(
                "backup written to {}: schema version {}, {} users, {} methods, {} tokens, {} \
                 pins; checked clean",
                summary.file.display(),
                r.schema_version,
                r.users,
                r.methods,
                r.tokens,
                r.pins
            );
            println!(
                "the master key is not in the backup: restoring needs the same key file ({})",
                key.display()
            );
            ExitCode::SUCCESS
        }
        Err(e) => fail(&e),
    }
}

fn check_store(config: Option<&std::path::Path>) -> ExitCode {
    match cli::load_config(config).and_then(|cfg| cli::check_store(&cfg)) {
        Ok(report) => {
            for line in cli::report_lines(&report) {
                println!("{line}");
            }
            if report.is_clean() {
                ExitCode::SUCCESS
            } else {
                eprintln!("error: the store is not clean");
                ExitCode::FAILURE
            }
        }
        Err(e) => fail(&e),
    }
}

fn users(command: UsersCommand) -> ExitCode {
    match command {
        UsersCommand::Add {
            subject,
            display_name,
            email,
            locale,
            default_method,
            disabled,
            enabled,
            api,
        } => {
            let fields = UserFields {
                display_name,
                email,
                locale,
                enabled: match (disabled, enabled) {
                    (true, _) => Some(false),
                    (false, true) => Some(true),
                    (false, false) => None,
                },
                default_method,
            };
            call_noting(
                &api,
                hyper::Method::PUT,
                cli::user_path(&subject),
                Some(fields.to_json()),
                |status| match status {
                    hyper::StatusCode::CREATED => eprintln!("created"),
                    _ => eprintln!("updated (fields not given kept their values)"),
                },
            )
        }
        UsersCommand::Show { subject, api } => {
            call(&api, hyper::Method::GET, cli::user_path(&subject), None)
        }
        UsersCommand::List {
            after,
            limit,
            all,
            api,
        } => {
            if all {
                run_api(&api, |client| async move {
                    client.list_all(after.as_deref(), limit).await
                })
            } else {
                let path = cli::list_path(after.as_deref(), limit);
                call(&api, hyper::Method::GET, Ok(path), None)
            }
        }
        UsersCommand::Delete { subject, api } => {
            call(&api, hyper::Method::DELETE, cli::user_path(&subject), None)
        }
    }
}

fn methods(command: MethodsCommand) -> ExitCode {
    match command {
        MethodsCommand::Add {
            subject,
            kind,
            destination,
            api,
        } => call(
            &api,
            hyper::Method::POST,
            cli::methods_path(&subject),
            Some(json!({ "type": kind.name(), "destination": destination })),
        ),
        MethodsCommand::Confirm {
            subject,
            method_id,
            code,
            api,
        } => call(
            &api,
            hyper::Method::POST,
            cli::method_path(&subject, &method_id).map(|p| format!("{p}/confirm")),
            Some(json!({ "code": code })),
        ),
        MethodsCommand::Show {
            subject,
            method_id,
            api,
        } => call(
            &api,
            hyper::Method::GET,
            cli::method_path(&subject, &method_id),
            None,
        ),
        MethodsCommand::Delete {
            subject,
            method_id,
            api,
        } => call(
            &api,
            hyper::Method::DELETE,
            cli::method_path(&subject, &method_id),
            None,
        ),
    }
}

fn helpdesk(command: HelpdeskCommand) -> ExitCode {
    match command {
        HelpdeskCommand::Verify {
            subject,
            caller_id,
            api,
        } => call(
            &api,
            hyper::Method::POST,
            Ok("/v1/helpdesk/verifications".to_owned()),
            Some(serde_json::json!({"subject": subject, "caller_id": caller_id})),
        ),
        HelpdeskCommand::Check { id, code, api } => call(
            &api,
            hyper::Method::POST,
            if id.is_empty() || !id.bytes().all(|b| b.is_ascii_alphanumeric()) {
                Err(cli::CliError::Usage(
                    "ID: the verification id from `helpdesk verify` (letters and digits)".into(),
                ))
            } else {
                Ok(format!("/v1/helpdesk/verifications/{id}"))
            },
            Some(serde_json::json!({"code": code})),
        ),
    }
}

fn pins(command: PinsCommand) -> ExitCode {
    match command {
        PinsCommand::Reset {
            subject,
            email,
            api,
        } => call(
            &api,
            hyper::Method::POST,
            cli::user_path(&subject).map(|p| format!("{p}/pin")),
            Some(serde_json::json!({ "email": email })),
        ),
        PinsCommand::Show { subject, api } => call(
            &api,
            hyper::Method::GET,
            cli::user_path(&subject).map(|p| format!("{p}/pin")),
            None,
        ),
    }
}

fn tokens(command: TokensCommand) -> ExitCode {
    match command {
        TokensCommand::Enroll {
            subject,
            kind,
            algorithm,
            digits,
            period,
            qr,
            api,
        } => enroll(&api, &subject, kind, algorithm, digits, period, qr),
        TokensCommand::Import {
            file,
            format,
            password,
            key_file,
            api,
        } => import(&api, &file, format, password, key_file),
        TokensCommand::Show { serial, api } => {
            call(&api, hyper::Method::GET, cli::token_path(&serial), None)
        }
        TokensCommand::Reset { serial, api } => call(
            &api,
            hyper::Method::POST,
            cli::token_path(&serial).map(|p| format!("{p}/reset")),
            None,
        ),
        TokensCommand::Resync {
            serial,
            code1,
            code2,
            api,
        } => call(
            &api,
            hyper::Method::POST,
            cli::token_path(&serial).map(|p| format!("{p}/resync")),
            Some(json!({ "code1": code1, "code2": code2 })),
        ),
        TokensCommand::Assign {
            serial,
            subject,
            api,
        } => call(
            &api,
            hyper::Method::PUT,
            cli::user_token_path(&subject, &serial),
            None,
        ),
        TokensCommand::Delete { serial, api } => {
            call(&api, hyper::Method::DELETE, cli::token_path(&serial), None)
        }
    }
}

/// `tokens enroll`: the answer printed (its `qr_svg` written to `qr` when
/// given) and a warning that it holds the secret, shown this once.
fn enroll(
    api: &ApiArgs,
    subject: &str,
    kind: TokenKind,
    algorithm: Option<String>,
    digits: Option<u8>,
    period: Option<u32>,
    qr: Option<PathBuf>,
) -> ExitCode {
    let fields = EnrollFields {
        kind,
        algorithm,
        digits,
        period,
    };
    let prepared = fields.to_json().and_then(|body| {
        let path = cli::user_tokens_path(subject)?;
        // The file first: one that cannot be made costs no enrollment.
        let qr = qr.as_deref().map(QrFile::create).transpose()?;
        Ok((body, path, qr))
    });
    let (body, path, qr) = match prepared {
        Ok(p) => p,
        Err(e) => return fail(&e),
    };
    run_api_with(api, |client| async move {
        let (_, mut answer) = client
            .request(hyper::Method::POST, &path, Some(body))
            .await?;
        let mut code = ExitCode::SUCCESS;
        let mut also = String::new();
        if let Some(qr) = qr {
            let shown = qr.path().display().to_string();
            match qr.store(&mut answer) {
                Ok(()) => also = format!("; so does the QR code in {shown}"),
                Err(e) => {
                    eprintln!("error: {e}; the QR code is printed instead");
                    code = ExitCode::FAILURE;
                }
            }
        }
        eprintln!(
            "warning: otpauth_uri holds the token's secret and is shown only this once{also}: \
             hand it to the user, then delete every copy"
        );
        Ok((answer, code))
    })
}

/// `tokens import`: the file sent as it is, the password or key in the
/// query (never printed).
fn import(
    api: &ApiArgs,
    file: &std::path::Path,
    format: ImportFormat,
    password: Option<String>,
    key_file: Option<PathBuf>,
) -> ExitCode {
    let secret = match (password, key_file) {
        (Some(_), _) | (_, Some(_)) if format != ImportFormat::Pskc => Err(CliError::Usage(
            "--password and --key-file open an encrypted PSKC file; a CSV file takes neither"
                .to_owned(),
        )),
        (Some(p), _) if p.is_empty() => {
            Err(CliError::Usage("--password must not be empty".to_owned()))
        }
        (Some(p), _) => Ok(ImportSecret::Password(p)),
        (None, Some(k)) => cli::read_key_file(&k).map(ImportSecret::KeyHex),
        (None, None) => Ok(ImportSecret::None),
    };
    let prepared =
        secret.and_then(|s| Ok((cli::import_path(format, &s), cli::read_import_file(file)?)));
    let (path, bytes) = match prepared {
        Ok(p) => p,
        Err(e) => return fail(&e),
    };
    run_api(api, |client| async move {
        let (_, answer) = client
            .request_raw(
                hyper::Method::POST,
                &path,
                format.content_type(),
                bytes.into(),
            )
            .await?;
        Ok(answer)
    })
}

/// One request; prints the answer's JSON (or `deleted` for an empty 204).
fn call(
    api: &ApiArgs,
    method: hyper::Method,
    path: Result<String, CliError>,
    body: Option<Value>,
) -> ExitCode {
    call_noting(api, method, path, body, |_| {})
}

/// [`call`], and `note` told the answer's status first (to say on stderr
/// whether a PUT created or updated).
fn call_noting(
    api: &ApiArgs,
    method: hyper::Method,
    path: Result<String, CliError>,
    body: Option<Value>,
    note: fn(hyper::StatusCode),
) -> ExitCode {
    let path = match path {
        Ok(p) => p,
        Err(e) => return fail(&e),
    };
    run_api(api, |client| async move {
        let (status, value) = client.request(method, &path, body).await?;
        note(status);
        if status == hyper::StatusCode::NO_CONTENT && value.is_null() {
            return Ok(json!("deleted"));
        }
        Ok(value)
    })
}

/// Makes the client from the flags and environment, runs `f` on a small
/// runtime and prints its JSON pretty on stdout (a bare string as a line).
fn run_api<F, Fut>(api: &ApiArgs, f: F) -> ExitCode
where
    F: FnOnce(ApiClient) -> Fut,
    Fut: std::future::Future<Output = Result<Value, CliError>>,
{
    run_api_with(api, |client| async move {
        f(client).await.map(|v| (v, ExitCode::SUCCESS))
    })
}

/// [`run_api`] where `f` also gives the exit code for an answer it printed
/// (a request that succeeded but a local step after it that did not).
fn run_api_with<F, Fut>(api: &ApiArgs, f: F) -> ExitCode
where
    F: FnOnce(ApiClient) -> Fut,
    Fut: std::future::Future<Output = Result<(Value, ExitCode), CliError>>,
{
    let url = cli::resolve_url(api.url.clone());
    let client = match cli::resolve_key(api.key.clone()).and_then(|k| ApiClient::new(&url, &k)) {
        Ok(c) => c,
        Err(e) => return fail(&e),
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(f(client)) {
        Ok((Value::String(s), code)) => {
            println!("{s}");
            code
        }
        Ok((v, code)) => {
            println!(
                "{}",
                serde_json::to_string_pretty(&v).unwrap_or_else(|_| v.to_string())
            );
            code
        }
        Err(e) => fail(&e),
    }
}

fn serve(
    file: Option<PathBuf>,
    listen: Option<String>,
    metrics: Option<String>,
    http: Option<String>,
    opts: watchword_gateway::app::StartOptions,
) -> ExitCode {
    // rusmpp logs whole SMPP PDUs (message texts with their codes, bind
    // passwords) at debug level under `rusmpp::codec::{encode,decode}`: those
    // targets stay off whatever RUST_LOG says (a directive added later for
    // the same target replaces the environment's).
    let mut filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    for target in [
        "rusmpp::codec",
        "rusmpp::codec::encode",
        "rusmpp::codec::decode",
    ] {
        if let Ok(off) = format!("{target}=off").parse() {
            filter = filter.add_directive(off);
        }
    }
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .init();
    let mut cfg = match &file {
        None => Config::development(),
        Some(f) => match Config::load(f) {
            Ok(c) => c,
            Err(errors) => {
                for e in &errors {
                    eprintln!("{}: {}: {}", f.display(), e.field, e.reason);
                }
                return ExitCode::FAILURE;
            }
        },
    };
    if let Some(l) = listen {
        cfg.server.listen = l;
    }
    if let Some(m) = metrics {
        cfg.server.metrics_listen = m;
    }
    if let Some(h) = http {
        cfg.http.listen = h;
    }
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(async move {
        let running = match watchword_gateway::app::start_with(cfg, opts).await {
            Ok(r) => r,
            Err(e) => {
                eprintln!("cannot start: {e}");
                return ExitCode::FAILURE;
            }
        };
        wait_for_signal().await;
        running.shutdown();
        running.wait().await;
        ExitCode::SUCCESS
    })
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
