//! Log line formats that carry the trace and span ids of the span an event
//! happens in, so a log line leads to its trace and back.

use std::fmt;

use opentelemetry::trace::{SpanContext, TraceContextExt};
use serde_json::{Map, Value};
use tracing::{
    Event, Subscriber,
    field::{Field, Visit},
};
use tracing_subscriber::{
    fmt::{
        FmtContext, FormatEvent, FormatFields, FormattedFields,
        format::Writer,
        time::{FormatTime, SystemTime},
    },
    registry::LookupSpan,
};

/// The OpenTelemetry span context of the span the event happens in.
fn span_context() -> Option<SpanContext> {
    // The current span of the whole subscriber, not of this layer: the log
    // layer does not see the per-call spans (`CALL_SPANS`), but an event in
    // one must still carry its ids. The binaries install a global subscriber,
    // which `get_default` returns even while an event is being dispatched. No
    // span extensions are locked here, as `get_otel_context` requires.
    let context = tracing::dispatcher::get_default(|dispatch| {
        let id = dispatch.current_span().id()?.clone();
        tracing_opentelemetry::get_otel_context(&id, dispatch)
    })?;
    let span_context = context.span().span_context().clone();
    span_context.is_valid().then_some(span_context)
}

/// Human-readable lines: time, level, span scope, target, message and fields,
/// then `trace_id` and `span_id` when the event is inside a traced span.
#[derive(Debug, Default)]
pub(crate) struct Text;

impl<S, N> FormatEvent<S, N> for Text
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(&self, ctx: &FmtContext<'_, S, N>, mut writer: Writer<'_>, event: &Event<'_>) -> fmt::Result {
        let meta = event.metadata();
        SystemTime.format_time(&mut writer)?;
        write!(writer, " {:>5} ", meta.level())?;
        if let Some(scope) = ctx.event_scope() {
            for span in scope.from_root() {
                writer.write_str(span.name())?;
                let extensions = span.extensions();
                if let Some(fields) = extensions.get::<FormattedFields<N>>().filter(|f| !f.is_empty()) {
                    write!(writer, "{{{fields}}}")?;
                }
                writer.write_char(':')?;
            }
            writer.write_char(' ')?;
        }
        write!(writer, "{}: ", meta.target())?;
        ctx.format_fields(writer.by_ref(), event)?;
        if let Some(span_context) = span_context() {
            write!(writer, " trace_id={} span_id={}", span_context.trace_id(), span_context.span_id())?;
        }
        writeln!(writer)
    }
}

/// One JSON object per line: `timestamp`, `level`, `target`, `fields`,
/// `spans` (names, outermost first), and `trace_id`/`span_id` when traced.
#[derive(Debug, Default)]
pub(crate) struct Json;

impl<S, N> FormatEvent<S, N> for Json
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(&self, ctx: &FmtContext<'_, S, N>, mut writer: Writer<'_>, event: &Event<'_>) -> fmt::Result {
        let meta = event.metadata();
        let mut timestamp = String::new();
        SystemTime.format_time(&mut Writer::new(&mut timestamp))?;
        let mut fields = JsonFields(Map::new());
        event.record(&mut fields);

        let mut line = Map::new();
        line.insert("timestamp".into(), Value::String(timestamp));
        line.insert("level".into(), Value::String(meta.level().to_string()));
        line.insert("target".into(), Value::String(meta.target().to_owned()));
        line.insert("fields".into(), Value::Object(fields.0));
        if let Some(scope) = ctx.event_scope() {
            let spans = scope.from_root().map(|s| Value::String(s.name().to_owned())).collect();
            line.insert("spans".into(), Value::Array(spans));
        }
        if let Some(span_context) = span_context() {
            line.insert("trace_id".into(), Value::String(span_context.trace_id().to_string()));
            line.insert("span_id".into(), Value::String(span_context.span_id().to_string()));
        }
        let json = serde_json::to_string(&Value::Object(line)).map_err(|_| fmt::Error)?;
        writeln!(writer, "{json}")
    }
}

struct JsonFields(Map<String, Value>);

impl Visit for JsonFields {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0.insert(field.name().to_owned(), Value::String(format!("{value:?}")));
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), Value::String(value.to_owned()));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().to_owned(), Value::from(value));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().to_owned(), Value::from(value));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().to_owned(), Value::from(value));
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().to_owned(), Value::from(value));
    }
}
