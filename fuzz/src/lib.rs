//! Shared pieces of the fuzz targets: a per-thread record of the largest allocation (the
//! decoders promise never to allocate more than the frame that carried the input), an in-memory
//! duplex stream for the handshake, the position check for policy errors, and sample events for
//! policies that parse.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::io::{self, Read, Write};

use model::{Event, Facts};

/// Counts the largest single allocation on the current thread, then forwards to `System`.
pub struct Counting;

thread_local! {
    // `const` initialisation: reading it never allocates, so the allocator may use it.
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

fn note(size: usize) {
    // Ignored while the thread is exiting (the slot may already be gone).
    let _ = LARGEST.try_with(|l| l.set(l.get().max(size)));
}

// SAFETY: every method forwards to `System` with the caller's arguments unchanged, so the
// allocator contract is exactly `System`'s; the bookkeeping never touches the memory.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        // SAFETY: forwarded unchanged; the caller upholds `alloc`'s contract for `layout`.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        // SAFETY: forwarded unchanged; the caller upholds `alloc_zeroed`'s contract.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` was returned by `System` (through this allocator) with this `layout`.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        // SAFETY: `ptr`/`layout` came from this allocator, which is `System` underneath.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Run `f` and return its result with the largest single allocation it made on this thread.
pub fn largest_allocation<T>(f: impl FnOnce() -> T) -> (T, usize) {
    LARGEST.with(|l| l.set(0));
    let out = f();
    (out, LARGEST.with(Cell::get))
}

/// An in-memory peer: reads come from `input`, writes collect in `output`.
#[derive(Debug)]
pub struct Duplex<'a> {
    pub input: &'a [u8],
    pub output: Vec<u8>,
}

impl<'a> Duplex<'a> {
    pub fn new(input: &'a [u8]) -> Self {
        Self {
            input,
            output: Vec::new(),
        }
    }
}

impl Read for Duplex<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.input.read(buf)
    }
}

impl Write for Duplex<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.output.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A policy error must point inside the text: line 1.., column 1..=line length + 1 (counted in
/// characters), or line count + 1, column 1 for the end of the text.
pub fn check_position(text: &str, e: &policy::PolicyError) {
    let lines: Vec<&str> = text.split('\n').collect();
    let ok = e.line >= 1
        && e.column >= 1
        && match lines.get(e.line - 1) {
            Some(l) => e.column <= l.chars().count() + 1,
            None => e.line == lines.len() + 1 && e.column == 1,
        };
    assert!(
        ok,
        "error position {}:{} outside the text ({} lines): {e}",
        e.line,
        e.column,
        lines.len()
    );
}

/// Events of every kind, with and without facts, for policies that parse to decide on.
pub fn sample_events() -> Vec<(Event, Facts)> {
    const EVENTS: &[&str] = &[
        r#"{"process":{"pid":10,"uid":0,"gid":0,"executable":{"path":"/bin/sh"},"signing":{"status":"unsigned"}},
            "kind":"exec","target":{"pid":10,"uid":0,"gid":0,"executable":{"path":"/usr/local/bin/tool"},"signing":{"status":"unsigned"}}}"#,
        r#"{"process":{"pid":11,"uid":501,"gid":20,"executable":{"path":"/Applications/Kiosk.app/Contents/MacOS/Kiosk"},
            "signing":{"status":"production","team_id":"EQHXZ8M8AV","signing_id":"com.example.kiosk","flags":570425345,"is_platform_binary":false}},
            "kind":"exec","target":{"pid":11,"uid":501,"gid":20,"executable":{"path":"/bin/ls"},
            "signing":{"status":"production","signing_id":"com.apple.ls","flags":570425345,"is_platform_binary":true}}}"#,
        r#"{"process":{"pid":12,"uid":1000,"gid":1000,"executable":{"path":"/bin/cat"},"signing":{"status":"unsigned"}},
            "kind":"open","file":{"path":"/etc/gatehouse/policy.toml"},"access":{"read":true,"write":true,"append":false,"truncate":false}}"#,
        r#"{"process":{"pid":13,"uid":1000,"gid":1000,"executable":{"path":"/bin/cat"},"signing":{"status":"unsigned"}},
            "kind":"open","file":{"path":"/home/u/.ssh/id_ed25519"}}"#,
        r#"{"process":{"pid":14,"uid":0,"gid":0,"executable":{"path":"/bin/mv"},"signing":{"status":"unsigned"}},
            "kind":"rename","source":{"path":"/etc/ssh/sshd_config"},"destination":"/tmp/x"}"#,
        r#"{"process":{"pid":15,"uid":0,"gid":0,"executable":{"path":"/bin/mount"},"signing":{"status":"unsigned"}},
            "kind":"mount","mount":{"source":"/dev/sdb1","mount_point":"/media/usb","fs_type":"exfat",
            "flags":{"read_only":false,"noexec":false,"nosuid":false,"nodev":false},"disposition":"external"}}"#,
    ];
    let facts = [
        Facts::NONE,
        serde_json::from_str(&format!(r#"{{"sha256":"{}"}}"#, "ab".repeat(32)))
            .expect("sample facts are valid"),
    ];
    EVENTS
        .iter()
        .map(|json| serde_json::from_str::<Event>(json).expect("sample events are valid"))
        .flat_map(|ev| facts.iter().map(move |f| (ev.clone(), f.clone())))
        .collect()
}
