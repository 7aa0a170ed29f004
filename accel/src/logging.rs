//! Logging: tracing to stdout, human-readable by default or JSON (`--log-format json`), with the
//! verbosity and the format changeable at run time through Triton's LogSettings (gRPC) and
//! `/v2/logging` (REST): both the filter and the formatting layer are reloadable.

use std::sync::OnceLock;

use parking_lot::Mutex;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry, reload};

/// How log lines are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

/// The settings Triton's LogSettings exposes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogSettings {
    pub info: bool,
    pub warning: bool,
    pub error: bool,
    pub verbose: u32,
    pub format: LogFormat,
}

impl LogSettings {
    fn filter(&self) -> String {
        let level = if self.verbose >= 2 {
            "trace"
        } else if self.verbose == 1 {
            "debug"
        } else if self.info {
            "info"
        } else if self.warning {
            "warn"
        } else if self.error {
            "error"
        } else {
            "off"
        };
        format!("{level},h2=info,tower=info,hyper=info")
    }
}

type Handle = reload::Handle<EnvFilter, Registry>;
type Filtered = tracing_subscriber::layer::Layered<reload::Layer<EnvFilter, Registry>, Registry>;
type FmtLayer = Box<dyn Layer<Filtered> + Send + Sync>;
type FmtHandle = reload::Handle<FmtLayer, Filtered>;

/// Run-time control of the installed logger.
pub struct LogControl {
    handle: Handle,
    format: FmtHandle,
    settings: Mutex<LogSettings>,
}

impl std::fmt::Debug for LogControl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogControl").field("settings", &self.settings).finish()
    }
}

fn fmt_layer(format: LogFormat) -> FmtLayer {
    match format {
        LogFormat::Text => tracing_subscriber::fmt::layer().with_target(false).boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer().json().with_target(false).boxed(),
    }
}

static CONTROL: OnceLock<LogControl> = OnceLock::new();

/// Installs the process's logger. `ACCEL_LOG` (a tracing filter) overrides the verbosity at start.
pub fn init(verbose: u8, format: LogFormat) {
    let settings = LogSettings {
        info: true,
        warning: true,
        error: true,
        verbose: u32::from(verbose),
        format,
    };
    let filter = EnvFilter::try_from_env("ACCEL_LOG").unwrap_or_else(|_| EnvFilter::new(settings.filter()));
    let (filter, handle) = reload::Layer::new(filter);
    let (fmt, format) = reload::Layer::new(fmt_layer(format));
    if tracing_subscriber::registry().with(filter).with(fmt).try_init().is_ok() {
        let _ = CONTROL.set(LogControl {
            handle,
            format,
            settings: Mutex::new(settings),
        });
    }
}

/// The logger's control, when this process installed one.
pub fn control() -> Option<&'static LogControl> {
    CONTROL.get()
}

impl LogControl {
    pub fn settings(&self) -> LogSettings {
        self.settings.lock().clone()
    }

    /// Applies new settings.
    pub fn update(&self, settings: LogSettings) -> Result<(), String> {
        let filter = EnvFilter::try_new(settings.filter()).map_err(|e| e.to_string())?;
        self.handle.reload(filter).map_err(|e| e.to_string())?;
        let mut current = self.settings.lock();
        if current.format != settings.format {
            self.format
                .reload(fmt_layer(settings.format))
                .map_err(|e| e.to_string())?;
        }
        *current = settings;
        Ok(())
    }
}
