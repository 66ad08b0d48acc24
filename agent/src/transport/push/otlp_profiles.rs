//! OTLP profiles: each interval's profiles as an
//! `ExportProfilesServiceRequest` of the OpenTelemetry profiles signal,
//! `opentelemetry.proto.profiles.v1development`, for an OpenTelemetry
//! Collector (cargo feature `otlp-profiles`).
//!
//! It speaks the protocol as the `opentelemetry-proto` crate (0.33)
//! generates it from opentelemetry-proto v1.10.0: a request-wide
//! dictionary (strings, functions, mappings, locations, stacks, attributes
//! and links, each table starting with its zero value) and, per profile,
//! one sample type. A profile kind with several sample types (pprof's
//! `samples/count` and `cpu/nanoseconds` for CPU) becomes one profile per
//! type, sharing the dictionary. Each sample links to the span it was
//! taken in (the innermost one) through the link table: its `trace_id` and
//! `span_id`. Threads are sample attributes (`thread.name`, `thread.id`).
//! The resource is the one exported spans carry.
//!
//! The signal is still in development and its messages change from one
//! proto release to the next (v1.9 dropped fields, v1.10 moved attributes
//! to references), so this uses the crate's generated types, behind the
//! feature, rather than hand-written ones: they follow the proto exactly,
//! and a version bump is a compile error here rather than a silently wrong
//! encoding. Without the feature none of it is compiled.

use std::collections::HashMap;

use bytes::Bytes;
use opentelemetry_proto::tonic::collector::profiles::v1development::ExportProfilesServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::profiles::v1development as otlp;
use opentelemetry_proto::tonic::resource::v1::Resource;
use prost::Message as _;

use crate::Profile;

/// The profiles service's gRPC `Export` method.
pub(crate) const EXPORT_PATH: &str =
    "/opentelemetry.proto.collector.profiles.v1development.ProfilesService/Export";

/// Builds requests for one collector.
pub(crate) struct ProfilesEncoder {
    resource: Resource,
}

impl ProfilesEncoder {
    pub(crate) fn new(resource: &opentelemetry_sdk::Resource) -> ProfilesEncoder {
        let attributes = resource
            .iter()
            .map(|(key, value)| KeyValue {
                key: key.to_string(),
                value: Some(any_value(value)),
                ..Default::default()
            })
            .collect();
        ProfilesEncoder {
            resource: Resource {
                attributes,
                ..Default::default()
            },
        }
    }

    /// One request holding `profiles`.
    pub(crate) fn request(&self, profiles: &[&Profile]) -> Bytes {
        let mut dictionary = Dictionary::new();
        let mut random = crate::sampler::random::SplitMix64::seeded();
        let mut out = Vec::new();
        for profile in profiles {
            let kind = profile.kind;
            // The profile's own tables in the dictionary: each location
            // once, each sample's stack, thread attributes and link.
            let locations: Vec<i32> = (0..profile.locations.len())
                .map(|i| dictionary.location(profile, i))
                .collect();
            let shared: Vec<(i32, Vec<i32>, i32)> = profile
                .samples
                .iter()
                .map(|sample| {
                    let stack = dictionary.stack(
                        sample
                            .locations
                            .iter()
                            .map(|&l| locations[l as usize])
                            .collect(),
                    );
                    let thread = &profile.threads[sample.thread as usize];
                    let attributes = vec![
                        dictionary.attribute("thread.name", Value::Text(&thread.name)),
                        dictionary.attribute("thread.id", Value::Int(i64::from(thread.tid))),
                    ];
                    let link = sample.span.map_or(0, |span| {
                        let span = &profile.spans[span as usize];
                        dictionary.link(span.trace_id, span.span_id)
                    });
                    (stack, attributes, link)
                })
                .collect();
            let (period_type, period_unit) = kind.period_type();
            let period_type = Some(dictionary.value_type(period_type, period_unit));
            for (index, &(sample_type, unit)) in kind.sample_types().iter().enumerate() {
                let samples = profile
                    .samples
                    .iter()
                    .zip(&shared)
                    .map(|(sample, (stack, attributes, link))| otlp::Sample {
                        stack_index: *stack,
                        attribute_indices: attributes.clone(),
                        link_index: *link,
                        values: vec![kind.pprof_values(&sample.values, profile.period)[index]],
                        timestamps_unix_nano: Vec::new(),
                    })
                    .collect();
                let mut profile_id = [0u8; 16];
                profile_id[..8].copy_from_slice(&random.next_u64().to_be_bytes());
                profile_id[8..].copy_from_slice(&random.next_u64().to_be_bytes());
                out.push(otlp::Profile {
                    sample_type: Some(dictionary.value_type(sample_type, unit)),
                    samples,
                    time_unix_nano: crate::wire::unix_nanos(profile.start),
                    duration_nano: profile.duration.as_nanos() as u64,
                    period_type,
                    period: profile.period as i64,
                    profile_id: profile_id.to_vec(),
                    ..Default::default()
                });
            }
        }
        let request = ExportProfilesServiceRequest {
            resource_profiles: vec![otlp::ResourceProfiles {
                resource: Some(self.resource.clone()),
                scope_profiles: vec![otlp::ScopeProfiles {
                    scope: Some(InstrumentationScope {
                        name: "smolder".into(),
                        version: env!("CARGO_PKG_VERSION").into(),
                        ..Default::default()
                    }),
                    profiles: out,
                    schema_url: String::new(),
                }],
                schema_url: String::new(),
            }],
            dictionary: Some(dictionary.finish()),
        };
        Bytes::from(request.encode_to_vec())
    }
}

/// An attribute value, before it is interned.
enum Value<'a> {
    Text(&'a str),
    Int(i64),
}

/// The request's dictionary, being filled; every table starts with its
/// zero value, which index 0 means "none".
struct Dictionary {
    tables: otlp::ProfilesDictionary,
    strings: HashMap<String, i32>,
    functions: HashMap<(i32, i32), i32>,
    mappings: HashMap<String, i32>,
    /// Locations by (profile pointer, index): a profile's own tables are
    /// interned once per request.
    locations: HashMap<(usize, usize), i32>,
    stacks: HashMap<Vec<i32>, i32>,
    attributes: HashMap<(i32, AttributeKey), i32>,
    links: HashMap<(u128, u64), i32>,
}

#[derive(Hash, PartialEq, Eq)]
enum AttributeKey {
    Text(i32),
    Int(i64),
}

impl Dictionary {
    fn new() -> Dictionary {
        let mut dictionary = Dictionary {
            tables: otlp::ProfilesDictionary {
                mapping_table: vec![otlp::Mapping::default()],
                location_table: vec![otlp::Location::default()],
                function_table: vec![otlp::Function::default()],
                link_table: vec![otlp::Link::default()],
                string_table: Vec::new(),
                attribute_table: vec![otlp::KeyValueAndUnit::default()],
                stack_table: vec![otlp::Stack::default()],
            },
            strings: HashMap::new(),
            functions: HashMap::new(),
            mappings: HashMap::new(),
            locations: HashMap::new(),
            stacks: HashMap::new(),
            attributes: HashMap::new(),
            links: HashMap::new(),
        };
        dictionary.string("");
        dictionary
    }

    fn finish(self) -> otlp::ProfilesDictionary {
        self.tables
    }

    fn string(&mut self, text: &str) -> i32 {
        if let Some(&index) = self.strings.get(text) {
            return index;
        }
        let index = self.tables.string_table.len() as i32;
        self.tables.string_table.push(text.to_owned());
        self.strings.insert(text.to_owned(), index);
        index
    }

    fn value_type(&mut self, kind: &str, unit: &str) -> otlp::ValueType {
        otlp::ValueType {
            type_strindex: self.string(kind),
            unit_strindex: self.string(unit),
        }
    }

    fn attribute(&mut self, key: &str, value: Value<'_>) -> i32 {
        let key = self.string(key);
        let interned = match value {
            Value::Text(text) => AttributeKey::Text(self.string(text)),
            Value::Int(number) => AttributeKey::Int(number),
        };
        let next = self.tables.attribute_table.len() as i32;
        let string_table = &self.tables.string_table;
        *self
            .attributes
            .entry((key, interned))
            .or_insert_with_key(|(_, v)| {
                let value = match v {
                    AttributeKey::Text(s) => {
                        any_value::Value::StringValue(string_table[*s as usize].clone())
                    }
                    AttributeKey::Int(n) => any_value::Value::IntValue(*n),
                };
                self.tables.attribute_table.push(otlp::KeyValueAndUnit {
                    key_strindex: key,
                    value: Some(AnyValue { value: Some(value) }),
                    unit_strindex: 0,
                });
                next
            })
    }

    fn link(&mut self, trace_id: u128, span_id: u64) -> i32 {
        let next = self.tables.link_table.len() as i32;
        *self.links.entry((trace_id, span_id)).or_insert_with(|| {
            self.tables.link_table.push(otlp::Link {
                trace_id: trace_id.to_be_bytes().to_vec(),
                span_id: span_id.to_be_bytes().to_vec(),
            });
            next
        })
    }

    fn stack(&mut self, locations: Vec<i32>) -> i32 {
        if let Some(&index) = self.stacks.get(&locations) {
            return index;
        }
        let index = self.tables.stack_table.len() as i32;
        self.tables.stack_table.push(otlp::Stack {
            location_indices: locations.clone(),
        });
        self.stacks.insert(locations, index);
        index
    }

    fn location(&mut self, profile: &Profile, index: usize) -> i32 {
        let key = (profile as *const Profile as usize, index);
        if let Some(&found) = self.locations.get(&key) {
            return found;
        }
        let location = &profile.locations[index];
        let mapping_index = location
            .module
            .map_or(0, |m| self.mapping(profile, m as usize));
        let lines = location
            .lines
            .iter()
            .map(|line| {
                let function = &profile.functions[line.function as usize];
                otlp::Line {
                    function_index: self.function(&function.name, function.file.as_deref()),
                    line: line.line.map_or(0, i64::from),
                    column: 0,
                }
            })
            .collect();
        let found = self.tables.location_table.len() as i32;
        self.tables.location_table.push(otlp::Location {
            mapping_index,
            address: location.address,
            lines,
            attribute_indices: Vec::new(),
        });
        self.locations.insert(key, found);
        found
    }

    fn function(&mut self, name: &str, file: Option<&str>) -> i32 {
        let name = self.string(name);
        let file = file.map_or(0, |f| self.string(f));
        let next = self.tables.function_table.len() as i32;
        *self.functions.entry((name, file)).or_insert_with(|| {
            self.tables.function_table.push(otlp::Function {
                name_strindex: name,
                system_name_strindex: name,
                filename_strindex: file,
                start_line: 0,
            });
            next
        })
    }

    fn mapping(&mut self, profile: &Profile, index: usize) -> i32 {
        let module = &profile.modules[index];
        if let Some(&found) = self.mappings.get(&module.name) {
            return found;
        }
        let filename = self.string(&module.name);
        let attributes = match &module.build_id {
            Some(id) => {
                let hex: String = id.iter().map(|b| format!("{b:02x}")).collect();
                vec![self.attribute("process.executable.build_id.gnu", Value::Text(&hex))]
            }
            None => Vec::new(),
        };
        let found = self.tables.mapping_table.len() as i32;
        self.tables.mapping_table.push(otlp::Mapping {
            memory_start: module.start,
            memory_limit: module.end,
            file_offset: module.file_offset,
            filename_strindex: filename,
            attribute_indices: attributes,
        });
        self.mappings.insert(module.name.clone(), found);
        found
    }
}

/// An OpenTelemetry value as OTLP's `AnyValue`.
fn any_value(value: &opentelemetry::Value) -> AnyValue {
    use opentelemetry::Value as V;
    let value = match value {
        V::Bool(b) => any_value::Value::BoolValue(*b),
        V::I64(i) => any_value::Value::IntValue(*i),
        V::F64(f) => any_value::Value::DoubleValue(*f),
        other => any_value::Value::StringValue(other.to_string()),
    };
    AnyValue { value: Some(value) }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::{Duration, SystemTime};

    use opentelemetry_proto::tonic::collector::profiles::v1development::ExportProfilesServiceRequest;

    use super::*;
    use crate::collect::symbolize::{Resolved, ResolvedFrame};
    use crate::profile::{ProfileBuilder, ProfileKind};
    use crate::sampler::span_context::SpanLabel;

    fn resolved(function: &str) -> Resolved {
        Resolved {
            frames: vec![ResolvedFrame {
                function: Arc::from(function),
                file: Some(Arc::from("src/shop.rs")),
                line: Some(7),
            }],
            module: None,
        }
    }

    /// A CPU profile of two stacks, one in a span.
    fn profile() -> Profile {
        let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let mut builder = ProfileBuilder::new(
            ProfileKind::Cpu,
            start,
            Duration::from_secs(10),
            100,
            10_000_000,
        );
        let main = builder.location(0x1000, &resolved("main"));
        let hot = builder.location(0x2000, &resolved("hot"));
        let span = SpanLabel {
            trace_id: 0xabc,
            span_id: 0x12,
            name: "query",
            local_root: 0x11,
            root_name: "request",
        };
        builder.sample(
            vec![hot, main],
            7,
            "worker",
            Some(span),
            Vec::new(),
            [30_000_000, 0, 0, 0],
        );
        builder.sample(
            vec![main],
            8,
            "idle",
            None,
            Vec::new(),
            [10_000_000, 0, 0, 0],
        );
        builder.finish()
    }

    #[test]
    fn requests_decode_with_the_official_types() {
        let resource = opentelemetry_sdk::Resource::builder_empty()
            .with_service_name("checkout")
            .build();
        let bytes = ProfilesEncoder::new(&resource).request(&[&profile()]);
        let request = ExportProfilesServiceRequest::decode(&bytes[..]).expect("decodes");
        let dictionary = request.dictionary.expect("a dictionary");
        // Every table starts with its zero value.
        assert_eq!(dictionary.string_table[0], "");
        assert_eq!(dictionary.location_table[0], otlp::Location::default());
        assert_eq!(dictionary.link_table[0], otlp::Link::default());
        assert_eq!(dictionary.stack_table[0], otlp::Stack::default());
        let string = |i: i32| dictionary.string_table[i as usize].as_str();
        let resource_profiles = &request.resource_profiles[0];
        let service = &resource_profiles.resource.as_ref().unwrap().attributes;
        assert!(service.iter().any(|kv| kv.key == "service.name"));
        let profiles = &resource_profiles.scope_profiles[0].profiles;
        // One sample type per profile: CPU's two, as pprof has them.
        let types: Vec<(&str, &str)> = profiles
            .iter()
            .map(|p| {
                let t = p.sample_type.unwrap();
                (string(t.type_strindex), string(t.unit_strindex))
            })
            .collect();
        assert_eq!(types, [("samples", "count"), ("cpu", "nanoseconds")]);
        let cpu = &profiles[1];
        assert_eq!(cpu.duration_nano, 10_000_000_000);
        assert_eq!(cpu.time_unix_nano, 1_700_000_000_000_000_000);
        let values: Vec<i64> = cpu.samples.iter().map(|s| s.values[0]).collect();
        assert_eq!(values, [30_000_000, 10_000_000]);
        assert_eq!(profiles[0].samples[0].values, [3]);
        // The sample in a span links to it; the other links nowhere.
        let link = &dictionary.link_table[cpu.samples[0].link_index as usize];
        assert_eq!(link.trace_id, 0xabc_u128.to_be_bytes());
        assert_eq!(link.span_id, 0x12_u64.to_be_bytes());
        assert_eq!(cpu.samples[1].link_index, 0);
        // Stacks leaf first, functions named.
        let stack = &dictionary.stack_table[cpu.samples[0].stack_index as usize];
        let names: Vec<&str> = stack
            .location_indices
            .iter()
            .map(|&l| {
                let line = &dictionary.location_table[l as usize].lines[0];
                string(dictionary.function_table[line.function_index as usize].name_strindex)
            })
            .collect();
        assert_eq!(names, ["hot", "main"]);
        // Threads are attributes.
        let thread: Vec<(&str, String)> = cpu.samples[0]
            .attribute_indices
            .iter()
            .map(|&a| {
                let kv = &dictionary.attribute_table[a as usize];
                let value = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                    Some(any_value::Value::StringValue(s)) => s.clone(),
                    Some(any_value::Value::IntValue(i)) => i.to_string(),
                    other => format!("{other:?}"),
                };
                (string(kv.key_strindex), value)
            })
            .collect();
        assert_eq!(
            thread,
            [
                ("thread.name", "worker".to_owned()),
                ("thread.id", "7".to_owned())
            ]
        );
    }
}
