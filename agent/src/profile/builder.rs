//! Building a [`Profile`] from symbolised stacks: functions, locations,
//! modules, threads and spans are interned as samples are added.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::*;

/// Assembles a [`Profile`] from symbolised stacks.
pub(crate) struct ProfileBuilder {
    profile: Profile,
    functions: HashMap<Function, u32>,
    locations: HashMap<u64, u32>,
    modules: HashMap<String, u32>,
    threads: HashMap<(i32, String), u32>,
    spans: HashMap<SpanLabel, u32>,
}

impl ProfileBuilder {
    /// A profile of `kind` over `duration` from `start`; see [`Profile`]
    /// for what `frequency_hz` and `period` mean for each kind.
    pub(crate) fn new(
        kind: ProfileKind,
        start: SystemTime,
        duration: Duration,
        frequency_hz: u32,
        period: u64,
    ) -> Self {
        ProfileBuilder {
            profile: Profile {
                kind,
                start,
                duration,
                frequency_hz,
                period,
                functions: Vec::new(),
                locations: Vec::new(),
                modules: Vec::new(),
                threads: Vec::new(),
                spans: Vec::new(),
                samples: Vec::new(),
            },
            functions: HashMap::new(),
            locations: HashMap::new(),
            modules: HashMap::new(),
            threads: HashMap::new(),
            spans: HashMap::new(),
        }
    }

    /// Adds (or finds) the location for `address`, given how it resolved.
    pub(crate) fn location(
        &mut self,
        address: u64,
        resolved: &crate::collect::symbolize::Resolved,
    ) -> u32 {
        if let Some(&id) = self.locations.get(&address) {
            return id;
        }
        let module = resolved.module.as_ref().map(|m| {
            let next = self.modules.len() as u32;
            *self.modules.entry(m.name.clone()).or_insert_with(|| {
                self.profile.modules.push(Module {
                    name: m.name.clone(),
                    start: m.avma_range.start,
                    end: m.avma_range.end,
                    file_offset: m.file_offset,
                    build_id: m.build_id.clone(),
                });
                next
            })
        });
        let lines = resolved
            .frames
            .iter()
            .map(|frame| {
                let function = Function {
                    name: Arc::clone(&frame.function),
                    file: frame.file.clone(),
                };
                let next = self.functions.len() as u32;
                let id = *self.functions.entry(function.clone()).or_insert_with(|| {
                    self.profile.functions.push(function);
                    next
                });
                Line {
                    function: id,
                    line: frame.line,
                }
            })
            .collect();
        let id = self.profile.locations.len() as u32;
        self.profile.locations.push(Location {
            address,
            module,
            lines,
        });
        self.locations.insert(address, id);
        id
    }

    pub(crate) fn sample(
        &mut self,
        locations: Vec<u32>,
        tid: i32,
        thread_name: &str,
        span: Option<SpanLabel>,
        labels: Vec<Label>,
        values: Values,
    ) {
        let next = self.threads.len() as u32;
        let thread = *self
            .threads
            .entry((tid, thread_name.to_owned()))
            .or_insert_with(|| {
                self.profile.threads.push(Thread {
                    tid,
                    name: thread_name.to_owned(),
                });
                next
            });
        let span = span.map(|info| {
            let next = self.spans.len() as u32;
            *self.spans.entry(info).or_insert_with(|| {
                self.profile.spans.push(info);
                next
            })
        });
        self.profile.samples.push(Sample {
            locations,
            thread,
            span,
            labels,
            values,
        });
    }

    pub(crate) fn finish(self) -> Profile {
        self.profile
    }
}
