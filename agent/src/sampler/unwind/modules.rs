//! The loaded modules (executable, shared libraries, vDSO) and their unwind
//! data, read with `dl_iterate_phdr` on an agent thread.
//!
//! For each module the agent copies `.eh_frame_hdr` and `.eh_frame` out of
//! the mapped image while the loader holds the module in place (inside the
//! `dl_iterate_phdr` callback). The unwinder therefore owns its data: a
//! library unloaded with `dlclose` between two refreshes leaves stale but
//! valid memory behind, never a dangling mapping the handler could fault on.
//! Copying from memory rather than from the file on disk also covers the vDSO
//! and binaries replaced on disk while running.
//!
//! The copy is taken once per module and shared (`Arc`) between successive
//! unwinder tables.

use std::ffi::{CStr, c_int, c_void};
use std::ops::Range;
use std::path::PathBuf;
use std::sync::Arc;

use framehop::{ExplicitModuleSectionInfo, Module};

use crate::sampler::mapped::MappedBytes;

const PT_LOAD: u32 = 1;
const PT_NOTE: u32 = 4;
const PT_GNU_EH_FRAME: u32 = 0x6474_e550;
const PF_X: u32 = 1;
const NT_GNU_BUILD_ID: u32 = 3;

/// One loaded module as the agent sees it.
#[derive(Clone)]
pub(crate) struct LoadedModule {
    /// The file path, or `[vdso]`; for display and symbolisation.
    pub(crate) name: String,
    /// The file to symbolise from; `None` for the vDSO.
    pub(crate) path: Option<PathBuf>,
    /// Load bias: an address in the process is the file's address plus this.
    pub(crate) bias: u64,
    /// Addresses covered by the module's loadable segments.
    pub(crate) avma_range: Range<u64>,
    /// File offset of the lowest loadable segment (for pprof mappings).
    pub(crate) file_offset: u64,
    /// GNU build id, if the module carries one.
    pub(crate) build_id: Option<Vec<u8>>,
    /// Unwind data for framehop, `None` if the module has no `.eh_frame_hdr`.
    pub(crate) unwind: Option<Arc<Module<MappedBytes>>>,
    /// Bytes of unwind data copied for this module.
    pub(crate) unwind_bytes: usize,
}

impl std::fmt::Debug for LoadedModule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedModule")
            .field("name", &self.name)
            .field("bias", &format_args!("{:#x}", self.bias))
            .field("avma_range", &format_args!("{:#x?}", self.avma_range))
            .field("has_unwind_info", &self.unwind.is_some())
            .finish()
    }
}

/// The loader's load/unload counters: a cheap "did anything change?" probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct LoadGeneration {
    adds: u64,
    subs: u64,
}

/// Reads the loader's counters without copying anything.
pub(crate) fn load_generation() -> LoadGeneration {
    unsafe extern "C" fn first_only(
        info: *mut libc::dl_phdr_info,
        size: usize,
        data: *mut c_void,
    ) -> c_int {
        // SAFETY: `data` is the `LoadGeneration` passed below; `info` is valid
        // for the duration of the callback, and `size` says which fields exist.
        unsafe {
            let out = &mut *data.cast::<LoadGeneration>();
            if size >= std::mem::offset_of!(libc::dl_phdr_info, dlpi_subs) + 8 {
                out.adds = (*info).dlpi_adds;
                out.subs = (*info).dlpi_subs;
            }
        }
        1 // the counters are the same in every entry: stop after the first
    }
    let mut generation = LoadGeneration::default();
    // SAFETY: the callback only writes through `data`, which outlives the call.
    unsafe {
        libc::dl_iterate_phdr(Some(first_only), (&raw mut generation).cast());
    }
    generation
}

/// Lists the loaded modules, copying unwind data for those in `known` that
/// are not already there (matched by name and load bias).
pub(crate) fn enumerate(known: &[LoadedModule]) -> Vec<LoadedModule> {
    struct Walk<'a> {
        known: &'a [LoadedModule],
        found: Vec<LoadedModule>,
    }
    unsafe extern "C" fn visit(
        info: *mut libc::dl_phdr_info,
        _size: usize,
        data: *mut c_void,
    ) -> c_int {
        // SAFETY: `data` is the `Walk` passed below; the loader guarantees
        // `info` and the module's memory stay valid during the callback.
        let walk = unsafe { &mut *data.cast::<Walk<'_>>() };
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            // SAFETY: as above.
            unsafe { describe(&*info, walk.known) }
        }));
        if let Ok(Some(module)) = result {
            walk.found.push(module);
        }
        0
    }
    let mut walk = Walk {
        known,
        found: Vec::new(),
    };
    // SAFETY: the callback only touches `walk`, which outlives the call.
    unsafe {
        libc::dl_iterate_phdr(Some(visit), (&raw mut walk).cast());
    }
    walk.found.sort_by_key(|m| m.avma_range.start);
    walk.found
}

/// Reads one module's description and unwind data.
///
/// # Safety
/// Must run inside a `dl_iterate_phdr` callback for `info`.
unsafe fn describe(info: &libc::dl_phdr_info, known: &[LoadedModule]) -> Option<LoadedModule> {
    let bias = info.dlpi_addr;
    // SAFETY: the loader gives `dlpi_phnum` program headers at `dlpi_phdr`.
    let headers = unsafe { std::slice::from_raw_parts(info.dlpi_phdr, info.dlpi_phnum as usize) };
    let loads: Vec<&libc::Elf64_Phdr> = headers.iter().filter(|h| h.p_type == PT_LOAD).collect();
    let start = loads.iter().map(|h| h.p_vaddr).min()?;
    let end = loads.iter().map(|h| h.p_vaddr + h.p_memsz).max()?;
    let avma_range = bias + start..bias + end;
    let file_offset = loads
        .iter()
        .min_by_key(|h| h.p_vaddr)
        .map_or(0, |h| h.p_offset);

    // SAFETY: the loader gives a NUL-terminated (possibly empty) name.
    let raw_name = unsafe { info.dlpi_name.as_ref().map(|p| CStr::from_ptr(p)) }
        .map(|c| c.to_string_lossy().into_owned())
        .unwrap_or_default();
    let (name, path) = if raw_name.is_empty() {
        let exe = std::fs::read_link("/proc/self/exe").ok();
        let name = exe
            .as_ref()
            .map_or_else(|| "[executable]".to_owned(), |p| p.display().to_string());
        (name, exe)
    } else if raw_name.contains("linux-vdso") || raw_name.contains("linux-gate") {
        ("[vdso]".to_owned(), None)
    } else {
        (raw_name.clone(), Some(PathBuf::from(raw_name)))
    };

    if let Some(existing) = known
        .iter()
        .find(|m| m.bias == bias && m.name == name && m.avma_range == avma_range)
    {
        return Some(existing.clone());
    }

    // SAFETY: inside the callback, every loadable segment is mapped.
    let build_id = unsafe { find_build_id(bias, headers) };
    // SAFETY: as above.
    let (unwind, unwind_bytes) =
        unsafe { copy_unwind_data(&name, bias, headers, &loads, &avma_range) }
            .map_or((None, 0), |(module, bytes)| (Some(Arc::new(module)), bytes));
    Some(LoadedModule {
        name,
        path,
        bias,
        avma_range,
        file_offset,
        build_id,
        unwind,
        unwind_bytes,
    })
}

/// Copies `len` bytes at process address `avma`.
///
/// # Safety
/// The range must be mapped and readable for the duration of the call.
/// The copy lives in its own mapping (see `crate::sampler::mapped`); `None` if the
/// system refuses one.
unsafe fn copy_mapped(avma: u64, len: usize) -> Option<MappedBytes> {
    // SAFETY: per the contract.
    MappedBytes::copy_of(unsafe { std::slice::from_raw_parts(avma as *const u8, len) }).ok()
}

/// Builds the framehop module from `.eh_frame_hdr` (found through
/// `PT_GNU_EH_FRAME`) and `.eh_frame` (found through the header's pointer,
/// sized by walking its records to the zero terminator).
///
/// # Safety
/// Must run inside a `dl_iterate_phdr` callback for the module.
unsafe fn copy_unwind_data(
    name: &str,
    bias: u64,
    headers: &[libc::Elf64_Phdr],
    loads: &[&libc::Elf64_Phdr],
    avma_range: &Range<u64>,
) -> Option<(Module<MappedBytes>, usize)> {
    let hdr_header = headers.iter().find(|h| h.p_type == PT_GNU_EH_FRAME)?;
    let hdr_svma = hdr_header.p_vaddr..hdr_header.p_vaddr + hdr_header.p_memsz;
    let segment_end = |svma: u64| {
        loads
            .iter()
            .find(|h| (h.p_vaddr..h.p_vaddr + h.p_memsz).contains(&svma))
            .map(|h| h.p_vaddr + h.p_memsz)
    };
    // The header must lie inside a loaded segment for the copy to be safe.
    if segment_end(hdr_svma.start)? < hdr_svma.end || hdr_header.p_memsz < 8 {
        return None;
    }
    // SAFETY: checked above to lie inside a loaded segment.
    let eh_frame_hdr = unsafe { copy_mapped(bias + hdr_svma.start, hdr_header.p_memsz as usize) }?;
    let eh_frame_svma_start = decode_eh_frame_ptr(&eh_frame_hdr, hdr_svma.start)?;
    let limit = segment_end(eh_frame_svma_start)?;
    // SAFETY: `eh_frame_extent` reads only inside `[start, limit)`, a loaded segment.
    let eh_frame_len = unsafe { eh_frame_extent(bias + eh_frame_svma_start, bias + limit) };
    if eh_frame_len == 0 {
        return None;
    }
    // SAFETY: as above.
    let eh_frame = unsafe { copy_mapped(bias + eh_frame_svma_start, eh_frame_len) }?;
    let text_svma = loads
        .iter()
        .find(|h| h.p_flags & PF_X != 0)
        .map(|h| h.p_vaddr..h.p_vaddr + h.p_memsz);
    let copied = eh_frame.len() + eh_frame_hdr.len();
    let section_info = ExplicitModuleSectionInfo {
        base_svma: 0,
        text_svma,
        eh_frame_svma: Some(eh_frame_svma_start..eh_frame_svma_start + eh_frame_len as u64),
        eh_frame: Some(eh_frame),
        eh_frame_hdr_svma: Some(hdr_svma),
        eh_frame_hdr: Some(eh_frame_hdr),
        // Spelled out: `..Default::default()` would need `MappedBytes: Default`.
        text: None,
        stubs_svma: None,
        stub_helper_svma: None,
        got_svma: None,
        unwind_info: None,
        debug_frame: None,
        text_segment_svma: None,
        text_segment: None,
    };
    Some((
        Module::new(name.to_owned(), avma_range.clone(), bias, section_info),
        copied,
    ))
}

/// Decodes `.eh_frame_hdr`'s `eh_frame_ptr` into a file-relative address.
fn decode_eh_frame_ptr(hdr: &[u8], hdr_svma: u64) -> Option<u64> {
    const PCREL: u8 = 0x10;
    const DATAREL: u8 = 0x30;
    let (&version, &encoding) = (hdr.first()?, hdr.get(1)?);
    if version != 1 {
        return None;
    }
    let field = hdr.get(4..)?;
    let raw: i64 = match encoding & 0x0f {
        0x03 => u32::from_le_bytes(field.get(..4)?.try_into().ok()?) as i64,
        0x0b => i32::from_le_bytes(field.get(..4)?.try_into().ok()?) as i64,
        0x04 | 0x0c => i64::from_le_bytes(field.get(..8)?.try_into().ok()?),
        _ => return None,
    };
    let base = match encoding & 0x70 {
        0 => 0,
        PCREL => hdr_svma + 4,
        DATAREL => hdr_svma,
        _ => return None,
    };
    Some(base.wrapping_add_signed(raw))
}

/// Length of the `.eh_frame` section at `start`: its CIE/FDE records up to
/// and including the zero terminator, never reading at or past `limit`.
///
/// # Safety
/// `[start, limit)` must be mapped and readable.
unsafe fn eh_frame_extent(start: u64, limit: u64) -> usize {
    let read_u32 = |at: u64| -> Option<u32> {
        // SAFETY: callers check `at + 4 <= limit`; unaligned reads are fine.
        (at + 4 <= limit).then(|| unsafe { std::ptr::read_unaligned(at as *const u32) })
    };
    let mut at = start;
    while let Some(length) = read_u32(at) {
        let record_end = match length {
            0 => return (at + 4 - start) as usize,
            0xffff_ffff => {
                let (Some(low), Some(high)) = (read_u32(at + 4), read_u32(at + 8)) else {
                    break;
                };
                (at + 12).checked_add((u64::from(high) << 32) | u64::from(low))
            }
            n => (at + 4).checked_add(u64::from(n)),
        };
        match record_end {
            Some(end) if end <= limit => at = end,
            _ => break,
        }
    }
    // No terminator before the segment ended: keep the whole records seen.
    (at - start) as usize
}

/// Reads the GNU build id from the module's `PT_NOTE` segments.
///
/// # Safety
/// Must run inside a `dl_iterate_phdr` callback for the module.
unsafe fn find_build_id(bias: u64, headers: &[libc::Elf64_Phdr]) -> Option<Vec<u8>> {
    let align4 = |n: usize| (n + 3) & !3;
    for note in headers.iter().filter(|h| h.p_type == PT_NOTE) {
        // SAFETY: note segments are loaded, hence mapped.
        let bytes = unsafe {
            std::slice::from_raw_parts((bias + note.p_vaddr) as *const u8, note.p_memsz as usize)
        };
        let mut rest = bytes;
        while rest.len() >= 12 {
            let word = |i: usize| u32::from_le_bytes(rest[i * 4..i * 4 + 4].try_into().unwrap());
            let (name_size, desc_size, kind) = (word(0) as usize, word(1) as usize, word(2));
            let desc_start = 12 + align4(name_size);
            let next = desc_start + align4(desc_size);
            if next > rest.len() {
                break;
            }
            if kind == NT_GNU_BUILD_ID && rest[12..12 + name_size].starts_with(b"GNU") {
                return Some(rest[desc_start..desc_start + desc_size].to_vec());
            }
            rest = &rest[next..];
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_test_binary_libc_and_vdso_with_unwind_data() {
        let modules = enumerate(&[]);
        let exe = std::fs::read_link("/proc/self/exe").unwrap();
        let main = modules
            .iter()
            .find(|m| m.path.as_deref() == Some(exe.as_path()))
            .expect("the executable is listed");
        assert!(
            main.unwind.is_some(),
            "release and debug builds carry .eh_frame_hdr"
        );
        let here = finds_the_test_binary_libc_and_vdso_with_unwind_data as *const () as u64;
        assert!(main.avma_range.contains(&here));
        assert!(modules.iter().any(|m| m.name.contains("libc.so")));
        assert!(modules.iter().any(|m| m.name == "[vdso]"));
        assert!(main.build_id.as_ref().is_some_and(|id| !id.is_empty()));
    }

    #[test]
    fn known_modules_are_reused_not_copied_again() {
        let first = enumerate(&[]);
        let second = enumerate(&first);
        let a = first.iter().find(|m| m.unwind.is_some()).unwrap();
        let b = second.iter().find(|m| m.name == a.name).unwrap();
        assert!(Arc::ptr_eq(
            a.unwind.as_ref().unwrap(),
            b.unwind.as_ref().unwrap()
        ));
    }

    #[test]
    fn load_generation_is_stable_without_dlopen() {
        assert_eq!(load_generation(), load_generation());
        assert!(load_generation().adds > 0);
    }

    #[test]
    fn decodes_pcrel_sdata4() {
        // version 1, eh_frame_ptr_enc = pcrel|sdata4, fde_count_enc, table_enc, ptr = -0x100
        let hdr = [1u8, 0x1b, 0x03, 0x3b, 0x00, 0xff, 0xff, 0xff];
        assert_eq!(decode_eh_frame_ptr(&hdr, 0x2000), Some(0x2004 - 0x100));
    }
}
