//! Where rtcam's log goes and what it lets through: the journal (natively, with priorities)
//! when systemd connected stderr to it, else text on stderr, coloured only on a terminal.
//! Also how a fatal error is printed (`error_text`): each cause once.
//!
//! The only `tracing-journald` user. The choices (`Output`, `filter_directives`) are pure and
//! tested here; `init` does the installing.

use std::io::IsTerminal;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;

/// What rtcam logs when neither `RTCAM_LOG` nor `RUST_LOG` says otherwise.
///
/// `rtc=warn` matches every target that starts with "rtc", rtcam's own too: the longer
/// `rtcam=info` wins for rtcam's. Two targets of the WebRTC crates are held to errors because
/// they warn on every session about things that are normal for rtcam and that no setting
/// changes, and a warning in rtcam's log must be something a user should look at:
/// - `rtc_dtls::config`: rtcam is the DTLS client for browsers (they offer `actpass`), and the
///   `rtc` crate builds the DTLS config with neither a server name nor the peer's address, so
///   every handshake warns that it uses "localhost" as server_name. WebRTC checks the peer's
///   certificate by its SDP fingerprint, never by name, and the crate offers no way to set it.
/// - `rtc_ice::agent`: the ICE agent starts checking as soon as the answer is set, before the
///   browser's trickled candidates arrive, and warns "pingAllCandidates called with no
///   candidate pairs" until they do.
pub const DEFAULT_FILTER: &str =
    "info,rumqttd=off,webrtc=warn,rtc=warn,rtc_dtls::config=error,rtc_ice::agent=error,rtcam=info";

/// Where log lines go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    /// systemd's journal, one entry per event with its priority and fields.
    Journal,
    /// Text on stderr. `ansi`: colour (a terminal only). `time`: a timestamp on each line
    /// (not when the journal gets stderr, as it stamps each line itself).
    Text { ansi: bool, time: bool },
}

/// What stderr is, as far as the choice of output needs to know.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stderr {
    pub is_terminal: bool,
    /// Device and inode of the file stderr is open on, if it could be read.
    pub dev_ino: Option<(u64, u64)>,
}

impl Stderr {
    /// This process's stderr.
    pub fn current() -> Stderr {
        use std::os::fd::AsFd;
        use std::os::unix::fs::MetadataExt;
        let stderr = std::io::stderr();
        let dev_ino = stderr
            .as_fd()
            .try_clone_to_owned()
            .ok()
            .and_then(|fd| std::fs::File::from(fd).metadata().ok())
            .map(|m| (m.dev(), m.ino()));
        Stderr {
            is_terminal: stderr.is_terminal(),
            dev_ino,
        }
    }
}

/// `JOURNAL_STREAM`'s `DEVICE:INODE` (decimal), which systemd sets when it connects stdout or
/// stderr to the journal.
pub fn parse_journal_stream(value: &str) -> Option<(u64, u64)> {
    let (dev, ino) = value.trim().split_once(':')?;
    Some((dev.parse().ok()?, ino.parse().ok()?))
}

/// Where to log. As sd_journal's documentation asks, stderr counts as the journal only when
/// `JOURNAL_STREAM` names the very file stderr is open on: a child process started by a
/// service inherits the variable with a different stderr (a pipe, a terminal) and must not
/// take it for the journal. `no_color` is `NO_COLOR` being set to anything but "".
pub fn choose_output(journal_stream: Option<&str>, stderr: Stderr, no_color: bool) -> Output {
    let journal = journal_stream
        .and_then(parse_journal_stream)
        .is_some_and(|id| stderr.dev_ino == Some(id));
    if journal {
        Output::Journal
    } else {
        Output::Text {
            ansi: stderr.is_terminal && !no_color,
            time: true,
        }
    }
}

/// The filter: `RTCAM_LOG` if set, else `RUST_LOG`, else [`DEFAULT_FILTER`]. Empty values
/// count as unset.
pub fn filter_directives(
    rtcam_log: Option<String>,
    rust_log: Option<String>,
) -> (String, &'static str) {
    let set = |v: Option<String>| v.filter(|s| !s.trim().is_empty());
    if let Some(v) = set(rtcam_log) {
        (v, "RTCAM_LOG")
    } else if let Some(v) = set(rust_log) {
        (v, "RUST_LOG")
    } else {
        (DEFAULT_FILTER.to_string(), "the default")
    }
}

/// Where `init` sent the log, which is also where a fatal error goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Installed {
    /// The journal's socket.
    Journal,
    /// Text on stderr, which is the journal's stream: a `<N>` prefix sets a line's priority.
    JournalStream,
    /// Text on stderr.
    Stderr,
}

impl Installed {
    /// Reports the error that ends rtcam, at error priority where the journal takes it.
    pub fn fatal(self, error: &(dyn std::error::Error + 'static)) {
        let text = error_text(error);
        match self {
            Installed::Journal => tracing::error!("{text}"),
            // 3 is LOG_ERR; journald reads the prefix (SyslogLevelPrefix= is on by default).
            Installed::JournalStream => eprintln!("<3>rtcam: {text}"),
            Installed::Stderr => eprintln!("rtcam: {text}"),
        }
    }
}

/// Installs the global subscriber for this process, reading the environment.
pub fn init() -> Installed {
    let (directives, from) = filter_directives(
        std::env::var("RTCAM_LOG").ok(),
        std::env::var("RUST_LOG").ok(),
    );
    let (filter, bad_filter) = match EnvFilter::try_new(&directives) {
        Ok(f) => (f, None),
        Err(source) => (
            EnvFilter::new(DEFAULT_FILTER),
            Some(BadFilter {
                from,
                directives,
                source,
            }),
        ),
    };
    let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
    let journal_stream = std::env::var("JOURNAL_STREAM").ok();
    let mut output = choose_output(journal_stream.as_deref(), Stderr::current(), no_color);
    let registry = tracing_subscriber::registry().with(filter);
    if output == Output::Journal {
        match tracing_journald::layer() {
            Ok(journal) => {
                // The crate's default makes INFO "notice" (5); rtcam's info lines are routine
                // (started, a viewer came and went), which syslog calls "informational".
                let journal = journal
                    .with_syslog_identifier("rtcam".into())
                    .with_priority_mappings(tracing_journald::PriorityMappings {
                        info: tracing_journald::Priority::Informational,
                        debug: tracing_journald::Priority::Debug,
                        ..tracing_journald::PriorityMappings::new()
                    });
                registry.with(journal).init();
                report_bad_filter(bad_filter);
                return Installed::Journal;
            }
            // The socket is missing (a container, a minimal system): stderr still reaches the
            // journal, which stamps each line itself.
            Err(_) => {
                output = Output::Text {
                    ansi: false,
                    time: false,
                }
            }
        }
    }
    let Output::Text { ansi, time } = output else {
        unreachable!("the journal returned above")
    };
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    if time {
        registry.with(fmt).init();
    } else {
        registry.with(fmt.without_time()).init();
    }
    report_bad_filter(bad_filter);
    if time {
        Installed::Stderr
    } else {
        Installed::JournalStream
    }
}

/// A log filter from the environment that does not parse; the default is used instead.
#[derive(Debug, thiserror::Error)]
#[error("{from} {directives:?}: {source}")]
struct BadFilter {
    /// Which variable it came from.
    from: &'static str,
    directives: String,
    #[source]
    source: tracing_subscriber::filter::ParseError,
}

fn report_bad_filter(bad: Option<BadFilter>) {
    if let Some(why) = bad {
        tracing::warn!("ignoring the log filter in {why}; using {DEFAULT_FILTER:?}");
    }
}

/// A fatal error as one line: its message, then each cause, joined by ": ". A cause whose
/// text the line already holds is left out, since many errors put their source in their own
/// message (`"cannot listen on {addr}: {source}"`) and also return it as `source()`.
pub fn error_text(error: &(dyn std::error::Error + 'static)) -> String {
    let mut line = String::new();
    let mut next = Some(error);
    while let Some(e) = next {
        let text = e.to_string();
        if !line.contains(&text) {
            if !line.is_empty() {
                line.push_str(": ");
            }
            line.push_str(&text);
        }
        next = e.source();
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stderr(is_terminal: bool, dev_ino: Option<(u64, u64)>) -> Stderr {
        Stderr {
            is_terminal,
            dev_ino,
        }
    }

    #[test]
    fn journal_only_when_the_stream_is_stderrs_own() {
        let file = stderr(false, Some((8, 1234)));
        assert_eq!(choose_output(Some("8:1234"), file, false), Output::Journal);
        // Inherited from a service by a process whose stderr is elsewhere.
        assert_eq!(
            choose_output(Some("8:999"), file, false),
            Output::Text {
                ansi: false,
                time: true
            }
        );
        assert_eq!(
            choose_output(Some("garbage"), file, false),
            Output::Text {
                ansi: false,
                time: true
            }
        );
        assert_eq!(
            choose_output(Some("8:1234"), stderr(false, None), false),
            Output::Text {
                ansi: false,
                time: true
            }
        );
    }

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        let tty = stderr(true, Some((1, 2)));
        assert_eq!(
            choose_output(None, tty, false),
            Output::Text {
                ansi: true,
                time: true
            }
        );
        assert_eq!(
            choose_output(None, tty, true),
            Output::Text {
                ansi: false,
                time: true
            }
        );
        assert_eq!(
            choose_output(None, stderr(false, Some((1, 2))), false),
            Output::Text {
                ansi: false,
                time: true
            }
        );
    }

    #[test]
    fn journal_stream_is_device_colon_inode() {
        assert_eq!(parse_journal_stream("8:1234"), Some((8, 1234)));
        assert_eq!(parse_journal_stream("8:1234\n"), Some((8, 1234)));
        assert_eq!(parse_journal_stream("8"), None);
        assert_eq!(parse_journal_stream("a:1"), None);
    }

    #[test]
    fn rtcam_log_wins_over_rust_log() {
        let s = |v: &str| Some(v.to_string());
        assert_eq!(filter_directives(s("debug"), s("warn")).0, "debug");
        assert_eq!(filter_directives(None, s("warn")).0, "warn");
        assert_eq!(filter_directives(s(""), s("warn")).0, "warn");
        assert_eq!(filter_directives(None, None).0, DEFAULT_FILTER);
        EnvFilter::try_new(DEFAULT_FILTER).expect("the default filter parses");
    }

    #[test]
    fn default_filter_hides_the_webrtc_crates_per_session_warnings() {
        use tracing_subscriber::layer::Layer;
        // Reach each target's verdict through a subscriber that records what passes.
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
        struct Record(std::sync::Arc<std::sync::Mutex<Vec<String>>>);
        impl<S: tracing::Subscriber> Layer<S> for Record {
            fn on_event(
                &self,
                event: &tracing::Event<'_>,
                _: tracing_subscriber::layer::Context<'_, S>,
            ) {
                let m = event.metadata();
                self.0
                    .lock()
                    .unwrap()
                    .push(format!("{} {}", m.level(), m.target()));
            }
        }
        let subscriber = tracing_subscriber::registry()
            .with(EnvFilter::new(DEFAULT_FILTER))
            .with(Record(seen.clone()));
        tracing::subscriber::with_default(subscriber, || {
            tracing::warn!(target: "rtc_dtls::config", "server_name");
            tracing::warn!(target: "rtc_ice::agent", "no candidate pairs");
            tracing::error!(target: "rtc_ice::agent", "agent error");
            tracing::warn!(target: "rtc_sctp::association", "other");
            tracing::info!(target: "rtc_sctp::association", "chatter");
            tracing::info!(target: "rtcam::app", "ours");
            tracing::info!(target: "rumqttd::router", "broker");
        });
        assert_eq!(
            *seen.lock().unwrap(),
            [
                "ERROR rtc_ice::agent",
                "WARN rtc_sctp::association",
                "INFO rtcam::app"
            ]
        );
    }

    #[derive(Debug, thiserror::Error)]
    #[error("cannot listen on 127.0.0.1:1883: {source}")]
    struct Listen {
        source: std::io::Error,
    }

    #[test]
    fn each_cause_is_printed_once() {
        let io = std::io::Error::from_raw_os_error(98);
        let io_text = io.to_string();
        let e = anyhow::Error::new(Listen { source: io }).context("cannot start");
        let text = error_text(e.as_ref());
        assert_eq!(
            text,
            format!("cannot start: cannot listen on 127.0.0.1:1883: {io_text}")
        );
        assert_eq!(text.matches(&io_text).count(), 1, "{text}");

        // A cause its parent does not repeat is still shown.
        #[derive(Debug, thiserror::Error)]
        #[error("cannot listen")]
        struct Bare(#[source] std::io::Error);
        let e = Bare(std::io::Error::from_raw_os_error(98));
        assert_eq!(error_text(&e), format!("cannot listen: {io_text}"));
    }
}
