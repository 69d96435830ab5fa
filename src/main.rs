//! The `rtcam` command: parses arguments, sets up logging, and hands over to the library.

use anyhow::Context;
use clap::{CommandFactory, Parser, Subcommand};
use rtcam::app::{self, App};
use rtcam::config::{self, Config, ConfigError, Origin};
use rtcam::credentials;
use rtcam::service::Notifier;
use std::path::{Path, PathBuf};

/// The end of `rtcam --help` and of the manual page.
const AFTER_HELP: &str = "\
Files:
  /etc/rtcam/rtcam.toml   the configuration (`rtcam config example` prints every key, documented)

Environment:
  RTCAM_LOG, RUST_LOG     log filter, e.g. debug or info,rtcam=debug (RTCAM_LOG wins)
  NO_COLOR                no colour in the log on a terminal
  JOURNAL_STREAM          set by systemd: rtcam then logs to the journal with priorities
  CREDENTIALS_DIRECTORY   set by systemd: secrets the configuration leaves empty

Exit status:
  0 done; 1 failed (the service restarts); 78 the configuration is unusable (it does not)

Documentation: /usr/share/doc/rtcam/README.md";

#[derive(Parser)]
#[command(
    name = "rtcam",
    version,
    about = "Live WebRTC camera, signalled and controlled over MQTT",
    after_long_help = AFTER_HELP
)]
struct Cli {
    /// Configuration file (default: /etc/rtcam/rtcam.toml if present, else built-in demo defaults).
    #[arg(long, short, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the camera (the default).
    Run,
    /// Configuration helpers.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// List every capture device: driver, formats with sizes and frame rates, controls.
    Devices {
        /// JSON for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Show or set camera controls (brightness, exposure, focus …).
    Controls {
        /// V4L2 node (default: the configured camera, else the first).
        #[arg(long)]
        device: Option<PathBuf>,
        /// Set a control, e.g. --set brightness=140 (repeatable, applied in order).
        #[arg(long, value_name = "NAME=VALUE")]
        set: Vec<String>,
        /// Print one control as name=value (repeatable).
        #[arg(long, value_name = "NAME")]
        get: Vec<String>,
        /// JSON for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Run the configured camera and encoder headless for N frames and report how it went.
    Check {
        #[arg(long, default_value_t = 100)]
        frames: u64,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 30)]
        timeout: u64,
        /// Print a progress line (frames, camera state) four times a second.
        #[arg(long)]
        progress: bool,
    },
    /// Print a signed viewer token (needs [auth] secret in the configuration).
    Token {
        /// How long it is valid: 90s, 30m, 1h, 7d.
        #[arg(long, default_value = "1h")]
        ttl: String,
        /// What it allows, comma- or space-separated: view, talk (be heard on the board),
        /// control (change the camera from the page), metrics.
        #[arg(long, visible_aliases = ["right", "scope"], value_delimiter = ',', default_value = "view")]
        rights: Vec<String>,
        /// Who holds it (a name for the logs, which never show the token).
        #[arg(long)]
        sub: Option<String>,
    },
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions { shell: clap_complete::Shell },
    /// Print the manual page (roff), e.g. `rtcam man | man -l -`; with a directory, write it
    /// and one page per subcommand there (rtcam.1, rtcam-devices.1 …).
    Man { dir: Option<PathBuf> },
    /// Add a broker user of the embedded broker, or change its password, in a users file
    /// (`[mqtt] users_file`; mosquitto's format). Reads the password from standard input.
    Passwd {
        /// The users file; made if missing.
        file: PathBuf,
        /// The user name (e.g. homeassistant).
        user: String,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Check a configuration file and report the first problem with its line and key.
    Check { path: PathBuf },
    /// Print the documented example configuration.
    Example {
        /// Every setting commented out, as the package installs /etc/rtcam/rtcam.toml: the
        /// built-in defaults apply, and each key is there to uncomment.
        #[arg(long)]
        commented: bool,
    },
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let log = rtcam::logging::init();
    let result = match cli.command.unwrap_or(Command::Run) {
        Command::Run => run(cli.config),
        Command::Config(ConfigCommand::Example { commented }) => {
            if commented {
                print!("{}", config::commented_example());
            } else {
                print!("{}", config::EXAMPLE);
            }
            Ok(())
        }
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "rtcam", &mut std::io::stdout());
            Ok(())
        }
        Command::Man { dir: None } => clap_mangen::Man::new(Cli::command())
            .render(&mut std::io::stdout())
            .map_err(anyhow::Error::from),
        Command::Man { dir: Some(dir) } => clap_mangen::generate_to(Cli::command(), &dir)
            .with_context(|| format!("cannot write manual pages to {}", dir.display())),
        Command::Token { ttl, rights, sub } => token(cli.config, &ttl, &rights, sub),
        Command::Passwd { file, user } => passwd(&file, &user),
        Command::Config(ConfigCommand::Check { path }) => load_config(Some(&path))
            .map(|_| println!("{}: ok", path.display()))
            .map_err(anyhow::Error::from),
        Command::Devices { json } => rtcam::cli::devices(json),
        Command::Controls {
            device,
            set,
            get,
            json,
        } => load_config(cli.config.as_deref())
            .map_err(anyhow::Error::from)
            .and_then(|(c, _)| rtcam::cli::controls(&c, device, &set, &get, json)),
        Command::Check {
            frames,
            timeout,
            progress,
        } => load_config(cli.config.as_deref())
            .map_err(anyhow::Error::from)
            .and_then(|(c, _)| {
                rtcam::cli::check(
                    &c,
                    frames,
                    std::time::Duration::from_secs(timeout),
                    progress,
                )
            }),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            log.fatal(e.as_ref());
            exit_code(&e)
        }
    }
}

/// Reads the configuration as every command needs it: its shapes checked as the file is read,
/// then what each part of rtcam makes of its values.
fn load_config(path: Option<&Path>) -> Result<(Config, Origin), ConfigError> {
    let (config, origin) = Config::load(path)?;
    app::check_config(&config, &origin)?;
    Ok((config, origin))
}

/// 78 (EX_CONFIG from sysexits.h) for a configuration that cannot work: the unit's
/// `RestartPreventExitStatus=78` keeps systemd from restarting rtcam into the same error.
/// Anything else is 1, and systemd retries it.
const EX_CONFIG: u8 = 78;

fn exit_code(e: &anyhow::Error) -> std::process::ExitCode {
    let config = e
        .chain()
        .any(|c| c.is::<config::ConfigError>() || c.is::<credentials::CredentialError>());
    if config {
        std::process::ExitCode::from(EX_CONFIG)
    } else {
        std::process::ExitCode::FAILURE
    }
}

fn run(config_path: Option<PathBuf>) -> anyhow::Result<()> {
    let (mut config, origin) = load_config(config_path.as_deref())?;
    // Secrets systemd passes with LoadCredential= fill what the config file leaves empty.
    let used = credentials::apply_from_env(&mut config)?;
    let notifier = Notifier::from_env();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("rtcam")
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        // Handlers first: a SIGTERM while rtcam is still starting (systemd stopping it early,
        // the emulated board test) waits here for an orderly stop instead of killing it.
        let mut signals = Signals::install().context("cannot install signal handlers")?;
        tracing::info!("rtcam {} starting with {origin}", app::VERSION);
        if !used.is_empty() {
            tracing::info!("using systemd credentials: {}", used.join(", "));
        }
        notifier.status("starting");
        let app = App::start(config, origin).await?;
        let url = app::viewer_url(app.http_addr());
        tracing::info!("viewer page: {url}");
        println!(
            "rtcam is running. Open {url} in a browser to watch camera {:?}.",
            app.device_id()
        );
        if let Some(https) = app.https() {
            println!(
                "Over HTTPS (needed for Talk from another device): {}\n  certificate SHA-256 \
                 fingerprint: {}",
                app::page_url("https", https.addr),
                https.fingerprints.sha256
            );
        }
        // READY=1 once the broker is connected, watchdog pings, STATUS=, then STOPPING=1 on the
        // first signal; all no-ops outside systemd.
        rtcam::service::supervise(&app, &notifier, &url, signals.recv()).await;
        tracing::info!("stopping");
        // A second signal while stopping exits at once.
        tokio::select! {
            _ = app.stop() => {}
            _ = signals.recv() => {
                tracing::warn!("second signal: exiting immediately");
                std::process::exit(130);
            }
        }
        Ok(())
    })
}

fn token(
    config_path: Option<PathBuf>,
    ttl: &str,
    rights: &[String],
    sub: Option<String>,
) -> anyhow::Result<()> {
    use rtcam::auth::{Authority, Right};
    let (mut config, origin) = load_config(config_path.as_deref())?;
    // As the service sees it: `sudo CREDENTIALS_DIRECTORY=/etc/rtcam/credentials rtcam token`.
    credentials::apply_from_env(&mut config)?;
    if config.auth.secret.is_empty() {
        anyhow::bail!(
            "{origin} has no [auth] secret; tokens are only needed (and checked) when it has one"
        );
    }
    let ttl = rtcam::auth::parse_ttl(ttl).map_err(anyhow::Error::msg)?;
    // `--scope "view talk"` reads as a JWT scope does; `--rights view,talk` as before.
    let rights = rights
        .iter()
        .flat_map(|r| r.split_ascii_whitespace())
        .map(|r| r.parse::<Right>().map_err(anyhow::Error::msg))
        .collect::<anyhow::Result<Vec<_>>>()?;
    if rights.is_empty() {
        anyhow::bail!("a token needs at least one right: view, talk, control, metrics");
    }
    let authority = Authority::new(&config.auth.secret, &config.device_id());
    let mut claims = authority.claims(ttl, rights, std::time::SystemTime::now());
    claims.sub = sub.filter(|s| !s.is_empty());
    let token = authority.mint(&claims);
    println!("{token}");
    eprintln!(
        "Viewing link: {}?token={token}",
        app::viewer_url(config.http.listen)
    );
    Ok(())
}

/// SIGTERM and SIGINT, caught from the moment they are installed; one that arrives before
/// anyone waits is kept for the next `recv`.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> std::io::Result<Signals> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    async fn recv(&mut self) {
        tokio::select! {
            // Cancel-safe: a signal stream keeps a delivered signal until it is received.
            _ = self.term.recv() => {}
            // Cancel-safe: as above.
            _ = self.int.recv() => {}
        }
    }
}

/// `rtcam passwd FILE USER`: one line of standard input is the password (typed, or piped in).
fn passwd(file: &std::path::Path, user: &str) -> anyhow::Result<()> {
    use std::io::IsTerminal;
    if std::io::stdin().is_terminal() {
        eprint!("Password for {user} (shown as you type): ");
    }
    let mut line = String::new();
    std::io::stdin().read_line(&mut line)?;
    let password = line.trim_end_matches(['\r', '\n']);
    if password.is_empty() {
        anyhow::bail!("the password is empty");
    }
    rtcam::gate::users::set_user(file, user, password)?;
    println!(
        "{}: {user} set. Point [mqtt] users_file at this file and restart rtcam.",
        file.display()
    );
    Ok(())
}
