//! pprof protobuf (`profile.proto` from github.com/google/pprof), gzipped.
//!
//! Sample and period types are those Go writes for the profile's kind
//! (`samples/count` and `cpu/nanoseconds` for CPU, the four `alloc_*` and
//! `inuse_*` types for the heap, ...; see `profile::ProfileKind`). Samples
//! are labelled `thread` (name) and `thread_id` (kernel id, numeric), with
//! the span's ids and name and the profile's own labels when there are
//! some, usable with `go tool pprof -tagfocus`.
//!
//! Which span a sample is labelled with depends on the reader
//! ([`SpanLabels`]): the agent's own routes name the innermost span and
//! its trace; profiles pushed to Pyroscope name the local root, the one
//! span Grafana's traces-to-profiles looks up (see `transport::push`).

use std::collections::HashMap;
use std::io::Write;
use std::time::UNIX_EPOCH;

use flate2::Compression;
use flate2::write::GzEncoder;
use prost::Message;

use crate::profile::LabelValue;
use crate::{Error, Profile};

/// The messages of `profile.proto`, written out by hand for prost so that
/// building the crate needs no `protoc`.
#[allow(missing_docs)]
pub(crate) mod proto {
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Profile {
        #[prost(message, repeated, tag = "1")]
        pub sample_type: Vec<ValueType>,
        #[prost(message, repeated, tag = "2")]
        pub sample: Vec<Sample>,
        #[prost(message, repeated, tag = "3")]
        pub mapping: Vec<Mapping>,
        #[prost(message, repeated, tag = "4")]
        pub location: Vec<Location>,
        #[prost(message, repeated, tag = "5")]
        pub function: Vec<Function>,
        #[prost(string, repeated, tag = "6")]
        pub string_table: Vec<String>,
        #[prost(int64, tag = "7")]
        pub drop_frames: i64,
        #[prost(int64, tag = "8")]
        pub keep_frames: i64,
        #[prost(int64, tag = "9")]
        pub time_nanos: i64,
        #[prost(int64, tag = "10")]
        pub duration_nanos: i64,
        #[prost(message, optional, tag = "11")]
        pub period_type: Option<ValueType>,
        #[prost(int64, tag = "12")]
        pub period: i64,
        #[prost(int64, repeated, tag = "13")]
        pub comment: Vec<i64>,
        #[prost(int64, tag = "14")]
        pub default_sample_type: i64,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ValueType {
        #[prost(int64, tag = "1")]
        pub r#type: i64,
        #[prost(int64, tag = "2")]
        pub unit: i64,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Sample {
        #[prost(uint64, repeated, tag = "1")]
        pub location_id: Vec<u64>,
        #[prost(int64, repeated, tag = "2")]
        pub value: Vec<i64>,
        #[prost(message, repeated, tag = "3")]
        pub label: Vec<Label>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Label {
        #[prost(int64, tag = "1")]
        pub key: i64,
        #[prost(int64, tag = "2")]
        pub str: i64,
        #[prost(int64, tag = "3")]
        pub num: i64,
        #[prost(int64, tag = "4")]
        pub num_unit: i64,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Mapping {
        #[prost(uint64, tag = "1")]
        pub id: u64,
        #[prost(uint64, tag = "2")]
        pub memory_start: u64,
        #[prost(uint64, tag = "3")]
        pub memory_limit: u64,
        #[prost(uint64, tag = "4")]
        pub file_offset: u64,
        #[prost(int64, tag = "5")]
        pub filename: i64,
        #[prost(int64, tag = "6")]
        pub build_id: i64,
        #[prost(bool, tag = "7")]
        pub has_functions: bool,
        #[prost(bool, tag = "8")]
        pub has_filenames: bool,
        #[prost(bool, tag = "9")]
        pub has_line_numbers: bool,
        #[prost(bool, tag = "10")]
        pub has_inline_frames: bool,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Location {
        #[prost(uint64, tag = "1")]
        pub id: u64,
        #[prost(uint64, tag = "2")]
        pub mapping_id: u64,
        #[prost(uint64, tag = "3")]
        pub address: u64,
        #[prost(message, repeated, tag = "4")]
        pub line: Vec<Line>,
        #[prost(bool, tag = "5")]
        pub is_folded: bool,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Line {
        #[prost(uint64, tag = "1")]
        pub function_id: u64,
        #[prost(int64, tag = "2")]
        pub line: i64,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Function {
        #[prost(uint64, tag = "1")]
        pub id: u64,
        #[prost(int64, tag = "2")]
        pub name: i64,
        #[prost(int64, tag = "3")]
        pub system_name: i64,
        #[prost(int64, tag = "4")]
        pub filename: i64,
        #[prost(int64, tag = "5")]
        pub start_line: i64,
    }
}

/// pprof's string table: index 0 is always the empty string.
#[derive(Default)]
struct Strings {
    table: Vec<String>,
    index: HashMap<String, i64>,
}

impl Strings {
    fn new() -> Self {
        let mut strings = Strings::default();
        strings.intern("");
        strings
    }

    fn intern(&mut self, s: &str) -> i64 {
        if let Some(&i) = self.index.get(s) {
            return i;
        }
        let i = self.table.len() as i64;
        self.table.push(s.to_owned());
        self.index.insert(s.to_owned(), i);
        i
    }
}

/// Which span of a sample its labels name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SpanLabels {
    /// `trace_id`, `span_id` and `span_name` of the innermost span: the
    /// agent's own routes and `Profile::to_pprof`.
    Innermost,
    /// `span_id` and `span_name` of the local root (the outermost span of
    /// the trace in this process), and no `trace_id`: what Pyroscope and
    /// Grafana expect of pushed profiles (Pyroscope turns every text label
    /// but `span_id` into a series label, so a `trace_id` would make a
    /// series per trace; the root's span id already names it).
    LocalRoot,
}

/// Builds the uncompressed message, with samples' spans labelled as
/// `spans` says.
pub(crate) fn to_message_labelled(profile: &Profile, spans: SpanLabels) -> proto::Profile {
    let mut strings = Strings::new();
    let value_type = |strings: &mut Strings, kind: &str, unit: &str| proto::ValueType {
        r#type: strings.intern(kind),
        unit: strings.intern(unit),
    };
    let kind = profile.kind;
    let sample_type = kind
        .sample_types()
        .iter()
        .map(|&(kind, unit)| value_type(&mut strings, kind, unit))
        .collect();
    let (period_kind, period_unit) = kind.period_type();
    let period_type = Some(value_type(&mut strings, period_kind, period_unit));
    let default_sample_type = kind
        .default_sample_type()
        .map_or(0, |name| strings.intern(name));

    let function = profile
        .functions
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let name = strings.intern(&f.name);
            proto::Function {
                id: i as u64 + 1,
                name,
                system_name: name,
                filename: f.file.as_deref().map_or(0, |file| strings.intern(file)),
                start_line: 0,
            }
        })
        .collect();

    let has_files = profile.functions.iter().any(|f| f.file.is_some());
    let has_lines = profile
        .locations
        .iter()
        .any(|l| l.lines.iter().any(|l| l.line.is_some()));
    let has_inlines = profile.locations.iter().any(|l| l.lines.len() > 1);
    let mapping = profile
        .modules
        .iter()
        .enumerate()
        .map(|(i, m)| proto::Mapping {
            id: i as u64 + 1,
            memory_start: m.start,
            memory_limit: m.end,
            file_offset: m.file_offset,
            filename: strings.intern(&m.name),
            build_id: m.build_id.as_ref().map_or(0, |id| strings.intern(&hex(id))),
            has_functions: true,
            has_filenames: has_files,
            has_line_numbers: has_lines,
            has_inline_frames: has_inlines,
        })
        .collect();

    let location = profile
        .locations
        .iter()
        .enumerate()
        .map(|(i, l)| proto::Location {
            id: i as u64 + 1,
            mapping_id: l.module.map_or(0, |m| u64::from(m) + 1),
            address: l.address,
            line: l
                .lines
                .iter()
                .map(|line| proto::Line {
                    function_id: u64::from(line.function) + 1,
                    line: line.line.map_or(0, i64::from),
                })
                .collect(),
            is_folded: false,
        })
        .collect();

    let thread_key = strings.intern("thread");
    let thread_id_key = strings.intern("thread_id");
    // The label names Pyroscope uses, so `-tagfocus=span_name=...` works.
    let trace_id_key = strings.intern("trace_id");
    let span_id_key = strings.intern("span_id");
    let span_name_key = strings.intern("span_name");
    let sample = profile
        .samples
        .iter()
        .map(|s| {
            let thread = &profile.threads[s.thread as usize];
            let mut label = vec![
                proto::Label {
                    key: thread_key,
                    str: strings.intern(&thread.name),
                    ..Default::default()
                },
                proto::Label {
                    key: thread_id_key,
                    num: i64::from(thread.tid),
                    ..Default::default()
                },
            ];
            if let Some(span) = s.span.map(|i| &profile.spans[i as usize]) {
                let text = |strings: &mut Strings, key, value: &str| proto::Label {
                    key,
                    str: strings.intern(value),
                    ..Default::default()
                };
                match spans {
                    SpanLabels::Innermost => {
                        label.push(text(
                            &mut strings,
                            trace_id_key,
                            &format!("{:032x}", span.trace_id),
                        ));
                        label.push(text(
                            &mut strings,
                            span_id_key,
                            &format!("{:016x}", span.span_id),
                        ));
                        label.push(text(&mut strings, span_name_key, span.name));
                    }
                    SpanLabels::LocalRoot => {
                        label.push(text(
                            &mut strings,
                            span_id_key,
                            &format!("{:016x}", span.local_root),
                        ));
                        label.push(text(&mut strings, span_name_key, span.root_name));
                    }
                }
            }
            for extra in &s.labels {
                let key = strings.intern(extra.key);
                label.push(match &extra.value {
                    LabelValue::Text(text) => proto::Label {
                        key,
                        str: strings.intern(text),
                        ..Default::default()
                    },
                    LabelValue::Number(num) => proto::Label {
                        key,
                        num: *num,
                        ..Default::default()
                    },
                });
            }
            proto::Sample {
                location_id: s.locations.iter().map(|&l| u64::from(l) + 1).collect(),
                value: kind.pprof_values(&s.values, profile.period),
                label,
            }
        })
        .collect();

    let time_nanos = profile
        .start
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64);
    proto::Profile {
        sample_type,
        sample,
        mapping,
        location,
        function,
        string_table: strings.table,
        time_nanos,
        duration_nanos: profile.duration.as_nanos() as i64,
        period_type,
        period: profile.period as i64,
        default_sample_type,
        ..Default::default()
    }
}

/// Encodes and gzips `profile`.
pub(crate) fn encode(profile: &Profile) -> Result<Vec<u8>, Error> {
    encode_labelled(profile, SpanLabels::Innermost, Compression::default())
}

/// Encodes and gzips `profile` at `level`, with samples' spans labelled as
/// `spans` says. The push compresses at the fastest level: it encodes a
/// profile every interval, and gzip's default level costs it several times
/// the CPU for a few percent fewer bytes.
pub(crate) fn encode_labelled(
    profile: &Profile,
    spans: SpanLabels,
    level: Compression,
) -> Result<Vec<u8>, Error> {
    let bytes = to_message_labelled(profile, spans).encode_to_vec();
    let mut gz = GzEncoder::new(Vec::with_capacity(bytes.len() / 4 + 64), level);
    gz.write_all(&bytes)?;
    Ok(gz.finish()?)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
