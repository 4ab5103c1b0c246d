//! Routes the crate's `tracing` output to a JS callback.
//!
//! One subscriber is installed per process, on the first `setLogSink` call; after that the sink
//! and the level are swapped atomically. Logging is off until a sink is set, and while it is
//! off every callsite is disabled in the interest cache, so the crate's `debug!`/`trace!` calls
//! cost what they cost without any subscriber.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    sync::{
        atomic::{AtomicU8, Ordering},
        Once, RwLock,
    },
    time::{SystemTime, UNIX_EPOCH},
};

use napi::{threadsafe_function::ThreadsafeFunction, threadsafe_function::ThreadsafeFunctionCallMode, Status};
use napi_derive::napi;
use tracing::{
    field::{Field, Visit},
    level_filters::LevelFilter,
    span, Event, Level, Metadata, Subscriber,
};
use tracing_subscriber::{
    layer::{Context, SubscriberExt},
    registry::LookupSpan,
    Layer,
};

use crate::errors::{internal, invalid};

/// One span the event happened in: its name and the fields recorded on it so far.
#[napi(object)]
pub struct LogSpan {
    pub name: String,
    pub fields: BTreeMap<String, String>,
}

/// One log event, as the JS callback receives it.
#[napi(object)]
pub struct LogRecord {
    /// `error`, `warn`, `info`, `debug` or `trace`.
    pub level: String,
    /// The Rust module that logged it, e.g. `matrix_sdk_crypto::machine`.
    pub target: String,
    pub message: String,
    pub fields: BTreeMap<String, String>,
    /// Enclosing spans, outermost first (e.g. `decrypt_room_event` with `room_id`, `session_id`).
    pub spans: Vec<LogSpan>,
    /// Milliseconds since the Unix epoch.
    pub timestamp: f64,
}

/// A weak threadsafe function: an installed logger never keeps the process alive.
type Sink = ThreadsafeFunction<LogRecord, (), LogRecord, Status, false, true>;

/// 0 = off, then error, warn, info, debug, trace.
static LEVEL: AtomicU8 = AtomicU8::new(0);
static SINK: RwLock<Option<Sink>> = RwLock::new(None);
static INSTALL: Once = Once::new();

fn level_rank(level: &Level) -> u8 {
    match *level {
        Level::ERROR => 1,
        Level::WARN => 2,
        Level::INFO => 3,
        Level::DEBUG => 4,
        Level::TRACE => 5,
    }
}

fn parse_level(name: &str) -> napi::Result<u8> {
    Ok(match name {
        "off" => 0,
        "error" => 1,
        "warn" => 2,
        "info" => 3,
        "debug" => 4,
        "trace" => 5,
        other => return Err(invalid("level", format!("{other:?} is not one of off, error, warn, info, debug, trace"))),
    })
}

/// Spans give events their context (`decrypt_room_event` carries the room, session and
/// sender), and the crate opens most of them at INFO: while logging is on, keep INFO spans
/// even when only warnings are wanted.
const SPAN_FLOOR: u8 = 3;

fn enabled(metadata: &Metadata<'_>) -> bool {
    let level = LEVEL.load(Ordering::Relaxed);
    let limit = if metadata.is_span() && level > 0 { level.max(SPAN_FLOOR) } else { level };
    level_rank(metadata.level()) <= limit
}

/// Field values as strings; `message` is kept apart.
#[derive(Default)]
struct Fields {
    message: Option<String>,
    map: BTreeMap<String, String>,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.put(field, value.to_owned());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        let mut text = String::new();
        let _ = write!(text, "{value:?}");
        // `?room_id` debug-prints a quoted string: show the id itself.
        if text.len() >= 2 && text.starts_with('"') && text.ends_with('"') {
            if let Ok(unquoted) = serde_json::from_str::<String>(&text) {
                text = unquoted;
            }
        }
        self.put(field, text);
    }
}

impl Fields {
    fn put(&mut self, field: &Field, value: String) {
        if field.name() == "message" {
            self.message = Some(value);
        } else {
            self.map.insert(field.name().to_owned(), value);
        }
    }
}

/// Span fields, kept in the span's extensions until the span closes.
struct SpanFields(BTreeMap<String, String>);

struct JsLayer;

impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for JsLayer {
    fn register_callsite(&self, _: &'static Metadata<'static>) -> tracing::subscriber::Interest {
        // The level changes at run time: ask `enabled` each time (an atomic load).
        tracing::subscriber::Interest::sometimes()
    }

    fn enabled(&self, metadata: &Metadata<'_>, _: Context<'_, S>) -> bool {
        enabled(metadata)
    }

    fn max_level_hint(&self) -> Option<LevelFilter> {
        let level = LEVEL.load(Ordering::Relaxed);
        Some(match if level > 0 { level.max(SPAN_FLOOR) } else { 0 } {
            0 => LevelFilter::OFF,
            1 => LevelFilter::ERROR,
            2 => LevelFilter::WARN,
            3 => LevelFilter::INFO,
            4 => LevelFilter::DEBUG,
            _ => LevelFilter::TRACE,
        })
    }

    fn on_new_span(&self, attrs: &span::Attributes<'_>, id: &span::Id, ctx: Context<'_, S>) {
        let mut fields = Fields::default();
        attrs.record(&mut fields);
        if let Some(span) = ctx.span(id) {
            span.extensions_mut().insert(SpanFields(fields.map));
        }
    }

    fn on_record(&self, id: &span::Id, values: &span::Record<'_>, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let mut fields = Fields::default();
        values.record(&mut fields);
        let mut ext = span.extensions_mut();
        match ext.get_mut::<SpanFields>() {
            Some(existing) => existing.0.extend(fields.map),
            None => ext.insert(SpanFields(fields.map)),
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let Ok(sink) = SINK.read() else { return };
        let Some(sink) = sink.as_ref() else { return };
        let mut fields = Fields::default();
        event.record(&mut fields);
        let spans = ctx
            .event_scope(event)
            .map(|scope| {
                scope
                    .from_root()
                    .map(|span| LogSpan {
                        name: span.name().to_owned(),
                        fields: span.extensions().get::<SpanFields>().map(|f| f.0.clone()).unwrap_or_default(),
                    })
                    .collect()
            })
            .unwrap_or_default();
        let meta = event.metadata();
        let record = LogRecord {
            level: meta.level().as_str().to_ascii_lowercase(),
            target: meta.target().to_owned(),
            message: fields.message.unwrap_or_default(),
            fields: fields.map,
            spans,
            timestamp: SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64() * 1000.0).unwrap_or(0.0),
        };
        // Non-blocking: a slow JS thread must never stall a crypto operation.
        sink.call(record, ThreadsafeFunctionCallMode::NonBlocking);
    }
}

/// The target of the marker record [`flush_log_sink`] queues. The TS layer consumes it; it never
/// reaches the application's logger.
const FLUSH_TARGET: &str = "matrix_crypto_node::flush";

/// Queue a marker record carrying `token` behind every record queued so far. The sink delivers
/// records in the order they were queued, so when the marker arrives every record logged before
/// this call has been delivered. Returns `false` (nothing queued) when no sink is set.
#[napi]
pub fn flush_log_sink(token: String) -> napi::Result<bool> {
    let sink = SINK.read().map_err(|_| internal("log sink lock poisoned"))?;
    let Some(sink) = sink.as_ref() else { return Ok(false) };
    let marker = LogRecord {
        level: "trace".to_owned(),
        target: FLUSH_TARGET.to_owned(),
        message: token,
        fields: BTreeMap::new(),
        spans: Vec::new(),
        timestamp: 0.0,
    };
    Ok(sink.call(marker, ThreadsafeFunctionCallMode::NonBlocking) == Status::Ok)
}

/// Route `tracing` output at `level` or more severe to `sink`; `sink = null` or `level = "off"`
/// turns logging off. The first call installs the process-wide subscriber.
#[napi]
pub fn set_log_sink(
    #[napi(ts_arg_type = "((record: LogRecord) => void) | null")] sink: Option<Sink>,
    level: String,
) -> napi::Result<()> {
    let rank = if sink.is_some() { parse_level(&level)? } else { 0 };
    let mut install_error = None;
    INSTALL.call_once(|| {
        let subscriber = tracing_subscriber::registry().with(JsLayer);
        if let Err(e) = tracing::subscriber::set_global_default(subscriber) {
            install_error = Some(e);
        }
    });
    if let Some(e) = install_error {
        return Err(internal(format!("cannot install the log subscriber: {e}")));
    }
    *SINK.write().map_err(|_| internal("log sink lock poisoned"))? = sink;
    LEVEL.store(rank, Ordering::Relaxed);
    // Callsites cache whether they are enabled; recompute after a level change.
    tracing::callsite::rebuild_interest_cache();
    Ok(())
}
