//! Which threads the process has: `/proc/self/task`, listed by the
//! collector whenever the number of threads has changed, and every
//! `FULL_SCAN_INTERVAL` regardless.

use std::fs::{File, OpenOptions};
use std::io;
use std::io::Seek;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};

/// `/proc/self/task`, held open for listing the process's threads again and
/// again.
///
/// The collector lists threads 40 times a second for as long as the agent
/// runs. Opening the directory each time (with `std::fs::read_dir`: open,
/// fstat, a heap-allocated reader per listing and per entry, close) cost
/// more than the listing itself; this keeps one descriptor, rewinds it and
/// reads the entries with `getdents64` into a buffer it reuses.
pub(crate) struct TaskDir {
    dir: File,
    /// The directory's link count when last listed: two plus the number of
    /// threads.
    links: Option<u64>,
    /// Raw `linux_dirent64` records, a buffer-full per `getdents64`.
    entries: Vec<u8>,
}

impl TaskDir {
    pub(crate) fn open() -> io::Result<TaskDir> {
        let dir = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY)
            .open("/proc/self/task")?;
        Ok(TaskDir {
            dir,
            links: None,
            entries: vec![0; 16 * 1024],
        })
    }

    /// The directory's link count: the kernel reports two plus the number
    /// of threads.
    fn links(&self) -> Option<u64> {
        self.dir.metadata().ok().map(|m| m.nlink())
    }

    /// True if the process has as many threads as at the last listing (not
    /// necessarily the same ones). False when in doubt.
    pub(crate) fn count_unchanged(&self) -> bool {
        self.links.is_some() && self.links() == self.links
    }

    /// The process's threads, sorted, into `out`.
    pub(crate) fn list(&mut self, out: &mut Vec<i32>) -> io::Result<()> {
        out.clear();
        // Counted before reading: a thread that starts in between shows up
        // as a changed count at the next check, never as a missed one.
        self.links = self.links();
        self.dir.rewind()?;
        let fd = self.dir.as_raw_fd();
        loop {
            // SAFETY: the kernel writes at most `entries.len()` bytes into
            // our buffer.
            let read = unsafe {
                libc::syscall(
                    libc::SYS_getdents64,
                    fd,
                    self.entries.as_mut_ptr(),
                    self.entries.len(),
                )
            };
            if read < 0 {
                return Err(io::Error::last_os_error());
            }
            if read == 0 {
                break;
            }
            parse_dirents(&self.entries[..read as usize], out);
        }
        out.sort_unstable();
        Ok(())
    }
}

/// Appends the numeric names among `linux_dirent64` records (`d_ino` u64,
/// `d_off` i64, `d_reclen` u16, `d_type` u8, then the NUL-terminated name).
fn parse_dirents(mut records: &[u8], out: &mut Vec<i32>) {
    const NAME_AT: usize = 19;
    while records.len() > NAME_AT {
        let length = usize::from(u16::from_ne_bytes([records[16], records[17]]));
        if length <= NAME_AT || length > records.len() {
            return; // never from the kernel; stop rather than misread
        }
        let name = &records[NAME_AT..length];
        let name = &name[..name.iter().position(|&b| b == 0).unwrap_or(name.len())];
        if let Some(tid) = std::str::from_utf8(name).ok().and_then(|s| s.parse().ok()) {
            out.push(tid);
        }
        records = &records[length..];
    }
}

#[cfg(all(test, not(smolder_loom)))]
mod tests {
    use super::*;
    use crate::sampler::threads::current_tid;

    #[test]
    fn task_dir_lists_the_same_threads_as_read_dir_every_time() {
        let from_std = || {
            let mut tids: Vec<i32> = std::fs::read_dir("/proc/self/task")
                .unwrap()
                .filter_map(|e| e.unwrap().file_name().to_str()?.parse().ok())
                .collect();
            tids.sort_unstable();
            tids
        };
        let mut tasks = TaskDir::open().unwrap();
        let mut listed = Vec::new();
        let (release, released) = std::sync::mpsc::channel::<()>();
        let (started, ready) = std::sync::mpsc::channel();
        let extra = std::thread::spawn(move || {
            started.send(current_tid()).unwrap();
            let _ = released.recv();
        });
        let extra_tid = ready.recv().unwrap();
        // Other tests' threads come and go: retry until two listings agree.
        let agreed = (0..100).any(|_| {
            tasks.list(&mut listed).unwrap();
            listed == from_std()
        });
        assert!(agreed, "the listings never agreed; last: {listed:?}");
        assert!(listed.contains(&current_tid()) && listed.contains(&extra_tid));
        drop(release);
        extra.join().unwrap();
        // The same descriptor, rewound, no longer shows the joined thread
        // (once the kernel has finished with it: `join` returns when the
        // thread's id is cleared, a moment before its task is unlisted).
        let gone = (0..1000).any(|_| {
            tasks.list(&mut listed).unwrap();
            std::thread::sleep(std::time::Duration::from_millis(1));
            !listed.contains(&extra_tid)
        });
        assert!(gone, "the joined thread is still listed");
    }

    #[test]
    fn task_dir_notices_a_new_thread_by_its_count() {
        let mut tasks = TaskDir::open().unwrap();
        assert!(!tasks.count_unchanged(), "nothing listed yet");
        // Other tests start and end threads too: one that ends just as ours
        // starts leaves the count as it was (which is why the collector also
        // lists every few cycles regardless). So try until the count held
        // still around the new thread; a count that never notices fails.
        for _ in 0..100 {
            let mut listed = Vec::new();
            tasks.list(&mut listed).unwrap();
            let (release, released) = std::sync::mpsc::channel::<()>();
            let (started, ready) = std::sync::mpsc::channel();
            let extra = std::thread::spawn(move || {
                started.send(()).unwrap();
                let _ = released.recv();
            });
            ready.recv().unwrap();
            let changed = !tasks.count_unchanged();
            drop(release);
            extra.join().unwrap();
            if changed {
                return;
            }
        }
        panic!("a new thread never changed the count");
    }

    #[test]
    fn dirent_parsing_takes_numeric_names_and_stops_at_a_bad_length() {
        let record = |name: &str, length: u16| {
            let mut r = vec![0u8; 19];
            r[16..18].copy_from_slice(&length.to_ne_bytes());
            r.extend_from_slice(name.as_bytes());
            r.resize(usize::from(length), 0);
            r
        };
        let mut records = [
            record(".", 24),
            record("..", 24),
            record("4242", 24),
            record("17", 32),
        ]
        .concat();
        let mut out = Vec::new();
        parse_dirents(&records, &mut out);
        assert_eq!(out, [4242, 17]);
        records.extend(record("99", 8)); // shorter than its own header
        records.extend(record("98", 24));
        out.clear();
        parse_dirents(&records, &mut out);
        assert_eq!(out, [4242, 17]);
    }
}
