//! The `watchword` binary: `serve [--config FILE]`, `print-config`,
//! `check-config FILE`, the store tools (`keygen`, `backup`, `check-store`)
//! and the HTTP API subcommands (`users`, `methods`, `check`). It only
//! parses flags, sets up logging and calls the library
//! ([`watchword_gateway::cli`] for the tools and the API client); it must
//! never print a tenant key, an HTTP key or a master key, nor a full phone
//! number or address (it prints the server's answers, already masked).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};
use serde_json::{Value, json};
use watchword_gateway::cli::{self, ApiClient, CliError, UserFields};
use watchword_gateway::config::Config;

/// mimalloc: per-thread heaps that take frees from other threads without a
/// lock. glibc malloc serialised the gateway on its arena locks, because
/// audit lines and delivery messages are built on one thread and freed on
/// another.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Watchword: a one-time passcode engine behind protocol v1.
#[derive(Parser)]
#[command(version, about)]
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
        } => serve(config, listen, metrics_listen, http_listen),
        Command::Keygen { file } => keygen(&file),
        Command::Backup { dest, config } => backup(&dest, config.as_deref()),
        Command::CheckStore { config } => check_store(config.as_deref()),
        Command::Users { command } => users(command),
        Command::Methods { command } => methods(command),
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
            call(
                &api,
                hyper::Method::PUT,
                cli::user_path(&subject),
                Some(fields.to_json()),
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

/// One request; prints the answer's JSON (or `deleted` for an empty 204),
/// and on stderr whether a PUT created or updated.
fn call(
    api: &ApiArgs,
    method: hyper::Method,
    path: Result<String, CliError>,
    body: Option<Value>,
) -> ExitCode {
    let path = match path {
        Ok(p) => p,
        Err(e) => return fail(&e),
    };
    let is_put = method == hyper::Method::PUT;
    run_api(api, |client| async move {
        let (status, value) = client.request(method, &path, body).await?;
        if is_put {
            match status {
                hyper::StatusCode::CREATED => eprintln!("created"),
                _ => eprintln!("updated (fields not given kept their values)"),
            }
        }
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
        Ok(Value::String(s)) => {
            println!("{s}");
            ExitCode::SUCCESS
        }
        Ok(v) => {
            println!(
                "{}",
                serde_json::to_string_pretty(&v).unwrap_or_else(|_| v.to_string())
            );
            ExitCode::SUCCESS
        }
        Err(e) => fail(&e),
    }
}

fn serve(
    file: Option<PathBuf>,
    listen: Option<String>,
    metrics: Option<String>,
    http: Option<String>,
) -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
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
        let running = match watchword_gateway::app::start(cfg).await {
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
