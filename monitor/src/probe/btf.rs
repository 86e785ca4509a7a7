//! Where this kernel keeps a task's thread-group leader and name, from its BTF, so that the
//! kernel programs can record a process's name rather than the name of the thread that called.

use btfparse::{ErrorKind, Offset, Readable, TypeInformation};

/// The kernel's BTF, read whole (a few MiB).
struct Bytes(Vec<u8>);

impl Readable for Bytes {
    fn read(&self, offset: u64, buffer: &mut [u8]) -> btfparse::Result<()> {
        let start = offset as usize;
        let src = start
            .checked_add(buffer.len())
            .and_then(|end| self.0.get(start..end))
            .ok_or_else(|| btfparse::Error::new(ErrorKind::EOF, "read past the end of the BTF data"))?;
        buffer.copy_from_slice(src);
        Ok(())
    }
}

/// Byte offsets of `task_struct.group_leader` and `task_struct.comm`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TaskOffsets {
    pub group_leader: u32,
    pub comm: u32,
}

/// The hidden subcommand that prints the offsets (see [`task_offsets`]).
pub const SUBCOMMAND: &str = "task-offsets";

/// Reads the offsets from `/sys/kernel/btf/vmlinux`; None (and the programs fall back to the
/// calling thread's name) when the file or either member cannot be found. The parser builds
/// every kernel type (about 20 MiB of heap that the allocator keeps) to answer two questions,
/// so it runs in a short-lived process of this same binary: the agent's memory stays its own.
pub fn task_offsets() -> Option<TaskOffsets> {
    let exe = std::env::current_exe().ok()?;
    let out =
        std::process::Command::new(exe).arg(SUBCOMMAND).stdin(std::process::Stdio::null()).output().ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    let mut it = text.split_whitespace().map(|n| n.parse::<u32>().ok());
    match (it.next()??, it.next()??) {
        (group_leader, comm) if out.status.success() && group_leader > 0 && comm > 0 => {
            Some(TaskOffsets { group_leader, comm })
        }
        _ => None,
    }
}

/// What the hidden subcommand prints: "GROUP_LEADER COMM", or nothing (exit 1).
pub fn print_task_offsets() -> bool {
    match std::fs::read("/sys/kernel/btf/vmlinux").ok().and_then(parse) {
        Some(o) => {
            println!("{} {}", o.group_leader, o.comm);
            true
        }
        None => false,
    }
}

fn parse(data: Vec<u8>) -> Option<TaskOffsets> {
    let types = TypeInformation::new(&Bytes(data)).ok()?;
    let task = types.id_of("task_struct")?;
    let byte = |member: &str| match types.offset_of(task, member).ok()?.1 {
        Offset::ByteOffset(o) if o > 0 => Some(o),
        _ => None,
    };
    Some(TaskOffsets { group_leader: byte("group_leader")?, comm: byte("comm")? })
}

#[cfg(test)]
mod tests {
    #[test]
    fn this_kernels_task_offsets_are_found() {
        let data = std::fs::read("/sys/kernel/btf/vmlinux").unwrap();
        let o = super::parse(data).expect("task_struct offsets from /sys/kernel/btf/vmlinux");
        assert!(o.group_leader > 0 && o.comm > 0 && o.group_leader != o.comm, "{o:?}");
    }

    #[test]
    fn garbage_is_no_offsets() {
        assert_eq!(super::parse(vec![0; 64]), None);
    }
}
