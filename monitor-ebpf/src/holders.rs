//! Who holds a socket, found in the kernel (`iter/task_file`, Linux 5.8+): each read of an
//! iterator made from the program's link walks every open file of every process (threads
//! sharing a file table are walked once) and runs [`on_task_file`] once per file. A file
//! that is a socket whose inode number the agent put in `HOLDER_WANT` gets one
//! [`HolderRecord`] (inode, process, fd) written to the seq_file. This replaces a walk of
//! `/proc/*/fd` (a `readlink` per open file of the node) with one in-kernel pass; the agent
//! reads the names, cgroups and blocked writers of the few processes found from `/proc`.

use core::ffi::c_void;

use aya_ebpf::helpers::generated::bpf_seq_write;
use monitor_common::{HolderRecord, Offsets};

use crate::kernel::{off, rd};
use crate::maps::HOLDER_WANT;

/// `S_IFMT` and `S_IFSOCK` (`include/uapi/linux/stat.h`).
const S_IFMT: u16 = 0o170000;
const S_IFSOCK: u16 = 0o140000;

/// `struct bpf_iter__task_file`: the iterator program's context.
#[repr(C)]
pub struct IterTaskFile {
    /// `struct bpf_iter_meta *` (its first field is the `struct seq_file *`).
    meta: *const u8,
    /// `struct task_struct *`; NULL once after the last file.
    task: *const u8,
    /// The file's descriptor in that task (8-byte aligned in the context).
    fd: u64,
    /// `struct file *`; NULL once after the last file.
    file: *const u8,
}

/// One open file of the walk: a record for it if it is a wanted socket.
#[inline(always)]
pub(crate) fn on_task_file(ctx: *const IterTaskFile) {
    if off!(magic) != Offsets::MAGIC {
        return;
    }
    // SAFETY: ctx is the iterator's context; the verifier checks these loads (8 bytes each).
    let (meta, task, fd, file) = unsafe {
        (
            core::ptr::read_volatile(core::ptr::addr_of!((*ctx).meta)),
            core::ptr::read_volatile(core::ptr::addr_of!((*ctx).task)),
            core::ptr::read_volatile(core::ptr::addr_of!((*ctx).fd)),
            core::ptr::read_volatile(core::ptr::addr_of!((*ctx).file)),
        )
    };
    if meta.is_null() || task.is_null() || file.is_null() {
        return;
    }
    // Checked reads: a file's inode pointer is not a BTF-typed argument.
    let inode: u64 = rd(file, off!(file_f_inode));
    if inode == 0 {
        return;
    }
    let inode = inode as *const u8;
    let mode: u16 = rd(inode, off!(inode_i_mode));
    if mode & S_IFMT != S_IFSOCK {
        return;
    }
    let ino: u64 = rd(inode, off!(inode_i_ino));
    // SAFETY: a lookup in our own map; the value is not read.
    if unsafe { HOLDER_WANT.get(ino) }.is_none() {
        return;
    }
    let r = HolderRecord {
        ino,
        tgid: rd(task, off!(task_tgid)),
        fd: fd as u32,
    };
    // `meta->seq`, the first field of `struct bpf_iter_meta`: a direct load, so the verifier
    // types it as the trusted `struct seq_file *` that bpf_seq_write takes.
    // SAFETY: meta is the context's non-NULL, BTF-typed pointer.
    let seq: u64 = unsafe { core::ptr::read_volatile(meta as *const u64) };
    // SAFETY: the record is fully initialised stack memory of the size passed.
    unsafe {
        bpf_seq_write(
            seq as *mut _,
            core::ptr::addr_of!(r) as *const c_void,
            HolderRecord::SIZE as u32,
        );
    }
}
