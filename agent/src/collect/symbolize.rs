//! Turning addresses into function names, files and lines.
//!
//! Runs on its own agent thread ("smolder-symbols"), never in the handler
//! and never on the collector (a first look at a large binary's symbols can
//! take a while, and the collector must keep draining). Results are cached
//! per address, for as long as the module they were found in stays loaded.
//!
//! [blazesym] reads ELF symbol tables and, where a module carries it, DWARF:
//! Rust names come out demangled without the hash suffix, inlined functions
//! as separate frames, with file and line. An address that cannot be
//! resolved is shown as `module+0xoffset` (the offset as `addr2line -e
//! module` expects it), never dropped.
//!
//! [blazesym]: https://docs.rs/blazesym

use std::collections::{HashMap, HashSet};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use blazesym::Pid;
use blazesym::symbolize::source::{Elf, Process, Source};
use blazesym::symbolize::{Input, Symbolized, Symbolizer};

use crate::collect::aggregate::stacks::TRUNCATED_FRAME;
use crate::sampler::unwind::modules::LoadedModule;

/// A loaded module, without its unwind data.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct ModuleDesc {
    pub(crate) name: String,
    pub(crate) path: Option<PathBuf>,
    pub(crate) bias: u64,
    pub(crate) avma_range: Range<u64>,
    pub(crate) file_offset: u64,
    pub(crate) build_id: Option<Vec<u8>>,
}

impl ModuleDesc {
    /// The short name shown in frames: the file name without directories.
    pub(crate) fn short_name(&self) -> &str {
        Path::new(&self.name)
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or(&self.name)
    }
}

/// The modules an address may belong to: those loaded now, then those
/// unloaded since the agent started (so samples taken before a `dlclose`
/// still resolve).
#[derive(Debug, Clone, Default)]
pub(crate) struct ModuleMap {
    /// Changes whenever the loaded set changes.
    pub(crate) generation: u64,
    loaded: Vec<ModuleDesc>,
    unloaded: Vec<ModuleDesc>,
}

/// Unloaded modules remembered, at most.
const MAX_UNLOADED_MODULES: usize = 256;

impl ModuleMap {
    /// The map after the loaded set became `modules`.
    pub(crate) fn updated(&self, modules: &[LoadedModule]) -> ModuleMap {
        let loaded: Vec<ModuleDesc> = modules
            .iter()
            .map(|m| ModuleDesc {
                name: m.name.clone(),
                path: m.path.clone(),
                bias: m.bias,
                avma_range: m.avma_range.clone(),
                file_offset: m.file_offset,
                build_id: m.build_id.clone(),
            })
            .collect();
        let mut unloaded: Vec<ModuleDesc> = self
            .loaded
            .iter()
            .filter(|old| !loaded.contains(old))
            .cloned()
            .chain(self.unloaded.iter().cloned())
            .collect();
        unloaded.truncate(MAX_UNLOADED_MODULES);
        ModuleMap {
            generation: self.generation + 1,
            loaded,
            unloaded,
        }
    }

    /// The module containing `avma`, preferring currently loaded ones.
    pub(crate) fn find(&self, avma: u64) -> Option<&ModuleDesc> {
        self.loaded
            .iter()
            .chain(&self.unloaded)
            .find(|m| m.avma_range.contains(&avma))
    }

    #[cfg(test)]
    pub(crate) fn loaded(&self) -> &[ModuleDesc] {
        &self.loaded
    }
}

/// One frame of a resolved address (an address yields several when
/// functions were inlined into each other).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct ResolvedFrame {
    pub(crate) function: Arc<str>,
    pub(crate) file: Option<Arc<str>>,
    pub(crate) line: Option<u32>,
}

/// An address, resolved: frames innermost (most deeply inlined) first, and
/// the module it lies in.
#[derive(Debug, Clone)]
pub(crate) struct Resolved {
    pub(crate) frames: Vec<ResolvedFrame>,
    pub(crate) module: Option<ModuleDesc>,
}

struct Request {
    modules: Arc<ModuleMap>,
    addresses: Vec<u64>,
    reply: mpsc::SyncSender<Vec<Arc<Resolved>>>,
}

/// Handle to the symbolisation thread.
pub(crate) struct SymbolService {
    requests: Option<mpsc::Sender<Request>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Cached addresses, at most; the cache is cleared when it reaches this.
const MAX_CACHED_ADDRESSES: usize = 200_000;

impl SymbolService {
    /// Starts the thread; it adds its kernel id to `own_threads` so that it
    /// is never sampled.
    pub(crate) fn spawn(own_threads: Arc<Mutex<HashSet<i32>>>) -> std::io::Result<Self> {
        let (requests, inbox) = mpsc::channel::<Request>();
        let thread = std::thread::Builder::new()
            .name("smolder-symbols".into())
            .stack_size(1 << 20)
            .spawn(move || {
                crate::sampler::threads::enter_agent_thread(&own_threads);
                drop(own_threads);
                serve(inbox)
            })?;
        Ok(SymbolService {
            requests: Some(requests),
            thread: Some(thread),
        })
    }

    /// Resolves `addresses` (lookup addresses, see `aggregate::stacks`). If
    /// the service is gone or does not answer within `patience`, every
    /// address falls back to its `module+0xoffset` form.
    pub(crate) fn resolve(
        &self,
        modules: &Arc<ModuleMap>,
        addresses: Vec<u64>,
        patience: Duration,
    ) -> Vec<Arc<Resolved>> {
        let (reply, answer) = mpsc::sync_channel(1);
        let request = Request {
            modules: Arc::clone(modules),
            addresses: addresses.clone(),
            reply,
        };
        let sent = self
            .requests
            .as_ref()
            .is_some_and(|r| r.send(request).is_ok());
        if sent && let Ok(resolved) = answer.recv_timeout(patience) {
            return resolved;
        }
        addresses
            .into_iter()
            .map(|a| Arc::new(unresolved(a, modules.find(a))))
            .collect()
    }
}

impl Drop for SymbolService {
    fn drop(&mut self) {
        drop(self.requests.take()); // ends the thread's receive loop
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// How long a blazesym symboliser is kept after its last use.
///
/// blazesym keeps every file it parsed (and, for a binary with full debug
/// info, its DWARF indexes) for the symboliser's lifetime: tens of megabytes
/// for a large binary. Holding it for good would make every agent that ever
/// rendered a profile that much bigger; dropping it after each batch makes a
/// burst of requests (a page of spans, say) parse the same DWARF again and
/// again. So it lives while requests keep coming, and goes when they stop.
/// Our own per-address cache keeps what was learned in either case.
const SYMBOLIZER_IDLE: Duration = Duration::from_secs(20);

/// A fresh symboliser. Split debug files (`/usr/lib/debug`) are not
/// consulted, for the memory reason above: libc's alone costs over 30 MB.
fn new_symbolizer() -> Symbolizer {
    Symbolizer::builder()
        .enable_code_info(true)
        .enable_inlined_fns(true)
        .enable_demangling(true)
        .set_debug_dirs(Some(Vec::<PathBuf>::new()))
        .build()
}

fn serve(inbox: mpsc::Receiver<Request>) {
    let mut cache: HashMap<u64, Arc<Resolved>> = HashMap::new();
    let mut cached_generation = None;
    let mut symbolizer: Option<Symbolizer> = None;
    loop {
        let request = match inbox.recv_timeout(SYMBOLIZER_IDLE) {
            Ok(request) => request,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                symbolizer = None;
                continue;
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => return,
        };
        if cache.len() > MAX_CACHED_ADDRESSES {
            cache.clear();
        }
        if cached_generation != Some(request.modules.generation) {
            // Keep what still holds: an address resolved inside a module
            // that is still loaded the same way. (A library replaced at the
            // same path is a new module here, and blazesym notices the new
            // file by its inode and modification time.)
            let modules = &request.modules;
            cache.retain(|&address, resolved| resolved.module.as_ref() == modules.find(address));
            cached_generation = Some(modules.generation);
        }
        let missing: Vec<u64> = request
            .addresses
            .iter()
            .copied()
            .filter(|a| !cache.contains_key(a))
            .collect();
        let resolved = if missing.is_empty() {
            Vec::new()
        } else {
            let symbolizer = symbolizer.get_or_insert_with(new_symbolizer);
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                resolve_uncached(symbolizer, &request.modules, &missing)
            }))
            .unwrap_or_default()
        };
        cache.extend(resolved);
        let answer = request
            .addresses
            .iter()
            .map(|a| {
                cache
                    .get(a)
                    .cloned()
                    .unwrap_or_else(|| Arc::new(unresolved(*a, request.modules.find(*a))))
            })
            .collect();
        let _ = request.reply.send(answer);
    }
}

/// Resolves addresses module by module, one blazesym batch per module.
fn resolve_uncached(
    symbolizer: &Symbolizer,
    modules: &ModuleMap,
    addresses: &[u64],
) -> Vec<(u64, Arc<Resolved>)> {
    let mut by_module: HashMap<Option<&ModuleDesc>, Vec<u64>> = HashMap::new();
    for &address in addresses {
        by_module
            .entry(modules.find(address))
            .or_default()
            .push(address);
    }
    let mut out = Vec::with_capacity(addresses.len());
    for (module, avmas) in by_module {
        let symbols = module.and_then(|m| match &m.path {
            Some(path) => {
                let svmas: Vec<u64> = avmas.iter().map(|a| a - m.bias).collect();
                symbolizer
                    .symbolize(&Source::Elf(Elf::new(path)), Input::VirtOffset(&svmas))
                    .ok()
            }
            // The vDSO has no file: blazesym reads its ELF image from our own
            // memory (it is mapped for the whole life of the process).
            None if m.name == "[vdso]" => symbolizer
                .symbolize(
                    &Source::Process(Process::new(Pid::Slf)),
                    Input::AbsAddr(&avmas),
                )
                .ok(),
            None => None,
        });
        for (i, &avma) in avmas.iter().enumerate() {
            let frames = symbols.as_ref().and_then(|s| s.get(i)).and_then(frames_of);
            let resolved = match frames {
                Some(frames) => Resolved {
                    frames,
                    module: module.cloned(),
                },
                None => unresolved(avma, module),
            };
            out.push((avma, Arc::new(resolved)));
        }
    }
    out
}

/// The frames of one symbolised address, innermost first.
///
/// blazesym reports the outer function in `Sym` and the functions inlined
/// into it in call order (outermost first) in `inlined`. Each inlined
/// function's `code_info` is the location *inside* it of the next level
/// down (or of the address, for the innermost), so a frame's line is where
/// that function was executing.
fn frames_of(symbolized: &Symbolized<'_>) -> Option<Vec<ResolvedFrame>> {
    let Symbolized::Sym(sym) = symbolized else {
        return None;
    };
    let location = |info: Option<&blazesym::symbolize::CodeInfo<'_>>| {
        info.map_or((None, None), |i| {
            (
                Some(Arc::<str>::from(i.to_path().display().to_string())),
                i.line,
            )
        })
    };
    let mut frames = Vec::with_capacity(1 + sym.inlined.len());
    let (file, line) = location(sym.code_info.as_deref());
    frames.push(ResolvedFrame {
        function: Arc::from(sym.name.as_ref()),
        file,
        line,
    });
    for inlined in sym.inlined.iter() {
        let (file, line) = location(inlined.code_info.as_ref());
        frames.push(ResolvedFrame {
            function: Arc::from(inlined.name.as_ref()),
            file,
            line,
        });
    }
    frames.reverse();
    Some(frames)
}

/// The stand-in for an address without a symbol: `module+0xoffset`.
pub(crate) fn unresolved(avma: u64, module: Option<&ModuleDesc>) -> Resolved {
    let function = match (avma, module) {
        (TRUNCATED_FRAME, _) => "[truncated]".to_owned(),
        (_, Some(m)) => format!("{}+{:#x}", m.short_name(), avma - m.bias),
        (_, None) => format!("[unknown]+{avma:#x}"),
    };
    Resolved {
        frames: vec![ResolvedFrame {
            function: Arc::from(function),
            file: None,
            line: None,
        }],
        module: module.cloned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[inline(never)]
    fn a_function_with_a_distinctive_name() -> u64 {
        std::hint::black_box(42)
    }

    fn map() -> Arc<ModuleMap> {
        Arc::new(ModuleMap::default().updated(&crate::sampler::unwind::modules::enumerate(&[])))
    }

    #[test]
    fn resolves_a_rust_function_without_hash_suffix() {
        let service = SymbolService::spawn(Default::default()).unwrap();
        let address = a_function_with_a_distinctive_name as *const () as u64 + 1;
        let resolved = service.resolve(&map(), vec![address], Duration::from_secs(60));
        let names: Vec<&str> = resolved[0].frames.iter().map(|f| &*f.function).collect();
        let outer = names.last().unwrap();
        assert!(
            outer.ends_with("a_function_with_a_distinctive_name"),
            "{names:?}"
        );
        assert!(
            !outer.contains("::h"),
            "hash suffix must be stripped: {outer}"
        );
    }

    #[test]
    fn vdso_functions_are_named() {
        let modules = map();
        let Some(vdso) = modules.loaded().iter().find(|m| m.name == "[vdso]") else {
            return; // a kernel without a vDSO has nothing to name
        };
        // Somewhere inside the vDSO's code: every word of it belongs to one of
        // its few functions, which have symbols.
        let service = SymbolService::spawn(Default::default()).unwrap();
        let inside = vdso.avma_range.start + (vdso.avma_range.end - vdso.avma_range.start) / 2;
        let resolved = service.resolve(&modules, vec![inside], Duration::from_secs(60));
        let name = &resolved[0].frames[0].function;
        assert!(
            !name.contains("+0x") || name.starts_with("[vdso]"),
            "{name}"
        );
    }

    #[test]
    fn unknown_addresses_become_module_plus_offset() {
        let modules = map();
        let exe = modules
            .loaded()
            .iter()
            .find(|m| m.avma_range.start > 0x1000)
            .unwrap();
        let inside = unresolved(exe.avma_range.start + 0x10, Some(exe));
        assert!(inside.frames[0].function.contains("+0x"));
        let nowhere = unresolved(0x10, modules.find(0x10));
        assert_eq!(&*nowhere.frames[0].function, "[unknown]+0x10");
        assert_eq!(
            &*unresolved(TRUNCATED_FRAME, None).frames[0].function,
            "[truncated]"
        );
    }

    #[test]
    fn unloaded_modules_are_remembered() {
        let desc = |name: &str, start: u64| LoadedModule {
            name: name.to_owned(),
            path: None,
            bias: start,
            avma_range: start..start + 0x1000,
            file_offset: 0,
            build_id: None,
            unwind: None,
            unwind_bytes: 0,
        };
        let first = ModuleMap::default().updated(&[desc("a.so", 0x10000), desc("b.so", 0x20000)]);
        let second = first.updated(&[desc("a.so", 0x10000)]);
        assert_eq!(second.find(0x20010).unwrap().name, "b.so");
        assert_eq!(second.loaded().len(), 1);
        assert!(second.generation > first.generation);
    }
}
